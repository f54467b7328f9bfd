"""Variant resolution and the shared building blocks of every network.

A network is written once; :class:`BlockSpec` decides, per variant, what a
*non-downsampling* residual function ``f`` becomes:

* ``baseline``  -> :class:`Residual`: ``z + f(z)`` (one explicit Euler step of size 1);
* ``neuralode`` -> ``anodev2.ODEBlock(f, grad="backsolve")`` (Chen et al. 2018 adjoint);
* ``anode``     -> ``anodev2.ODEBlock(f, grad="checkpoint")`` (Gholami et al. 2019);
* ``anodev2``   -> ``anodev2.ODEBlock(f, grad="checkpoint", evolution="rda")``
  (Zhang et al. 2019: the conv weights of ``f`` evolve by ``dθ/dt = q(θ, p)``). Unless
  the evolution names its ``targets``, they are the conv weights with a spatial kernel
  (:func:`spatial_conv_weights`; every conv of the ResNets and AlexNet, the 3x1 / 1x3
  convs of SqueezeNext).

All ODE variants default to ``steps=3, method="euler"`` on ``[0, 1]``: with Euler, ``f`` sees
``θ`` only at the step starts, so three steps is the cheapest scheme in which an ANODEV2 ``f``
sees ``θ(t)`` at three distinct times (0, 1/3, 2/3); ``steps=2`` (the ANODE repository's
``--method Euler --Nt 2``) would show it two. All ODE variants share the default so that ANODE
and ANODEV2 are compared at equal Nt (docs/EVOLUTION.md, "Time resolution"). Because ``Residual`` and
``ODEBlock`` both hold ``f`` as ``.f``, state dicts of different variants share keys
(only the evolution coefficients are extra), and ``baseline`` equals any ODE variant
run with ``steps=1, method="euler"`` and static weights, to round-off.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..adjoint import get_grad_mode
from ..block import ODEBlock, resolve_evolution
from ..evolution import EVOLUTIONS
from ..time_norm import TimeBatchNorm2d

__all__ = [
    "VARIANTS",
    "ODE_OPTIONS",
    "COMMON_OPTIONS",
    "NORMS",
    "VARIANT_DEFAULTS",
    "BlockSpec",
    "Residual",
    "resolve",
    "spatial_conv_weights",
]

VARIANTS: tuple[str, ...] = ("baseline", "neuralode", "anode", "anodev2")
#: keyword options of every ODE block (override the variant's defaults). ``grad``: a name, an
#: object (``anodev2.Checkpoint(...)``) or a mapping ``{"mode": ..., **options}`` (mode defaults to
#: the variant's); ``evolution``: a kind name or a mapping ``{"kind": ..., "targets": ..., **options}``
#: (kind defaults to the variant's). Both are resolved here once and handed to ``ODEBlock`` unchanged.
ODE_OPTIONS: tuple[str, ...] = ("steps", "method", "grad", "evolution")
#: options of the API before issue 16 -> their spelling now (a clear error, never silently ignored).
MOVED_OPTIONS: dict[str, str] = {
    "checkpoints": "grad={{'checkpoints': {v!r}}} (or grad=anodev2.Checkpoint(checkpoints={v!r}))",
    "keep_forward": "grad={{'keep_forward': {v!r}}} (or grad=anodev2.Checkpoint(keep_forward={v!r}))",
    "evolution_targets": "evolution={{'targets': {v!r}}} (with the variant's kind) or {{'kind': NAME, 'targets': {v!r}}}",
}
#: keyword options understood by every network.
COMMON_OPTIONS: tuple[str, ...] = ("width", "norm")
#: "batch_t": BatchNorm with running statistics per evaluation time inside ODE blocks
#: (:class:`anodev2.time_norm.TimeBatchNorm2d`; exactly BatchNorm2d everywhere else).
NORMS: tuple[str, ...] = ("batch", "group", "batch_t")

_ODE_BASE: dict[str, Any] = {"steps": 3, "method": "euler", "evolution": None}
VARIANT_DEFAULTS: dict[str, Optional[dict[str, Any]]] = {
    "baseline": None,
    "neuralode": {**_ODE_BASE, "grad": "backsolve"},
    "anode": {**_ODE_BASE, "grad": "checkpoint"},
    "anodev2": {**_ODE_BASE, "grad": "checkpoint", "evolution": "rda"},
}


class Residual(nn.Module):
    """Discrete residual block ``z -> z + f(z)`` (the ``baseline`` variant).

    Shapes: ``z`` is ``[B, C, H, W]`` and ``f`` must preserve it.
    """

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.f(z)


def _group_count(channels: int) -> int:
    """GroupNorm groups: gcd(channels, 8) (8 groups at every real width; fewer for tiny test widths)."""
    return math.gcd(channels, 8)


@dataclass(frozen=True)
class BlockSpec:
    """What the networks need to know about the variant.

    Attributes:
        variant: one of ``VARIANTS``.
        ode: keyword arguments for ``anodev2.ODEBlock`` (None for ``baseline``); ``grad`` is
            the resolved gradient-mode object, ``evolution`` None or the resolved mapping
            ``{"kind": ..., **options}``.
        width: channel multiplier (> 0).
        norm: "batch" (default), "group" or "batch_t" (see ``anodev2.models`` docstring, "Normalisation").
        spatial_targets: evolve only :func:`spatial_conv_weights` of each f (the default
            whenever an evolution is set without ``targets``).
    """

    variant: str
    ode: Optional[Mapping[str, Any]] = None
    width: float = 1.0
    norm: str = "batch"
    spatial_targets: bool = False

    def channels(self, c: int, multiple: int = 1) -> int:
        """``c * width`` rounded to a positive multiple of ``multiple``."""
        return max(multiple, multiple * int(round(c * self.width / multiple)))

    def norm2d(self, channels: int) -> nn.Module:
        """A 2-D normalisation layer over ``channels`` (``[B, C, H, W]`` in and out)."""
        if self.norm == "batch":
            return nn.BatchNorm2d(channels)
        if self.norm == "batch_t":
            # every layer is a TimeBatchNorm2d; only those inside an ODE block's f get time slots
            # (the block attaches them), the rest (stem, shortcuts, baseline) are plain BatchNorm2d
            return TimeBatchNorm2d(channels)
        return nn.GroupNorm(_group_count(channels), channels)

    def residual(self, f: nn.Module) -> nn.Module:
        """Wrap a shape-preserving residual function ``f``: a discrete block or an ODE block."""
        if self.ode is None:
            return Residual(f)
        ode = dict(self.ode)
        if self.spatial_targets:
            # the kind's default targets (registry): spatial conv weights, or every conv (time_input)
            spatial = EVOLUTIONS[ode["evolution"]["kind"]].targets == "spatial"
            ode["evolution"] = {**ode["evolution"], "targets": (spatial_conv_weights(f) if spatial else None) or None}
        return ODEBlock(f, **ode)


def spatial_conv_weights(f: nn.Module) -> list[str]:
    """Names (relative to ``f``) of the weights of ``nn.Conv2d`` layers with a spatial kernel
    (``kH * kW > 1``): the default evolution targets. On a 1x1 kernel the diffusion and
    advection terms of q vanish identically (only reaction acts), so their coefficients would
    be dead parameters."""
    return [
        f"{name}.weight" if name else "weight"
        for name, m in f.named_modules()
        if isinstance(m, nn.Conv2d) and m.weight.shape[-1] * m.weight.shape[-2] > 1
    ]


def _check_width(width: Any) -> float:
    if isinstance(width, bool) or not isinstance(width, numbers.Real):
        raise TypeError(f"width must be a positive real number (channel multiplier), got {width!r}")
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive finite channel multiplier, got {width!r}")
    return float(width)


def resolve(variant: str, options: Mapping[str, Any]) -> BlockSpec:
    """Turn ``(variant, **options)`` into a :class:`BlockSpec`, validating every option.

    Args:
        variant: one of ``VARIANTS``.
        options: the keyword options given to ``build``: ``ODE_OPTIONS`` and ``COMMON_OPTIONS``.

    Raises:
        ValueError: unknown variant or option (an option moved by issue 16 names its new
            spelling); an ODE option for ``baseline``; a ``grad`` or ``evolution`` the engine
            refuses (unknown mode / kind / option, or an option value out of range); a
            ``WeightEvolution`` instance (``build`` makes one evolution per block); a ``norm``
            not in ``NORMS``.
    """
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {VARIANTS}")
    moved = [k for k in options if k in MOVED_OPTIONS]
    if moved:
        raise ValueError("; ".join(f"option {k}={options[k]!r} has moved: write " + MOVED_OPTIONS[k].format(v=options[k])
                                   for k in moved))
    allowed = ODE_OPTIONS + COMMON_OPTIONS
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: {sorted(allowed)}")

    width = _check_width(options.get("width", 1.0))
    norm = options.get("norm", "batch")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")

    given = {k: options[k] for k in ODE_OPTIONS if k in options}
    defaults = VARIANT_DEFAULTS[variant]
    if defaults is None:
        if given:
            raise ValueError(
                f"option(s) {sorted(given)} make no sense for variant 'baseline' (discrete residual "
                f"blocks, no ODE); use one of {VARIANTS[1:]} or drop them"
            )
        return BlockSpec(variant, None, width, norm)

    ode = {**defaults, **given}
    ode["grad"] = resolve_grad(variant, ode["grad"])
    ode["evolution"] = resolve_variant_evolution(variant, ode["evolution"])
    spatial = ode["evolution"] is not None and ode["evolution"].get("targets") is None
    return BlockSpec(variant, ode, width, norm, spatial)


def _no_ode(variant: str, where: str) -> ValueError:
    return ValueError(f"{where} makes no sense for variant {variant!r} (discrete residual blocks, no ODE); "
                      f"use one of {VARIANTS[1:]} or drop it")


def resolve_grad(variant: str, grad: Any, where: str = "grad"):
    """The gradient-mode object of ``grad`` (name, object or mapping; a mapping without ``mode``
    adjusts the variant's default mode) for ``variant``; ValueError / TypeError naming ``where``."""
    defaults = VARIANT_DEFAULTS[variant]
    if defaults is None:
        raise _no_ode(variant, where)
    return get_grad_mode(grad, default_mode=defaults["grad"], where=where)


def resolve_variant_evolution(variant: str, evolution: Any, where: str = "evolution") -> Optional[dict]:
    """None or the validated mapping ``{"kind": ..., **entries}`` of ``evolution`` for ``variant``
    (a mapping without ``kind`` adjusts the variant's default kind); ValueError / TypeError naming ``where``."""
    defaults = VARIANT_DEFAULTS[variant]
    if defaults is None:
        if evolution is None:
            return None
        raise _no_ode(variant, where)
    if evolution is not None and not isinstance(evolution, (str, Mapping)):
        raise ValueError(f"{where} must be None, a kind name or a mapping {{'kind': ..., 'targets': ..., OPTION: VALUE}} "
                         f"(build makes one evolution per ODE block), got {type(evolution).__name__}")
    return resolve_evolution(evolution, default_kind=defaults["evolution"], where=where)
