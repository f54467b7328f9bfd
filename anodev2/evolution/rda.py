"""Reaction-diffusion-advection (RDA) weight evolutions: ``diffusion``, ``advection``,
``reaction``, ``rda``.

For a conv weight ``W [O, I, kH, kW]`` each ``kH x kW`` slice ``w`` is a field on a grid of
unit cells (``operators``). The three single-term kinds evolve it by

    diffusion:  dw/dt = D_o L w
    advection:  dw/dt = Σ_{dir ∈ right,left,down,up} a_{dir,o} U_dir w
    reaction:   dw/dt = r_o ⊙ tanh(w)

and ``rda`` by the sum of the last two (the four speeds and the reaction; no separate ``D``):

    rda:        dw/dt = Σ_dir a_{dir,o} U_dir w  +  r_o ⊙ tanh(w)

* ``D_o ∈ [0, d_max]`` per output channel: ``L`` the zero-flux 5-point Laplacian;
* ``a_{dir,o} ∈ [0, a_max]`` per output channel and direction: ``U_dir`` first-order upwind
  transport towards ``dir`` with outflow walls (no wrap-around). Net velocity along x is
  ``a_right - a_left``; the common part ``min(a_right, a_left)`` is diffusion along x with
  outflow walls: ``d·(U_right + U_left)`` is ``d`` times the 1-D second difference with zero
  ghost cells. ``q`` is linear in every coefficient, so the loss is smooth in each (no ``|a|``
  kink at the initial value 0): gradient descent picks the direction by which speed it
  increases;
* ``r_o ∈ [-r_max, r_max]^{kH×kW}`` per output channel **and kernel entry**: the reaction
  changes the kernel's shape (entry p of every slice of channel o grows or decays at its own
  rate) rather than rescaling output channel o, which a following BatchNorm/GroupNorm would
  cancel.

**Why rda has no separate diffusion coefficient (identifiability).** The Neumann Laplacian is
``L = U_right + U_left + U_down + U_up + diag(walls)`` (``walls``: the number of walls of a
cell), and the per-entry reaction reproduces any diagonal to first order (``tanh w ≈ w``). With
``D`` in rda, ``(D + δ, a_dir − δ, r − δ·walls)`` would change ``q`` only at ``O(w³)``: one
near-null direction per output channel (Jacobian of a teacher block's outputs w.r.t. the
coefficients: condition number 3.2e3; without ``D`` 2.5e2, docs/DESIGN.md §3). Without ``D`` the map from the
coefficients to the linearised operator ``Σ_dir a_dir U_dir + diag(r)`` is one-to-one: the four
``U_dir`` have disjoint off-diagonal supports (each couples a cell to one neighbour), which
fix the four speeds, and the diagonal then fixes ``r``. Isotropic diffusion ``D`` is
``a_dir = D`` for all four directions (with outflow walls; the reaction's diagonal can add the
Neumann walls' ``D·walls`` back), so the function class is unchanged to first order.

**Stability (proved in docs/EVOLUTION.md, tested on explicit step matrices).** Let
``ρ = 4·D + a_right + a_left + a_down + a_up`` (per channel; ``D = 0`` for advection and rda). The linear part's Euler step
``I + hM`` has diagonal ``>= 1 - hρ``, off-diagonal entries ``>= 0`` and row sums ``<= 1``
(``= 1`` except rows at an upwind wall, where mass stops entering). Hence for

    h · ρ <= 1                                                                       (*)

every step is entrywise non-negative with row sums <= 1: ``||w_{n+1}||_∞ <= ||w_n||_∞``
(max-norm non-increasing; a constant slice stays constant away from the walls; the sum is not
conserved -- it leaves through outflow walls). The same holds for every method of
``anodev2.solvers`` (euler, midpoint/rk2, heun, rk4): their step is the truncated Taylor
polynomial ``P(hM) = Σ_j γ_j (I + hM)^j`` with ``γ_j >= 0``, ``Σ γ_j = 1`` (threshold factor 1,
Kraaijevanger 1986). The bounds ``4·d_max + 4·a_max <= 1`` (over the terms a kind learns; rda: ``4·a_max <= 1``)
give (*) for every step ``h <= 1``; ``check_options`` rejects bounds that break it, and an
``ODEBlock`` whose step ``h = |t1 − t0|/steps`` is too large for the bounds is refused
(:meth:`RDAEvolution.check_span`). Reaction:
``|r| <= r_max <= 1``; with (*) one Euler step gives ``||w_{n+1}||_∞ <= (1 + h·r_max)||w_n||_∞``
(``|tanh w| <= |w|``), and ``w + h r tanh(w)`` alone keeps the sign of ``w`` for ``h|r| <= 1``.

**Parameterisation**: stored as the coefficients themselves; forward and ``coefficients()`` use
``clamp(stored, bounds)``; a stored value written out of bounds is projected back before the
next forward (``slices.SliceEvolution``). Zero coefficients (the default init) give
``q ≡ 0``: the block is exactly the ANODE block.

The operator of Zhang et al. 2019 (ANODEV2, arXiv 1906.04596, Sec. 3) is not given in print in
closed form; this is our concrete choice (docs/EVOLUTION.md).
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence

import torch

from .operators import stencil_matrices
from .slices import SliceEvolution, Term

__all__ = ["RDAEvolution", "RDA_KINDS", "RDA_TERMS", "RDA_DEFAULTS", "ADVECTION_TERMS", "check_options"]

ADVECTION_TERMS: tuple[str, ...] = ("advection_right", "advection_left", "advection_down", "advection_up")

#: the coefficient terms each RDA-family kind learns, in order.
RDA_TERMS: dict[str, tuple[str, ...]] = {
    "diffusion": ("diffusion",),
    "advection": ADVECTION_TERMS,
    "reaction": ("reaction",),
    "rda": ADVECTION_TERMS + ("reaction",),  # no D: the symmetric part of the speeds is diffusion
}
RDA_KINDS: tuple[str, ...] = tuple(RDA_TERMS)

#: per kind, the default bounds: the whole budget (*) for the terms it learns.
RDA_DEFAULTS: dict[str, dict[str, float]] = {
    "diffusion": {"d_max": 0.25, "init_scale": 0.0},
    "advection": {"a_max": 0.25, "init_scale": 0.0},
    "reaction": {"r_max": 1.0, "init_scale": 0.0},
    "rda": {"a_max": 0.25, "r_max": 1.0, "init_scale": 0.0},
}

_STENCIL = {"diffusion": 0, "advection_right": 1, "advection_left": 2, "advection_down": 3, "advection_up": 4}


def _stencil(index: int):
    def basis(kh: int, kw: int) -> torch.Tensor:
        return stencil_matrices(kh, kw)[index: index + 1]
    return basis


def check_options(kind: str, options: Mapping[str, object]) -> dict[str, float]:
    """Validate the options of RDA-family ``kind``; return them with defaults filled in.

    Raises TypeError for an unknown option or a non-number, ValueError when a bound is <= 0 or
    the bounds break the stability condition (*) for steps ``h <= 1``:
    ``4·d_max + 4·a_max <= 1`` (counting only the terms learned) and ``r_max <= 1``.
    """
    allowed = RDA_DEFAULTS[kind]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for evolution kind {kind!r}; allowed: {sorted(allowed)}")
    out = dict(allowed)
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise TypeError(f"option {key} must be a finite real number, got {value!r}")
        out[key] = float(value)
    for key in ("d_max", "a_max", "r_max"):
        if key in out and out[key] <= 0:
            raise ValueError(f"{key} must be > 0, got {out[key]}")
    if out["init_scale"] < 0:
        raise ValueError(f"init_scale must be >= 0, got {out['init_scale']}")
    rate = 4 * out.get("d_max", 0.0) + 4 * out.get("a_max", 0.0)
    if rate > 1:
        raise ValueError(
            f"d_max={out.get('d_max', 0)}, a_max={out.get('a_max', 0)} give 4·d_max + 4·a_max = {rate:g} > 1 "
            f"for kind {kind!r}: explicit steps h <= 1 would no longer be max-norm non-increasing"
        )
    if out.get("r_max", 0.0) > 1:
        raise ValueError(f"r_max must be <= 1 so that h·|r| <= 1 for steps h <= 1, got {out['r_max']}")
    return out


class RDAEvolution(SliceEvolution):
    """Diffusion / advection / reaction / full RDA evolution of conv weights (module docstring).

    Args:
        kind: one of ``RDA_KINDS`` = ("diffusion", "advection", "reaction", "rda").
        target_shapes: ``{parameter name: [O, I, kH, kW]}``; names may contain '.'.
        d_max: diffusion bound, ``0 <= D <= d_max`` (kind ``diffusion`` only).
        a_max: bound of each directional speed, ``0 <= a_dir <= a_max`` (``advection``, ``rda``).
        r_max: reaction bound, ``|r| <= r_max <= 1`` (``reaction``, ``rda``).
        init_scale: scale of random initial coefficients (default 0: all zero).
        Defaults per kind: ``RDA_DEFAULTS`` (the whole budget of (*) for the terms learned).
    Parameters: ``coef["<term>_k{kH}x{kW}"]`` of shape ``[ΣO, 1]`` (diffusion, each speed) or
    ``[ΣO, kH·kW]`` (reaction) per kernel size.
    """

    def __init__(self, kind: str, target_shapes: Mapping[str, Sequence[int]], **options: float):
        if kind not in RDA_TERMS:
            raise ValueError(f"unknown RDA evolution kind {kind!r}; allowed: {RDA_KINDS}")
        opts = check_options(kind, options)
        terms = []
        for name in RDA_TERMS[kind]:
            if name == "diffusion":
                terms.append(Term(name, 0.0, opts["d_max"], _stencil(_STENCIL[name])))
            elif name == "reaction":
                terms.append(Term(name, -opts["r_max"], opts["r_max"]))
            else:
                terms.append(Term(name, 0.0, opts["a_max"], _stencil(_STENCIL[name])))
        super().__init__(target_shapes, terms, opts["init_scale"])
        self.kind = kind
        self.d_max, self.a_max, self.r_max = opts.get("d_max"), opts.get("a_max"), opts.get("r_max")
        self.options = opts

    def check_span(self, t0: float, t1: float, steps: int) -> None:
        """Refuse a block whose step ``h = |t1 − t0| / steps`` breaks (*) at the bounds:
        ``h·(4·d_max + 4·a_max) <= 1`` (terms learned) and ``h·r_max <= 1``."""
        h = abs(float(t1) - float(t0)) / steps
        rate = 4 * (self.d_max or 0.0) + 4 * (self.a_max or 0.0)
        if h * rate > 1 + 1e-12 or h * (self.r_max or 0.0) > 1 + 1e-12:
            raise ValueError(
                f"evolution kind {self.kind!r}: step h = |t1 - t0| / steps = {h:g} breaks the stability bound "
                f"h·(4·d_max + 4·a_max) <= 1 and h·r_max <= 1 (4·d_max + 4·a_max = {rate:g}, r_max = {self.r_max}); "
                f"use steps >= {math.ceil(abs(float(t1) - float(t0)) * max(rate, self.r_max or 0.0) - 1e-12)} "
                "or smaller bounds")
