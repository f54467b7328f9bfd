"""The evolution registry: one entry per kind -> factory, options (default, type, bounds,
description), style, default targets and what "evolution off" means.

Adding a kind is one entry in :data:`EVOLUTIONS`; ``build_evolution``, ``ODEBlock``,
``anodev2.models.build``, the training config's allowed values / ``--help`` and every error
message read this table.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from .base import StaticEvolution, WeightEvolution
from .generator import GENERATOR_DEFAULTS, GeneratorEvolution
from .rda import RDA_DEFAULTS, RDA_KINDS, RDAEvolution, check_options as _check_rda
from .schedules import GalerkinSchedule, LinearSchedule, UntiedSchedule
from .time_input import TimeInputEvolution

__all__ = ["Option", "Span", "EvolutionSpec", "EVOLUTIONS", "EVOLUTION_KINDS", "evolution_options",
           "check_evolution_options", "build_evolution", "describe_kinds"]


@dataclass(frozen=True)
class Option:
    """One option of an evolution kind.

    Attributes:
        default: the value used when the option is not given.
        description: one line for ``--help`` and docs.
        type: ``float``, ``int`` or ``str``.
        low, high: closed bounds for numbers (None = unbounded on that side).
        choices: the allowed values of a ``str`` option.
    """

    default: Any
    description: str
    type: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[tuple] = None

    @property
    def bounds(self) -> tuple[Optional[float], Optional[float]]:
        return (self.low, self.high)

    def check(self, kind: str, name: str, value: Any) -> Any:
        """``value`` converted to the option's type; TypeError / ValueError naming kind, option, value."""
        where = f"option {name!r} of evolution kind {kind!r}"
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ValueError(f"{where} must be one of {' | '.join(self.choices or ())}, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{where} must be an int, got {value!r}")
            value = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TypeError(f"{where} must be a finite real number, got {value!r}")
            value = float(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError(f"{where} must be in [{self.low}, {self.high}], got {value!r}")
        return value


@dataclass(frozen=True)
class Span:
    """The block an evolution serves: interval ``[t0, t1]`` and solver ``steps`` (None: unknown)."""

    t0: float = 0.0
    t1: float = 1.0
    steps: Optional[int] = None


@dataclass(frozen=True)
class EvolutionSpec:
    """A registry entry.

    Attributes:
        kind: the name.
        factory: ``factory(target_shapes, span, **options) -> WeightEvolution`` (options filled in
            with defaults and checked one by one already).
        summary: one line (``--help``, docs).
        style: "static" | "ode" | "explicit" | "time_input" (see ``WeightEvolution.style``).
        options: ``{name: Option}``.
        targets: default targets inside ``anodev2.models``: "spatial" (conv weights with
            kH·kW > 1) or "convs" (every conv weight).
        off: what ``evolution_off()`` means for the kind (None: the kind has no switch).
        validate: cross-option check on the filled options (raises ValueError), or None.
    """

    kind: str
    factory: Callable[..., WeightEvolution]
    summary: str
    style: str
    options: Mapping[str, Option] = field(default_factory=dict)
    targets: str = "spatial"
    off: Optional[str] = None
    validate: Optional[Callable[[dict], None]] = None


_INIT = Option(0.0, "scale of random initial coefficients; 0 = all zero (starts exactly as ANODE)", float, 0.0, None)


def _rda_entry(kind: str, summary: str) -> EvolutionSpec:
    descriptions = {"d_max": "diffusion bound: 0 <= D <= d_max",
                    "a_max": "bound of each directional advection speed: 0 <= a <= a_max",
                    "r_max": "reaction bound |r| <= r_max (per output channel and kernel entry)"}
    opts = {k: (_INIT if k == "init_scale" else Option(v, descriptions[k], float, 0.0, 1.0))
            for k, v in RDA_DEFAULTS[kind].items()}
    return EvolutionSpec(
        kind, lambda shapes, span, **o: RDAEvolution(kind, shapes, **o), summary, "ode", opts,
        off=RDAEvolution.off_meaning, validate=lambda o: _check_rda(kind, o))


def _positive(options: dict, names: Sequence[str]) -> None:
    for name in names:
        if options[name] <= 0:
            raise ValueError(f"{name} must be > 0, got {options[name]}")


def _untied(shapes, span: Span, pieces: int) -> UntiedSchedule:
    if pieces == 0:
        if span.steps is None:
            raise ValueError("evolution kind 'untied' needs pieces >= 1 or the block's steps (pieces=0: one per step)")
        pieces = span.steps
    return UntiedSchedule(shapes, span.t0, span.t1, pieces)


#: kind -> registry entry. Adding a kind is one entry here.
EVOLUTIONS: dict[str, EvolutionSpec] = {
    "static": EvolutionSpec("static", lambda shapes, span: StaticEvolution(shapes),
                            "θ constant (q = 0): the ANODE / Neural ODE block", "static"),
    "diffusion": _rda_entry("diffusion", "dθ/dt = D·Laplacian(θ) per output channel (zero-flux walls)"),
    "advection": _rda_entry("advection", "upwind transport of each kernel slice, outflow walls, 4 speeds per channel"),
    "reaction": _rda_entry("reaction", "dθ/dt = r ⊙ tanh(θ), r per output channel and kernel entry"),
    "rda": _rda_entry("rda", "advection (4 speeds; their common part is diffusion) + per-entry reaction "
                             "(ANODEV2's RDA weight ODE; no separate D, which would not be identifiable)"),
    "generator": EvolutionSpec(
        "generator", lambda shapes, span, **o: GeneratorEvolution(shapes, **o),
        "dθ/dt = M_o θ per output channel, M_o = skew − PSD (eigenvalues Re <= 0): learned linear ODE", "ode",
        {"skew_max": Option(GENERATOR_DEFAULTS["skew_max"], "bound of each skew-symmetric coefficient", float, 0.0),
         "coupling_max": Option(GENERATOR_DEFAULTS["coupling_max"], "bound of each pairwise damping (Laplacian) "
                                "coefficient", float, 0.0),
         "damping_max": Option(GENERATOR_DEFAULTS["damping_max"], "bound of each diagonal damping coefficient",
                               float, 0.0),
         "init_scale": _INIT},
        off=GeneratorEvolution.off_meaning,
        validate=lambda o: _positive(o, ("skew_max", "coupling_max", "damping_max"))),
    "linear": EvolutionSpec(
        "linear", lambda shapes, span: LinearSchedule(shapes, span.t0, span.t1),
        "θ(t) = θ0 + (t − t0)·θ1, θ1 starts at 0 (explicit in t)", "explicit", off=LinearSchedule.off_meaning),
    "galerkin": EvolutionSpec(
        "galerkin", lambda shapes, span, basis_size, basis: GalerkinSchedule(shapes, span.t0, span.t1, basis_size,
                                                                             basis),
        "θ(t) = θ0 + Σ_{k>=1} φ_k(t) α_k on [t0, t1] (Legendre or Fourier; α_k start at 0)", "explicit",
        {"basis_size": Option(3, "K, number of basis functions including the constant", int, 2, None),
         "basis": Option("legendre", "basis functions", str, choices=("legendre", "fourier"))},
        off=GalerkinSchedule.off_meaning),
    "untied": EvolutionSpec(
        "untied", lambda shapes, span, pieces: _untied(shapes, span, pieces),
        "piecewise-constant weights, one set per piece (default: per solver step, the discrete-ResNet limit)",
        "explicit", {"pieces": Option(0, "number of equal sub-intervals; 0 = one per solver step", int, 0, None)},
        off=UntiedSchedule.off_meaning),
    "time_input": EvolutionSpec(
        "time_input", lambda shapes, span: TimeInputEvolution(shapes, span.t0, span.t1),
        "f(t, z): t as an extra zero-initialised input channel of every conv of f (Chen et al. 2018)",
        "time_input", targets="convs", off=TimeInputEvolution.off_meaning),
}

#: the registered kind names, in registry order.
EVOLUTION_KINDS: tuple[str, ...] = tuple(EVOLUTIONS)


def _spec(kind: Any) -> EvolutionSpec:
    if not isinstance(kind, str):
        raise TypeError(f"evolution kind must be a str, one of {' | '.join(EVOLUTIONS)}; got {type(kind).__name__}")
    if kind not in EVOLUTIONS:
        raise ValueError(f"unknown evolution kind {kind!r}; allowed: {' | '.join(EVOLUTIONS)}")
    return EVOLUTIONS[kind]


def evolution_options(kind: str) -> dict[str, tuple[Any, str, tuple[Optional[float], Optional[float]]]]:
    """``{option: (default, description, (low, high))}`` of ``kind`` (for ``--help`` and configs;
    a str option's bounds are ``(None, None)``, its choices are in ``EVOLUTIONS[kind].options``)."""
    return {name: (opt.default, opt.description, opt.bounds) for name, opt in _spec(kind).options.items()}


def check_evolution_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``options`` for ``kind``; return every option of the kind with defaults filled in.

    Raises TypeError for an unknown option (naming the kind's options) or a wrongly typed value,
    ValueError for a value out of its bounds or a combination the kind refuses (e.g. RDA bounds
    that break the stability condition).
    """
    spec = _spec(kind)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(sorted(spec.options)) or "none"
        raise TypeError(f"unknown option(s) {unknown} for evolution kind {kind!r}; allowed: {allowed}")
    out = {name: opt.default for name, opt in spec.options.items()}
    for name, value in options.items():
        out[name] = spec.options[name].check(kind, name, value)
    if spec.validate is not None:
        spec.validate(out)
    return out


def build_evolution(kind: str, target_shapes: Mapping[str, Sequence[int]], *, t0: float = 0.0, t1: float = 1.0,
                    steps: Optional[int] = None, **options: Any) -> WeightEvolution:
    """Build the weight family ``kind`` for the given targets.

    Args:
        kind: a key of :data:`EVOLUTIONS`.
        target_shapes: ordered ``{parameter name (relative to f): shape}`` (4-D conv weights
            ``[O, I, kH, kW]`` for every kind but the explicit schedules, which take any shape).
        t0, t1, steps: the block it serves (explicit families need the interval; ``untied``
            with ``pieces=0`` needs ``steps``).
        **options: the kind's options (:func:`evolution_options`).
    """
    spec = _spec(kind)
    opts = check_evolution_options(kind, options)
    return spec.factory(target_shapes, Span(float(t0), float(t1), steps), **opts)


def describe_kinds() -> str:
    """One block of text per kind: summary, style, evolution-off meaning, options (``--help``)."""
    lines = []
    for kind, spec in EVOLUTIONS.items():
        lines.append(f"{kind}: {spec.summary} [{spec.style}]")
        if spec.off:
            lines.append(f"    off: {spec.off}")
        for name, opt in spec.options.items():
            rng = f" one of {'|'.join(opt.choices)}" if opt.choices else (
                f" in [{opt.low}, {'inf' if opt.high is None else opt.high}]" if opt.low is not None else "")
            lines.append(f"    {name} = {opt.default!r}{rng}: {opt.description}")
    return "\n".join(lines)
