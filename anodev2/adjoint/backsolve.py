"""grad="backsolve": the continuous adjoint of Neural ODEs (Chen et al. 2018, arXiv 1806.07366, Alg. 1).

Kept as the baseline that ANODE (arXiv 1902.10298, Sec. 3.1) argues against: backward solves
the augmented system

    dz/dt = f(z, θ),   da/dt = -a^T ∂f/∂z,   dg/dt = -a^T ∂f/∂θ,

from ``(z(t1), ∂J/∂z(t1), 0)`` back to ``t0`` with the same method and step count, and returns
``(a(t0), g(t0))``. It reconstructs z by integrating backwards in time, which is unstable for
dissipative (e.g. ReLU/conv) dynamics, and it is the gradient of the continuous problem, not
of the computed forward map, so it differs from the exact gradient by discretization error
even when the reconstruction is perfect.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..solvers import integrate
from .recompute import frozen_norm_statistics
from .spec import SolveSpec


class _BacksolveAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SolveSpec, *inputs: Tensor) -> tuple[Tensor, ...]:
        y0 = inputs[: spec.n_state]
        with torch.no_grad():
            y1 = integrate(spec.func, y0, spec.t0, spec.h, spec.steps, spec.tableau, callback=spec.callback)
        spec.stats.forward_evals += spec.steps * spec.tableau.stages
        ctx.spec = spec
        ctx.requires = [t.requires_grad for t in inputs]
        ctx.save_for_backward(*y1, *inputs[spec.n_state:])
        return y1

    @staticmethod
    def backward(ctx, *grad_y1: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "grad='backsolve' does not support double backward (create_graph=True); "
                "use grad='checkpoint' or grad='backprop'")
        spec: SolveSpec = ctx.spec
        k = spec.n_state
        saved = ctx.saved_tensors
        y1, params = saved[:k], saved[k:]
        want = [p for p, r in zip(params, ctx.requires[k:]) if r]

        def augmented(t: Tensor, aug: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            y, a = aug[:k], aug[k: 2 * k]
            with torch.enable_grad():
                y = tuple(v.detach().requires_grad_(True) for v in y)
                fy = spec.func(t, y)
                vjp = torch.autograd.grad(fy, (*y, *want), grad_outputs=a, allow_unused=True)
            neg = tuple(torch.zeros_like(x) if g is None else -g for g, x in zip(vjp, (*y, *want)))
            return (*(f.detach() for f in fy), *neg)

        aug0 = (*(v.detach() for v in y1), *grad_y1, *(torch.zeros_like(p) for p in want))
        with frozen_norm_statistics(spec.module), torch.no_grad():
            aug = integrate(augmented, aug0, spec.t1, -spec.h, spec.steps, spec.tableau)
        spec.stats.backward_steps += spec.steps
        spec.stats.backward_evals += spec.steps * spec.tableau.stages
        a0, g0 = aug[k: 2 * k], iter(aug[2 * k:])
        grads_y = [a if r else None for a, r in zip(a0, ctx.requires[:k])]
        grads_p = [next(g0) if r else None for r in ctx.requires[k:]]
        return (None, *grads_y, *grads_p)


def solve_backsolve(spec: SolveSpec, y0: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Integrate with the reverse-time continuous adjoint attached for backward."""
    return _BacksolveAdjoint.apply(spec, *y0, *params)
