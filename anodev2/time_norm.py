"""Per-time BatchNorm statistics for the vector field of an ODE block (``norm="batch_t"``).

Inside an ODE block f is evaluated at several times t (every RK stage of every step). A plain
``BatchNorm2d`` in f keeps one set of running statistics for all of them; with time-varying
weights θ(t) the activations' statistics change with t, so in eval mode the shared running
averages fit no single t. :class:`TimeBatchNorm2d` normalises exactly like ``BatchNorm2d`` in
training mode (the batch's statistics, same kernel, bitwise equal outputs and gradients) but keeps
one set of running statistics per *slot*: the slots are the distinct times of the block's fixed
time grid (every stage time ``t_n + c_i h`` and every step time ``t_n``), set by the ODE block at
construction (:meth:`TimeBatchNorm2d.set_times`). Before each evaluation of f the block sets
``current_time``; the layer updates (training) or uses (eval) the slot of that time.

Outside an ODE block (``current_time`` is None: the discrete baseline, stems, shortcuts, a layer
whose block never set times) the layer is exactly ``BatchNorm2d`` with its own
``running_mean`` / ``running_var`` buffers. A time that is not on the grid (e.g. a reversed stage
of the backsolve adjoint with a non-symmetric tableau) normalises with batch statistics without
updating any slot in training and uses the nearest slot in eval. While the running-stat buffers
are detached by :func:`anodev2.adjoint.frozen_norm_statistics` (recomputation in backward), no
slot is updated.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TimeBatchNorm2d", "attach_time_norms", "time_grid"]


def time_grid(t0: float, t1: float, steps: int, c: Sequence[float]) -> list[float]:
    """The sorted distinct times of a fixed-step solve: step times and stage times ``t_n + c_i h``."""
    h = (t1 - t0) / steps
    times = [t0 + n * h for n in range(steps + 1)] + [t0 + n * h + float(ci) * h for n in range(steps) for ci in c]
    tol = 1e-9 * max(1.0, abs(t1 - t0))
    out: list[float] = []
    for t in sorted(times):
        if not out or t - out[-1] > tol:
            out.append(t)
    return out


class TimeBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` with running statistics per evaluation time of an ODE block.

    Buffers: ``running_mean`` / ``running_var`` / ``num_batches_tracked`` (used outside an ODE
    block, as BatchNorm2d) and, after :meth:`set_times` with K times, ``running_mean_t{k}``,
    ``running_var_t{k}``, ``num_batches_tracked_t{k}`` for k < K (state-dict keys). Attributes:
    ``times`` (the slot times), ``current_time`` (set by the block around each f evaluation).
    """

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.times: tuple[float, ...] = ()
        self.current_time: Optional[float] = None

    def set_times(self, times: Sequence[float]) -> None:
        """Create one slot per time (fresh statistics); called by the ODE block that owns f."""
        if not self.track_running_stats:
            self.times = tuple(float(t) for t in times)
            return
        for b in self.stat_buffer_names()[3:]:
            self._buffers.pop(b, None)
        self.times = tuple(float(t) for t in times)
        for k in range(len(self.times)):
            self.register_buffer(f"running_mean_t{k}", self.running_mean.new_zeros(self.num_features))
            self.register_buffer(f"running_var_t{k}", self.running_var.new_ones(self.num_features))
            self.register_buffer(f"num_batches_tracked_t{k}", torch.tensor(0, dtype=torch.long))

    def stat_buffer_names(self) -> tuple[str, ...]:
        """Every running-statistics buffer (frozen by ``frozen_norm_statistics``)."""
        names = ["running_mean", "running_var", "num_batches_tracked"]
        if self.track_running_stats:
            for k in range(len(self.times)):
                names += [f"running_mean_t{k}", f"running_var_t{k}", f"num_batches_tracked_t{k}"]
        return tuple(names)

    def slot(self, t: float) -> tuple[int, bool]:
        """(index of the nearest slot time, whether t is on the grid)."""
        k = min(range(len(self.times)), key=lambda i: abs(self.times[i] - t))
        span = max(1.0, abs(self.times[-1] - self.times[0]))
        return k, abs(self.times[k] - t) <= 1e-6 * span

    def forward(self, input: Tensor) -> Tensor:
        if self.current_time is None or not self.times or not self.track_running_stats:
            return super().forward(input)
        self._check_input_dim(input)
        k, exact = self.slot(self.current_time)
        mean = self._buffers.get(f"running_mean_t{k}")
        var = self._buffers.get(f"running_var_t{k}")
        count = self._buffers.get(f"num_batches_tracked_t{k}")
        if self.training:
            # as _BatchNorm.forward: batch statistics; update this slot only (not when frozen or off-grid)
            update = exact and mean is not None
            momentum = 0.0 if self.momentum is None else self.momentum
            if update and count is not None:
                count.add_(1)
                momentum = 1.0 / float(count) if self.momentum is None else self.momentum
            return F.batch_norm(input, mean if update else None, var if update else None, self.weight, self.bias,
                                True, momentum, self.eps)
        return F.batch_norm(input, mean, var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", slots={len(self.times)}"


def attach_time_norms(f: nn.Module, times: Sequence[float]) -> tuple[TimeBatchNorm2d, ...]:
    """Give every :class:`TimeBatchNorm2d` in ``f`` one slot per time; returns them (maybe empty)."""
    layers = tuple(m for m in f.modules() if isinstance(m, TimeBatchNorm2d))
    for m in layers:
        m.set_times(times)
    return layers
