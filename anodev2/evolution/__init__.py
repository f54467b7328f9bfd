"""Weight evolutions ``q`` for coupled ODE blocks: ``dθ/dt = q(θ, p)`` (ANODEV2).

Public API::

    EVOLUTION_KINDS = ("static", "diffusion", "advection", "reaction", "rda")
    evo = build_evolution(kind, {"conv1.weight": torch.Size([O, I, k, k]), ...}, **options)
    dthetas = evo(t, thetas)        # tuple in, tuple out, same shapes (no batch dim)
    evo.coefficients()              # {"conv1.weight/diffusion": Tensor[O], ...} effective values
    evo.set_coefficients({"conv1.weight/diffusion": 0.1})  # exact; out of bound -> ValueError
    evo.bounds()                    # {"diffusion": (0.0, 0.125), ...}

Zhang et al. 2019, arXiv 1906.04596; our operator is described in ``rda``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .base import StaticEvolution, WeightEvolution, safe_key
from .operators import STENCILS, neumann_laplacian, stencil_matrices, upwind_advection
from .rda import RDA_KINDS, RDA_OPTIONS, RDA_TERMS, RDAEvolution, check_options

__all__ = [
    "EVOLUTION_KINDS",
    "RDA_OPTIONS",
    "RDA_TERMS",
    "build_evolution",
    "WeightEvolution",
    "StaticEvolution",
    "RDAEvolution",
    "STENCILS",
    "stencil_matrices",
    "neumann_laplacian",
    "upwind_advection",
    "safe_key",
]

EVOLUTION_KINDS: tuple[str, ...] = ("static",) + RDA_KINDS


def build_evolution(
    kind: str, target_shapes: Mapping[str, Sequence[int]], **options: float
) -> WeightEvolution:
    """Build the weight evolution ``kind`` for the given targets.

    Args:
        kind: one of ``EVOLUTION_KINDS``.
        target_shapes: ordered ``{parameter name (relative to f): shape}``; every shape must be
            a 4-D conv weight ``[O, I, kH, kW]``.
        **options: ``d_max``, ``a_max``, ``r_max``, ``init_scale`` (see ``RDAEvolution``);
            validated for every kind, unused by "static".

    Returns:
        ``StaticEvolution`` for "static", else ``RDAEvolution``.
    """
    if not isinstance(kind, str):
        raise TypeError(f"evolution kind must be a str, one of {EVOLUTION_KINDS}; got {type(kind).__name__}")
    if kind not in EVOLUTION_KINDS:
        raise ValueError(f"unknown evolution kind {kind!r}; allowed: {EVOLUTION_KINDS}")
    if kind == "static":
        check_options(options)
        return StaticEvolution(target_shapes)
    return RDAEvolution(kind, target_shapes, **options)
