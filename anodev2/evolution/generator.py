"""``generator``: a learned linear ODE per output channel on the kernel slice, stable by
construction.

For a conv weight ``W [O, I, kH, kW]`` every slice ``w_{o,i}`` (flattened, ``HW = kH·kW``
cells) evolves by ``dw/dt = M_o w`` with

    M_o = K_o − N_o,
    K_o = Σ_{p<q} s_{o,pq} (e_p e_qᵀ − e_q e_pᵀ)                      (skew-symmetric)
    N_o = Σ_{p<q} c_{o,pq} (e_p − e_q)(e_p − e_q)ᵀ + Σ_p g_{o,p} e_p e_pᵀ   (symmetric PSD)

with ``s ∈ [-skew_max, skew_max]``, ``c ∈ [0, coupling_max]``, ``g ∈ [0, damping_max]``
(``HW(HW−1)/2``, ``HW(HW−1)/2`` and ``HW`` coefficients per output channel: 36 + 36 + 9 = 81 for
3×3 kernels). ``N_o`` is a weighted graph Laplacian on the complete graph of kernel cells plus
a non-negative diagonal, hence positive semi-definite because its weights are >= 0 -- which the
clamp on every use guarantees however the parameters are written. **Stability:** for any
complex ``x``, ``Re(x* M_o x) = −x* N_o x <= 0``, so every eigenvalue of ``M_o`` has real part
``<= 0`` and ``d/dt ||w||² = −2 wᵀ N_o w <= 0``: the Euclidean norm of every slice is
non-increasing in exact time. For an explicit Euler step, ``||I + hM||₂² = max_x (1 + 2h xᵀ(−N)x
+ h²|Mx|²) <= 1 + h²||M||₂²``: the growth per step is second order in h (the skew part's
rotation is not exactly norm-preserving under Euler). Unlike the RDA operators, ``M_o`` can rotate a kernel's pattern in any
direction of the HW-dimensional slice space.

The linear parameterisation (instead of e.g. ``−LLᵀ``) keeps the gradient of every coefficient
non-zero at the initial value 0, where ``q ≡ 0`` and the block is exactly ANODE.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence

import torch

from .slices import SliceEvolution, Term

__all__ = ["GeneratorEvolution", "GENERATOR_DEFAULTS", "generator_bases"]

GENERATOR_DEFAULTS: dict[str, float] = {"skew_max": 0.125, "coupling_max": 0.125, "damping_max": 0.125,
                                        "init_scale": 0.0}


def generator_bases(kh: int, kw: int) -> dict[str, torch.Tensor]:
    """``{"skew": [P, HW, HW], "coupling": [P, HW, HW], "damping": [HW, HW, HW]}`` (float64),
    ``P = HW(HW−1)/2`` pairs ``p < q`` in row-major order; the ``M_o`` of the module docstring
    is ``Σ s·skew + Σ c·coupling + Σ g·damping`` (coupling and damping carry the minus sign)."""
    cells = kh * kw
    pairs = [(p, q) for p in range(cells) for q in range(p + 1, cells)]
    eye = torch.eye(cells, dtype=torch.float64)
    skew = torch.zeros(len(pairs), cells, cells, dtype=torch.float64)
    coupling = torch.zeros(len(pairs), cells, cells, dtype=torch.float64)
    for k, (p, q) in enumerate(pairs):
        skew[k, p, q], skew[k, q, p] = 1.0, -1.0
        d = eye[p] - eye[q]
        coupling[k] = -torch.outer(d, d)
    damping = -torch.stack([torch.outer(eye[p], eye[p]) for p in range(cells)])
    return {"skew": skew, "coupling": coupling, "damping": damping}


def _basis(name: str):
    def basis(kh: int, kw: int) -> torch.Tensor:
        return generator_bases(kh, kw)[name]
    return basis


class GeneratorEvolution(SliceEvolution):
    """``dθ/dt = M_o θ`` per output channel with ``M_o = K_o − N_o`` (module docstring).

    Args:
        target_shapes: ``{parameter name: [O, I, kH, kW]}``.
        skew_max, coupling_max, damping_max: bounds of the three coefficient families (> 0).
        init_scale: 0 (default: q ≡ 0, exactly ANODE) or the scale of random initial values.
    Coefficients: ``"<target>/skew"`` and ``"<target>/coupling"`` ``[O, HW(HW−1)/2]``,
    ``"<target>/damping"`` ``[O, HW]``.
    """

    kind = "generator"

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], **options: float):
        unknown = sorted(set(options) - set(GENERATOR_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown} for evolution kind 'generator'; "
                            f"allowed: {sorted(GENERATOR_DEFAULTS)}")
        opts = dict(GENERATOR_DEFAULTS)
        for key, value in options.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TypeError(f"option {key} must be a finite real number, got {value!r}")
            opts[key] = float(value)
        for key in ("skew_max", "coupling_max", "damping_max"):
            if opts[key] <= 0:
                raise ValueError(f"{key} must be > 0, got {opts[key]}")
        if opts["init_scale"] < 0:
            raise ValueError(f"init_scale must be >= 0, got {opts['init_scale']}")
        terms = [Term("skew", -opts["skew_max"], opts["skew_max"], _basis("skew")),
                 Term("coupling", 0.0, opts["coupling_max"], _basis("coupling")),
                 Term("damping", 0.0, opts["damping_max"], _basis("damping"))]
        super().__init__(target_shapes, terms, opts["init_scale"])
        self.options = opts
