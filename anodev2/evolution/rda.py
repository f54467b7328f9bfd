"""Reaction-diffusion-advection (RDA) weight evolutions.

For a conv weight ``W`` of shape ``[O, I, kH, kW]`` each ``kH x kW`` slice is a field
on a grid with unit spacing and zero-flux boundaries (see ``operators``):

    q(W) = D ⊙ ΔW + (a_x ⊙ ∂xW + a_y ⊙ ∂yW) + r ⊙ tanh(W)

with per-output-channel coefficients (shape ``[O]``, broadcast as ``[O, 1, 1, 1]``):

* ``D   = d_max * sigmoid(raw_D)``   in (0, d_max)   (diffusion)
* ``a_* = a_max * tanh(raw_a*)``     in (-a_max, a_max) (advection; x = last dim)
* ``r   = raw_r``                    unbounded; |r ⊙ tanh(W)| <= |r| (reaction)

Sign: ``+a·∇W`` is the transport equation ``W_t = -v·∇W`` with velocity ``v = -a``,
i.e. a positive ``a_x`` moves the kernel pattern towards smaller column index.

Stability bound: forward Euler on ``W' = D ΔW`` with the 5-point stencil and unit
spacing gives ``W_{n+1} = (1 - 4hD) W + hD Σ_neighbours W`` (zero-flux ghosts count
as the point itself), a convex combination - so max/min cannot grow (discrete
maximum principle) - iff ``h·D <= 1/4``. With the default ``d_max = 0.25`` this holds
for every step ``h <= 1`` (e.g. ``t1 - t0 = 1`` with any number of steps). For RK4
the real-axis stability bound is ``h·D <= 2.785/8 ≈ 0.35``.

Initialisation (near zero, so the block starts close to a static-weight ODE):
``D = d_init`` exactly; ``a_x, a_y ≈ init_scale·N(0,1)`` and ``r = init_scale·N(0,1)``,
drawn from torch's global RNG (deterministic given ``torch.manual_seed``).

The operator of Zhang et al. 2019 (ANODEV2, arXiv 1906.04596, Sec. 3) could not be
retrieved in print; this is our concrete choice (see DESIGN.md "Weight evolution").
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence

import torch
from torch import nn

from .base import WeightEvolution, check_conv_shapes, safe_key
from .operators import laplacian_and_gradients

__all__ = ["RDAEvolution", "RDA_KINDS", "RDA_TERMS", "RDA_OPTIONS", "check_options"]

#: the coefficient terms each RDA-family kind learns, in order.
RDA_TERMS: dict[str, tuple[str, ...]] = {
    "diffusion": ("diffusion",),
    "advection": ("advection_x", "advection_y"),
    "reaction": ("reaction",),
    "rda": ("diffusion", "advection_x", "advection_y", "reaction"),
}
RDA_KINDS: tuple[str, ...] = tuple(RDA_TERMS)

#: keyword options of ``RDAEvolution`` / ``build_evolution`` and their defaults.
RDA_OPTIONS: dict[str, float] = {"d_max": 0.25, "a_max": 0.25, "d_init": 1e-3, "init_scale": 1e-3}


def check_options(options: Mapping[str, object]) -> dict[str, float]:
    """Validate RDA options; return the full option dict with defaults filled in."""
    unknown = sorted(set(options) - set(RDA_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown weight-evolution option(s) {unknown}; allowed: {sorted(RDA_OPTIONS)}"
        )
    out = dict(RDA_OPTIONS)
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise TypeError(f"option {key} must be a finite real number, got {value!r}")
        out[key] = float(value)
    if out["d_max"] <= 0:
        raise ValueError(f"d_max must be > 0, got {out['d_max']}")
    if out["a_max"] <= 0:
        raise ValueError(f"a_max must be > 0, got {out['a_max']}")
    if not 0 < out["d_init"] < out["d_max"]:
        raise ValueError(f"d_init must satisfy 0 < d_init < d_max={out['d_max']}, got {out['d_init']}")
    if out["init_scale"] < 0:
        raise ValueError(f"init_scale must be >= 0, got {out['init_scale']}")
    return out


class RDAEvolution(WeightEvolution):
    """Diffusion / advection / reaction / full RDA evolution of conv weights.

    Args:
        kind: one of ``RDA_KINDS`` = ("diffusion", "advection", "reaction", "rda").
        target_shapes: ``{parameter name: [O, I, kH, kW]}``; names may contain '.'.
        d_max: diffusion bound (default 0.25: explicit Euler stable for step <= 1).
        a_max: advection bound (default 0.25).
        d_init: initial diffusion coefficient, ``0 < d_init < d_max`` (default 1e-3).
        init_scale: std of the initial advection/reaction coefficients (default 1e-3).

    Parameters: ``raw[term][safe_key(name)]`` of shape ``[O]`` for each target and each
    term in ``RDA_TERMS[kind]``: ``len(RDA_TERMS[kind]) * O`` numbers per target.
    """

    def __init__(self, kind: str, target_shapes: Mapping[str, Sequence[int]], **options: float):
        if kind not in RDA_TERMS:
            raise ValueError(f"unknown RDA evolution kind {kind!r}; allowed: {RDA_KINDS}")
        opts = check_options(options)
        super().__init__(target_shapes)
        check_conv_shapes(self.target_shapes)
        self.kind = kind
        self.terms: tuple[str, ...] = RDA_TERMS[kind]
        self.d_max, self.a_max = opts["d_max"], opts["a_max"]
        self.d_init, self.init_scale = opts["d_init"], opts["init_scale"]
        self._keys = tuple(safe_key(name) for name in self.targets)
        self.raw = nn.ModuleDict({term: nn.ParameterDict() for term in self.terms})
        raw_d = math.log(self.d_init / (self.d_max - self.d_init))  # logit(d_init / d_max)
        with torch.no_grad():
            for name, key in zip(self.targets, self._keys):
                out_channels = self.target_shapes[name][0]
                for term in self.terms:
                    if term == "diffusion":
                        value = torch.full((out_channels,), raw_d)
                    elif term == "reaction":
                        value = self.init_scale * torch.randn(out_channels)
                    else:  # advection: a_max * tanh(raw) ≈ init_scale * N(0, 1)
                        value = torch.atanh(
                            (self.init_scale * torch.randn(out_channels) / self.a_max).clamp(-0.5, 0.5)
                        )
                    self.raw[term][key] = nn.Parameter(value)

    def coefficient(self, term: str, name: str) -> torch.Tensor:
        """Effective (bounded) coefficient ``[O]`` of ``term`` for target ``name``; differentiable."""
        if term not in self.terms:
            raise ValueError(f"term {term!r} not learned by kind {self.kind!r}; allowed: {self.terms}")
        if name not in self.target_shapes:
            raise ValueError(f"unknown target {name!r}; targets: {self.targets}")
        return self._transform(term, self.raw[term][safe_key(name)])

    def _transform(self, term: str, raw: torch.Tensor) -> torch.Tensor:
        if term == "diffusion":
            return self.d_max * torch.sigmoid(raw)
        if term == "reaction":
            return raw
        return self.a_max * torch.tanh(raw)

    def _rates(self, t: torch.Tensor, thetas: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        terms = self.terms
        need_lap = "diffusion" in terms
        need_grad = "advection_x" in terms
        out = []
        for key, w in zip(self._keys, thetas):
            def c(term: str) -> torch.Tensor:  # [O] -> [O, 1, 1, 1] in w's dtype
                return self._transform(term, self.raw[term][key]).to(w.dtype).view(-1, 1, 1, 1)

            lap, gx, gy = (
                laplacian_and_gradients(w, need_lap, need_grad) if (need_lap or need_grad)
                else (None, None, None)
            )
            q = None
            if need_lap:
                q = c("diffusion") * lap
            if need_grad:
                adv = c("advection_x") * gx + c("advection_y") * gy
                q = adv if q is None else q + adv
            if "reaction" in terms:
                react = c("reaction") * torch.tanh(w)
                q = react if q is None else q + react
            out.append(q)
        return tuple(out)

    def coefficients(self) -> dict[str, torch.Tensor]:
        """``{"<target>/<term>": Tensor[O]}`` of effective coefficients, detached."""
        return {
            f"{name}/{term}": self.coefficient(term, name).detach()
            for name in self.targets
            for term in self.terms
        }

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, targets={self.targets}, d_max={self.d_max}, a_max={self.a_max}, "
            f"d_init={self.d_init}, init_scale={self.init_scale}"
        )
