"""grad="backsolve": the continuous adjoint of Neural ODEs (Chen et al. 2018, arXiv 1806.07366, Alg. 1).

Kept as the baseline that ANODE (arXiv 1902.10298, Sec. 3.1) argues against: backward solves
the augmented system

    dz/dt = f(z, θ),   da/dt = -a^T ∂f/∂z,   dg/dt = -a^T ∂f/∂θ,

from ``(z(t1), ∂J/∂z(t1), 0)`` back to ``t0`` with the same method and step count, and returns
``(a(t0), g(t0))``. It reconstructs z by integrating backwards in time, which is unstable for
dissipative (e.g. ReLU/conv) dynamics, and it is the gradient of the continuous problem, not
of the computed forward map, so it differs from the exact gradient by discretization error
even when the reconstruction is perfect. The interval's gradients are the continuous ones as
well (Chen et al., App. B): ``∂J/∂t1 = a(t1)·f(t1, z(t1))``, ``∂J/∂t0 = -a(t0)·f(t0, z(t0))`` with
the reconstructed ``z(t0)``; approximate in the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..solvers import State, integrate
from .recompute import frozen_norm_statistics
from .base import GradMode, SolveSpec, Times


@dataclass(frozen=True)
class Backsolve(GradMode):
    """The continuous adjoint (Chen et al. 2018): O(1) memory in the step count, but an
    approximate gradient (see the module docstring). No options; no double backward."""

    name = "backsolve"

    def solve(self, spec: SolveSpec, y0: State, times: Times, params: tuple[Tensor, ...]) -> State:
        return _BacksolveAdjoint.apply(spec, *y0, *times, *params)


def _vjp(outputs: State, inputs: tuple[Tensor, ...], cotangents: State) -> tuple[Tensor, ...]:
    """``Σ_i cotangent_i^T ∂output_i/∂inputs``, zeros where an input does not reach an output
    (a field that ignores y or every parameter, or a constant entry of a tuple state)."""
    pairs = [(o, a) for o, a in zip(outputs, cotangents) if o.requires_grad]
    if not pairs:
        return tuple(torch.zeros_like(x) for x in inputs)
    g = torch.autograd.grad([o for o, _ in pairs], inputs, grad_outputs=[a for _, a in pairs], allow_unused=True)
    return tuple(torch.zeros_like(x) if gi is None else gi for gi, x in zip(g, inputs))


def _dot(a: State, b: State) -> Tensor:
    """``Σ_i <a_i, b_i>`` in float64 (a 0-dim tensor)."""
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


class _BacksolveAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SolveSpec, *inputs: Tensor) -> State:
        y0, times, _ = spec.split(inputs)
        with torch.no_grad():
            y1 = integrate(spec.func, y0, *spec.grid(times), spec.steps, spec.tableau, callback=spec.callback)
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
        y1, times, params = spec.split(saved)  # saved as (*y(t1), *times, *params)
        want = [p for p, r in zip(params, ctx.requires[k + len(times):]) if r]
        ref = y1[0]

        def at(t: float) -> Tensor:
            return torch.full((), t, dtype=ref.dtype, device=ref.device)

        def augmented(t: Tensor, aug: State) -> State:
            y, a = aug[:k], aug[k: 2 * k]
            with torch.enable_grad():
                y = tuple(v.detach().requires_grad_(True) for v in y)
                fy = spec.func(t, y)
                vjp = _vjp(fy, (*y, *want), a)
            return (*(f.detach() for f in fy), *(-g for g in vjp))

        grad_y1 = tuple(g.contiguous() for g in grad_y1)
        aug0 = (*(v.detach() for v in y1), *grad_y1, *(torch.zeros_like(p) for p in want))
        with frozen_norm_statistics(spec.module), torch.no_grad():
            dt1 = _dot(grad_y1, spec.func(at(spec.t1), aug0[:k])) if times else None
            aug = integrate(augmented, aug0, spec.t1, -spec.h, spec.steps, spec.tableau)
            dt0 = -_dot(aug[k: 2 * k], spec.func(at(spec.t0), aug[:k])) if times else None
        spec.stats.backward_steps += spec.steps
        spec.stats.backward_evals += spec.steps * spec.tableau.stages + (2 if times else 0)
        a0, g0 = aug[k: 2 * k], iter(aug[2 * k:])
        grads_y = [a if r else None for a, r in zip(a0, ctx.requires[:k])]
        grads_t = [d.reshape(t.shape).to(device=t.device, dtype=t.dtype) if r else None
                   for d, t, r in zip((dt0, dt1), times, ctx.requires[k:])]
        grads_p = [next(g0) if r else None for r in ctx.requires[k + len(times):]]
        return (None, *grads_y, *grads_t, *grads_p)
