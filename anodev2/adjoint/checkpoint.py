"""grad="checkpoint": the checkpointed discrete adjoint (discretize-then-optimize).

ANODE (Gholami, Keutzer, Biros 2019, arXiv 1902.10298, Sec. 3): the gradient is the exact
derivative of the computed forward map. With ``Φ_n`` the n-th RK step,

    λ_N = ∂J/∂y_N,   λ_n = (∂Φ_n/∂y_n)^T λ_{n+1},   ∇_p J = Σ_n (∂Φ_n/∂p)^T λ_{n+1},

each product being one ``torch.autograd.grad`` over one re-evaluated step. Forward keeps only
the input ``y_0`` (no graph); backward re-runs the steps without a graph, holding the states
chosen by the binomial schedule (:mod:`.schedule`), so memory is O(one step's graph + c states).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from ..solvers import integrate
from .recompute import RngLog, autocast_replay, frozen_norm_statistics
from .schedule import Advance, Free, Reverse, first_sweep, revolve_schedule, slots_for
from .spec import SolveSpec


class _CheckpointAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SolveSpec, *inputs: Tensor) -> tuple[Tensor, ...]:
        y0 = inputs[: spec.n_state]
        rng = RngLog.for_tensors(y0) if spec.preserve_rng else None
        keep = set(first_sweep(spec.steps, slots_for(spec.steps, spec.checkpoints))) if spec.keep_forward else set()
        kept: dict[int, tuple[Tensor, ...]] = {}

        def callback(n, y):
            if n in keep:
                kept[n] = y
            if spec.callback is not None:
                spec.callback(n, y)

        with torch.no_grad():
            y1 = integrate(spec.func, y0, spec.t0, spec.h, spec.steps, spec.tableau,
                           callback=callback, before_step=rng.record if rng else None)
        spec.stats.forward_evals += spec.steps * spec.tableau.stages
        ctx.spec, ctx.rng = spec, rng
        ctx.autocast = autocast_replay(y0[0].device.type)
        ctx.kept_index = sorted(kept)
        ctx.save_for_backward(*inputs, *(t for n in ctx.kept_index for t in kept[n]))
        return y1

    @staticmethod
    def backward(ctx, *grad_y1: Tensor):
        spec: SolveSpec = ctx.spec
        rng: Optional[RngLog] = ctx.rng
        saved = ctx.saved_tensors
        k, n_kept = spec.n_state, len(ctx.kept_index) * spec.n_state
        inputs, flat = saved[: len(saved) - n_kept], saved[len(saved) - n_kept:]
        kept = {n: tuple(flat[i * k:(i + 1) * k]) for i, n in enumerate(ctx.kept_index)}
        y0, params = inputs[:k], inputs[k:]
        with rng.forked() if rng else contextlib.nullcontext(), frozen_norm_statistics(spec.module), ctx.autocast():
            if torch.is_grad_enabled():  # create_graph=True: differentiate the gradient itself
                grads = _unrolled_vjp(spec, rng, y0, params, grad_y1)
            else:
                grads = _reverse_sweep(spec, rng, y0, params, grad_y1, kept)
        return (None, *grads)


def _step(spec: SolveSpec, rng: Optional[RngLog], n: int, y):
    if rng is not None:
        rng.restore(n)
    return spec.step(n, y)


def _reverse_sweep(spec, rng, y0, params, grad_y1, kept):
    """The discrete adjoint, one vector–Jacobian product per step, states from the schedule
    (those in ``kept``, from the forward pass, are not recomputed)."""
    stats, stages = spec.stats, spec.tableau.stages
    c = slots_for(spec.steps, spec.checkpoints)
    want = [p for p in params if p.requires_grad]
    p_grads: list[Optional[Tensor]] = [None] * len(want)
    lam = tuple(grad_y1)
    held = {0: tuple(y.detach() for y in y0)}
    stored: set[int] = set()  # indices occupying a checkpoint slot
    for action in revolve_schedule(spec.steps, c):
        if isinstance(action, Advance):
            if action.stop in kept:  # computed by the forward pass: nothing to recompute
                held[action.stop] = kept.pop(action.stop)
            else:
                y = held[action.start]
                with torch.no_grad():
                    for n in range(action.start, action.stop):
                        y = _step(spec, rng, n, y)
                held[action.stop] = y
                k = action.stop - action.start
                stats.recomputed_steps += k
                stats.backward_steps += k
                stats.backward_evals += k * stages
            if action.store:
                stored.add(action.stop)
                stats.checkpoints_held = max(stats.checkpoints_held, len(stored))
        elif isinstance(action, Reverse):
            n = action.step
            with torch.enable_grad():
                yn = tuple(y.detach().requires_grad_(True) for y in held[n])
                out = _step(spec, rng, n, yn)
                g = torch.autograd.grad(out, (*yn, *want), grad_outputs=lam, allow_unused=True)
            lam = tuple(torch.zeros_like(y) if gi is None else gi for gi, y in zip(g, yn))
            for i, gi in enumerate(g[len(yn):]):
                if gi is not None:
                    p_grads[i] = gi if p_grads[i] is None else p_grads[i].add_(gi)
            stats.backward_steps += 1
            stats.backward_evals += stages
        else:
            assert isinstance(action, Free)
            del held[action.index]
            stored.discard(action.index)
    it = iter(p_grads)
    grads_p = [next(it) if p.requires_grad else None for p in params]
    grads_y = [l if y.requires_grad else None for l, y in zip(lam, y0)]
    return (*grads_y, *grads_p)


def _unrolled_vjp(spec, rng, y0, params, grad_y1):
    """Double backward: rebuild the unrolled graph once and differentiate it with
    ``create_graph=True`` (exact, O(steps) memory for this rarer case)."""
    with torch.enable_grad():
        y1 = integrate(spec.func, tuple(y0), spec.t0, spec.h, spec.steps, spec.tableau,
                       before_step=rng.restore if rng else None)
        wrt = [t for t in (*y0, *params) if t.requires_grad]
        g = torch.autograd.grad(y1, wrt, grad_outputs=grad_y1, create_graph=True, allow_unused=True)
    spec.stats.backward_steps += spec.steps
    spec.stats.backward_evals += spec.steps * spec.tableau.stages
    it = iter(g)
    return tuple(next(it) if t.requires_grad else None for t in (*y0, *params))


def solve_checkpoint(spec: SolveSpec, y0: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Integrate with the checkpointed discrete adjoint attached for backward."""
    return _CheckpointAdjoint.apply(spec, *y0, *params)
