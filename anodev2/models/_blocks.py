"""Variant resolution and the shared building blocks of every network.

A network is written once; :class:`BlockSpec` decides, per variant, what a
*non-downsampling* residual function ``f`` becomes:

* ``baseline``  -> :class:`Residual`: ``z + f(z)`` (one explicit Euler step of size 1);
* ``neuralode`` -> ``anodev2.ODEBlock(f, grad="backsolve")`` (Chen et al. 2018 adjoint);
* ``anode``     -> ``anodev2.ODEBlock(f, grad="checkpoint")`` (Gholami et al. 2019);
* ``anodev2``   -> ``anodev2.ODEBlock(f, grad="checkpoint", evolution="rda")``
  (Zhang et al. 2019: the conv weights of ``f`` evolve by ``dθ/dt = q(θ, p)``). Unless
  ``evolution_targets`` is given, the targets are the conv weights with a spatial kernel
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

from ..adjoint import with_checkpoint_options
from ..block import ODEBlock
from ..evolution import EVOLUTION_KINDS

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
#: keyword options of every ODE block (override the variant's defaults). ``grad`` is a name or an
#: object (``anodev2.Checkpoint(...)``); the flat ``checkpoints`` / ``keep_forward`` (for flat
#: configurations) are folded into it by ``anodev2.adjoint.with_checkpoint_options``.
ODE_OPTIONS: tuple[str, ...] = ("steps", "method", "grad", "checkpoints", "keep_forward", "evolution",
                                "evolution_targets")
#: keyword options understood by every network.
COMMON_OPTIONS: tuple[str, ...] = ("width", "norm")
NORMS: tuple[str, ...] = ("batch", "group")

_ODE_BASE: dict[str, Any] = {
    "steps": 3, "method": "euler", "checkpoints": None, "keep_forward": False, "evolution": None,
    "evolution_targets": None,
}
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
            the resolved gradient-mode object.
        width: channel multiplier (> 0).
        norm: "batch" (default) or "group" (see ``anodev2.models`` docstring, "Normalisation").
        spatial_targets: evolve only :func:`spatial_conv_weights` of each f (the default
            whenever an evolution is set and ``evolution_targets`` is not given).
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
        return nn.GroupNorm(_group_count(channels), channels)

    def residual(self, f: nn.Module) -> nn.Module:
        """Wrap a shape-preserving residual function ``f``: a discrete block or an ODE block."""
        if self.ode is None:
            return Residual(f)
        ode = dict(self.ode)
        if self.spatial_targets:
            ode["evolution_targets"] = spatial_conv_weights(f) or None
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
        ValueError: unknown variant or option; an ODE option for ``baseline``;
            ``evolution_targets`` without an evolution; an ``evolution`` that is not a kind
            name; ``checkpoints`` / ``keep_forward`` with a grad other than "checkpoint"; a ``norm``
            not in ``NORMS``.
    """
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {VARIANTS}")
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
    if ode["evolution"] is not None and ode["evolution"] not in EVOLUTION_KINDS:
        raise ValueError(
            f"evolution must be None or a kind name, one of {EVOLUTION_KINDS} (build creates one "
            f"evolution per ODE block), got {ode['evolution']!r}"
        )
    if ode["evolution_targets"] is not None and ode["evolution"] is None:
        raise ValueError(
            f"evolution_targets given but evolution is None for variant {variant!r}: choose an "
            "evolution ('static', 'diffusion', 'advection', 'reaction', 'rda') or drop evolution_targets"
        )
    ode["grad"] = with_checkpoint_options(ode["grad"], checkpoints=ode.pop("checkpoints"),
                                          keep_forward=ode.pop("keep_forward"))
    spatial = "evolution_targets" not in given and ode["evolution"] is not None
    return BlockSpec(variant, ode, width, norm, spatial)
