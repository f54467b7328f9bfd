"""Make re-evaluation of the vector field during backward side-effect free.

Recomputation must give the forward pass's values exactly and must not change state:
BatchNorm running statistics (per-time slots of ``TimeBatchNorm2d`` included) are not updated a second time (:func:`frozen_norm_statistics`),
dropout masks are re-drawn from the RNG state the forward step saw (:class:`RngLog`), and
the forward pass's autocast (AMP) state is re-entered (:func:`autocast_replay`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def frozen_norm_statistics(module: Optional[nn.Module]) -> Iterator[None]:
    """Within the context, BatchNorm layers of ``module`` in training mode normalise with
    batch statistics exactly as before but do not update their running statistics.

    The running-stat buffers are detached from the layers for the duration (``None`` makes
    ``_BatchNorm.forward`` skip the update) and restored afterwards, even on error.
    """
    saved = []
    if module is not None:
        for m in module.modules():
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
                # per-time layers (anodev2.time_norm.TimeBatchNorm2d) name their slot buffers too
                names = m.stat_buffer_names() if hasattr(m, "stat_buffer_names") else _STAT_BUFFERS
                saved.append((m, {b: m._buffers.get(b) for b in names}))
                for b in names:
                    m._buffers[b] = None
    try:
        yield
    finally:
        for m, values in saved:
            for b, v in values.items():
                m._buffers[b] = v


class RngLog:
    """The RNG states (CPU and the CUDA devices in use) before each forward step, so a
    recomputed step draws the same random numbers (dropout masks) as the original."""

    def __init__(self, devices: list[int]) -> None:
        self.devices = devices
        self.states: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    @staticmethod
    def for_tensors(tensors) -> "RngLog":
        devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
        return RngLog(devices)

    def record(self, n: int) -> None:
        cuda = [torch.cuda.get_rng_state(d) for d in self.devices]
        self.states[n] = (torch.get_rng_state(), cuda)

    def drew(self) -> bool:
        """True if random numbers were drawn since the first record (call after the solve):
        the generators' states differ from those before step 0. A solve whose ``func`` draws
        nothing needs no replay, so its backward neither restores nor forks the RNG."""
        if 0 not in self.states:
            return False
        cpu, cuda = self.states[0]
        return not torch.equal(cpu, torch.get_rng_state()) or any(
            not torch.equal(s, torch.cuda.get_rng_state(d)) for d, s in zip(self.devices, cuda))

    def restore(self, n: int) -> None:
        cpu, cuda = self.states[n]
        torch.set_rng_state(cpu)
        for d, s in zip(self.devices, cuda):
            torch.cuda.set_rng_state(s, d)

    @contextlib.contextmanager
    def forked(self) -> Iterator[None]:
        """Leave the global RNG streams as they were after the context."""
        with torch.random.fork_rng(devices=self.devices):
            yield


def autocast_replay(device_type: str):
    """Capture the autocast state of the forward pass; the returned callable gives a context
    that re-enters it during backward recomputation (so AMP forward and recompute agree).
    When autocast is off in the forward pass and off where backward runs, there is nothing to
    re-enter and the context is a no-op."""
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)
    cache = torch.is_autocast_cache_enabled()

    def context():
        if not enabled and not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled, cache_enabled=cache)

    return context
