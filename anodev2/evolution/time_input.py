"""``time_input``: ``f(t, z)`` with t as an extra constant input channel of every target conv
(Chen et al. 2018, the ``ConcatConv2d`` of their ODE-Net).

A target conv ``y = conv(x; W)`` becomes ``conv([x, t·1]; [W, V]) = conv(x; W) + t·conv(1; V)``
(``1``: one all-ones channel, padded like ``x``, so border outputs see fewer ones, exactly as a
concatenated channel would). ``V [O, 1, kH, kW]`` per target starts at 0, so a fresh block is
exactly ANODE. The extra term is added by a forward hook on each target conv that reads the
time the block is evaluating (:meth:`TimeInputEvolution.at_time`); calling ``f`` outside an ODE
block's solve raises. θ itself does not change; :meth:`weights_at_time` reports the effective
kernel seen by ``[x, 1]`` at time t, ``[W, t·V]`` (shape ``[O, I + 1, kH, kW]``), for logging.
Off: t is frozen at t0 (``f(t0, z)`` at every time).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import WeightEvolution, check_conv_shapes, safe_key

__all__ = ["TimeInputEvolution"]


class _TimeHook:
    """Forward hook of one target conv: ``output + t·conv(1; V)``. An object (not a closure) so
    that ``copy.deepcopy`` of a model points the copy's hooks at the copy's evolution."""

    def __init__(self, evo: "TimeInputEvolution", name: str):
        self.evo, self.name, self.key = evo, name, safe_key(name)

    def __call__(self, conv: nn.Conv2d, inputs, output):
        t = self.evo._t
        if t is None:
            raise RuntimeError(f"f with a time_input evolution was called outside an ODE block's solve "
                               f"(no time set for {self.name!r})")
        x = inputs[0]
        v = self.evo.weights[self.key].to(dtype=output.dtype)
        ones = torch.ones((1, 1, *x.shape[-2:]), dtype=output.dtype, device=x.device)
        if conv.padding_mode != "zeros":  # a constant channel stays constant under these paddings
            ones = F.pad(ones, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            bias_map = F.conv2d(ones, v, None, conv.stride, 0, conv.dilation)
        else:
            bias_map = F.conv2d(ones, v, None, conv.stride, conv.padding, conv.dilation)
        return output + t.to(dtype=output.dtype, device=output.device) * bias_map


class TimeInputEvolution(WeightEvolution):
    """t as an extra input channel of every target conv (module docstring).

    Parameters: ``weights[<target>]`` of shape ``[O, 1, kH, kW]`` (the t-channel kernels).
    ``attach(f)`` must be called once with the ``f`` whose convs are the targets (the ODEBlock
    does it).
    """

    kind = "time_input"
    style = "time_input"
    off_meaning = "t is frozen at t0: f(t0, z) at every time"

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], t0: float = 0.0, t1: float = 1.0):
        super().__init__(target_shapes)
        check_conv_shapes(self.target_shapes)
        self.t0, self.t1 = float(t0), float(t1)
        self.weights = nn.ParameterDict()
        for name, shape in self.target_shapes.items():
            self.weights[safe_key(name)] = nn.Parameter(torch.zeros(shape[0], 1, shape[2], shape[3]))
        self._t: Optional[torch.Tensor] = None
        self._handles: list = []

    def check_span(self, t0: float, t1: float, steps: int) -> None:
        if (float(t0), float(t1)) != (self.t0, self.t1):
            raise ValueError(f"evolution kind 'time_input' was built for [t0, t1] = [{self.t0}, {self.t1}] but the "
                             f"block integrates [{t0}, {t1}]")

    def attach(self, f: nn.Module) -> None:
        """Hook every target conv of ``f`` (targets name ``<module path>.weight`` of an ``nn.Conv2d``
        with ``groups == 1``)."""
        if self._handles:
            raise ValueError("this time_input evolution is already attached to an f; build one per block")
        modules = dict(f.named_modules())
        for name in self.targets:
            path, _, leaf = name.rpartition(".")
            conv = modules.get(path)
            if leaf != "weight" or not isinstance(conv, nn.Conv2d):
                raise ValueError(f"time_input target {name!r} is not the weight of an nn.Conv2d of f")
            if conv.groups != 1:
                raise ValueError(f"time_input target {name!r}: grouped convs (groups={conv.groups}) are not supported")
            self._handles.append(conv.register_forward_hook(_TimeHook(self, name)))

    @contextlib.contextmanager
    def at_time(self, t: torch.Tensor) -> Iterator[None]:
        """Within the context the hooked convs see time ``t`` (``t0`` while switched off)."""
        before = self._t
        self._t = torch.as_tensor(t) if self.enabled else torch.as_tensor(self.t0, dtype=torch.as_tensor(t).dtype)
        try:
            yield
        finally:
            self._t = before

    def weights_at_time(self, t, base: Sequence[torch.Tensor], piece=None) -> tuple[torch.Tensor, ...]:
        """The effective kernels ``[W, t·V]`` seen by ``[x, 1]`` at time t (``t0`` when off)."""
        tt = torch.as_tensor(t if self.enabled else self.t0, dtype=torch.float64)
        return tuple(torch.cat([w, tt.to(w.dtype) * self.weights[safe_key(n)].to(w.dtype)], dim=1)
                     for n, w in zip(self.targets, base))

    def coefficients(self) -> dict[str, torch.Tensor]:
        """``{"<target>/time_kernel": V [O, 1, kH, kW]}`` (detached)."""
        return {f"{n}/time_kernel": self.weights[safe_key(n)].detach().clone() for n in self.targets}

    def set_coefficients(self, mapping: Mapping[str, object]) -> None:
        """Set the t-channel kernels exactly: ``{"<target>/time_kernel": tensor [O, 1, kH, kW] or number}``."""
        from .schedules import set_own
        set_own(self, mapping, {f"{n}/time_kernel": self.weights[safe_key(n)] for n in self.targets})

    def extra_repr(self) -> str:
        return f"kind='time_input', targets={self.targets}, t=[{self.t0}, {self.t1}]"
