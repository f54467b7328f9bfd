"""grad="checkpoint": the checkpointed discrete adjoint (discretize-then-optimize).

ANODE (Gholami, Keutzer, Biros 2019, arXiv 1902.10298, Sec. 3): the gradient is the exact
derivative of the computed forward map. With ``Φ_n`` the n-th RK step,

    λ_N = ∂J/∂y_N,   λ_n = (∂Φ_n/∂y_n)^T λ_{n+1},   ∇_p J = Σ_n (∂Φ_n/∂p)^T λ_{n+1},

each product being one ``torch.autograd.grad`` over one re-evaluated step. With differentiable
``t0, t1`` the step also depends on them (``h = (t1 - t0)/N``, ``t_n = t0 + n h``) and they are
differentiated like ``p``: ``∇_{t0,t1} J = Σ_n (∂Φ_n/∂(t0,t1))^T λ_{n+1}``, exact as well.
Forward keeps only the input ``y_0`` (no graph); backward re-runs the steps without a graph,
holding the states chosen by the binomial schedule (:mod:`.schedule`), so memory is
O(one step's graph + c states).
"""
from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from ..solvers import State, integrate
from .recompute import RngLog, autocast_replay, frozen_norm_statistics
from .schedule import Advance, Free, Reverse, first_sweep, revolve_schedule, slots_for
from .base import GradMode, SolveSpec, Times, mode_option


@dataclass(frozen=True)
class Checkpoint(GradMode):
    """The exact discrete adjoint with checkpointing (ANODE).

    Args:
        checkpoints: ``None`` keeps every step state during backward (fewest recomputed
            steps: ``steps - 1``); an int ``c >= 0`` holds at most ``c`` states placed by the
            binomial (revolve) schedule, recomputing ``t(steps, c)`` steps.
        keep_forward: keep, from the forward pass, the states backward's first sweep would
            recompute (every state for ``checkpoints=None``, the ``c`` checkpoints otherwise):
            about ``steps`` fewer step evaluations in backward, at the price of holding those
            states (one state tensor each) from forward until backward.
        preserve_rng: re-draw the forward pass's random numbers (dropout) in recomputed steps.
    """

    checkpoints: Optional[int] = mode_option(None, "null | integer >= 0",
                                             "checkpoint slots per block in backward; null = every step state")
    keep_forward: bool = mode_option(False, "true | false", "keep the forward pass's states for backward instead of "
                                     "recomputing them (~1.4x instead of ~1.7x backprop's step time); holds per block "
                                     "min(Nt - 1, checkpoints) extra states of z's size from forward to backward")
    preserve_rng: bool = mode_option(True, "true | false", "replay the forward pass's random numbers (dropout) in "
                                     "recomputed steps")
    name = "checkpoint"

    def __post_init__(self) -> None:
        c = self.checkpoints
        if c is not None and (isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0):
            raise ValueError(f"Checkpoint(checkpoints=...) must be None (keep every state) or an int >= 0, got {c!r}")
        for flag in ("keep_forward", "preserve_rng"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"Checkpoint({flag}=...) must be a bool, got {getattr(self, flag)!r}")
        if c is not None:
            object.__setattr__(self, "checkpoints", int(c))

    def solve(self, spec: SolveSpec, y0: State, times: Times, params: tuple[Tensor, ...]) -> State:
        return _CheckpointAdjoint.apply(spec, self, *y0, *times, *params)


@lru_cache(maxsize=256)
def _schedule(n: int, c: int) -> tuple:
    """The revolve schedule of ``n`` steps with ``c`` slots (computed once per (n, c))."""
    return tuple(revolve_schedule(n, c))


@lru_cache(maxsize=256)
def _kept_states(n: int, c: int) -> frozenset:
    return frozenset(first_sweep(n, c))


class _CheckpointAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SolveSpec, mode: Checkpoint, *inputs: Tensor) -> State:
        y0, times, _ = spec.split(inputs)
        rng = RngLog.for_tensors(y0) if mode.preserve_rng else None
        keep = _kept_states(spec.steps, slots_for(spec.steps, mode.checkpoints)) if mode.keep_forward else ()
        kept: dict[int, State] = {}
        user_callback = spec.callback

        def callback(n, y):
            if n in keep:
                kept[n] = y
            if user_callback is not None:
                user_callback(n, y)

        with torch.no_grad():
            y1 = integrate(spec.func, y0, *spec.grid(times), spec.steps, spec.tableau,
                           callback=callback if keep or user_callback is not None else None,
                           before_step=rng.record if rng else None,
                           times=None if times else spec.stage_times(y0[0]))
        spec.stats.forward_evals += spec.steps * spec.tableau.stages
        # no random numbers drawn in the forward pass: nothing to replay in backward
        ctx.spec, ctx.mode, ctx.rng = spec, mode, rng if rng is not None and rng.drew() else None
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
        del saved, flat
        with rng.forked() if rng else contextlib.nullcontext(), frozen_norm_statistics(spec.module), ctx.autocast():
            if torch.is_grad_enabled():  # create_graph=True: differentiate the gradient itself
                grads = _unrolled_vjp(spec, rng, inputs, grad_y1)
            else:
                grads = _reverse_sweep(spec, ctx.mode, rng, inputs, grad_y1, kept, ctx.needs_input_grad[2:])
        return (None, None, *grads)


def _step(spec: SolveSpec, rng: Optional[RngLog], n: int, y: State, times: Times) -> State:
    if rng is not None:
        rng.restore(n)
    return spec.step(n, y, times)


def _accumulate(acc: list[Optional[Tensor]], grads) -> None:
    """``acc[i] += grads[i]`` out of place: the sum is a new tensor, so a gradient autograd
    returns that aliases the incoming adjoint (e.g. when a step's weight ``h b_i`` is 1) is
    never written; one ``_foreach_add`` for all the running sums after the first step."""
    pairs = [i for i, g in enumerate(grads) if g is not None and acc[i] is not None]
    if pairs:
        sums = torch._foreach_add([acc[i] for i in pairs], [grads[i] for i in pairs])
        for i, v in zip(pairs, sums):
            acc[i] = v
    for i, g in enumerate(grads):
        if g is not None and acc[i] is None:
            acc[i] = g


def _reverse_sweep(spec: SolveSpec, mode: Checkpoint, rng, inputs, grad_y1, kept, needs):
    """The discrete adjoint, one vector–Jacobian product per step, states from the schedule
    (those in ``kept``, from the forward pass, are not recomputed). ``needs`` tells which inputs
    want a gradient: the adjoint of an input state that wants none is not formed in step 0."""
    y0, times, params = spec.split(inputs)
    stats, stages = spec.stats, spec.tableau.stages
    c = slots_for(spec.steps, mode.checkpoints)
    want = [t for t in (*times, *params) if t.requires_grad]  # times and params reached by the VJPs
    want_y0 = tuple(bool(r) for r in needs[:spec.n_state])
    t_det = tuple(t.detach() for t in times)
    acc: list[Optional[Tensor]] = [None] * len(want)
    lam = tuple(grad_y1)
    held = {0: tuple(y.detach() for y in y0)}
    stored: set[int] = set()  # indices occupying a checkpoint slot
    for action in _schedule(spec.steps, c):
        if isinstance(action, Reverse):
            lam = _reverse_step(spec, rng, action.step, held[action.step], times, want, lam, acc,
                                want_y0 if action.step == 0 else None)
            stats.backward_steps += 1
            stats.backward_evals += stages
        elif isinstance(action, Advance):
            if action.stop in kept:  # computed by the forward pass: nothing to recompute
                held[action.stop] = kept.pop(action.stop)
            else:
                y = held[action.start]
                with torch.no_grad():
                    for n in range(action.start, action.stop):
                        y = _step(spec, rng, n, y, t_det)
                held[action.stop] = y
                del y
                k = action.stop - action.start
                stats.recomputed_steps += k
                stats.backward_steps += k
                stats.backward_evals += k * stages
            if action.store:
                stored.add(action.stop)
                stats.checkpoints_held = max(stats.checkpoints_held, len(stored))
        else:
            assert isinstance(action, Free)
            del held[action.index]
            stored.discard(action.index)
    it = iter(acc)
    grads_tp = [next(it) if t.requires_grad else None for t in (*times, *params)]
    grads_y = [l if w else None for l, w in zip(lam, want_y0)]
    return (*grads_y, *grads_tp)


def _reverse_step(spec, rng, n, y, times, want, lam, acc, want_y=None) -> State:
    """λ_n = (∂Φ_n/∂y_n)^T λ_{n+1}; adds (∂Φ_n/∂w)^T λ_{n+1} into ``acc`` for ``w`` in ``want``.
    Only the returned adjoint outlives the call (the step's graph and output are freed here).
    ``want_y`` (step 0): which entries of λ_0 are wanted; the others are not formed (None)."""
    n_want_t = sum(1 for t in times if t.requires_grad)
    with torch.enable_grad():
        if want_y is None:
            yn = tuple(v.detach().requires_grad_(True) for v in y)
            wrt_y = yn
        else:
            yn = tuple(v.detach().requires_grad_(w) for v, w in zip(y, want_y))
            wrt_y = tuple(v for v, w in zip(yn, want_y) if w)
        leaves = tuple(t.detach().requires_grad_(True) for t in times)
        wrt = (*wrt_y, *(t for t, src in zip(leaves, times) if src.requires_grad), *want[n_want_t:])
        out = _step(spec, rng, n, yn, leaves)
        g = torch.autograd.grad(out, wrt, grad_outputs=lam, allow_unused=True)
    del out
    _accumulate(acc, g[len(wrt_y):])
    if want_y is None:
        return tuple(torch.zeros_like(v) if gi is None else gi for gi, v in zip(g, yn))
    it = iter(g[:len(wrt_y)])
    return tuple((lambda gi: torch.zeros_like(v) if gi is None else gi)(next(it)) if w else None
                 for v, w in zip(yn, want_y))


def _unrolled_vjp(spec: SolveSpec, rng, inputs, grad_y1):
    """Double backward: rebuild the unrolled graph once and differentiate it with
    ``create_graph=True`` (exact, O(steps) memory for this rarer case)."""
    y0, times, _ = spec.split(inputs)
    with torch.enable_grad():
        y1 = integrate(spec.func, y0, *spec.grid(times), spec.steps, spec.tableau,
                       before_step=rng.restore if rng else None)
        wrt = [t for t in inputs if t.requires_grad]
        g = torch.autograd.grad(y1, wrt, grad_outputs=grad_y1, create_graph=True, allow_unused=True)
    spec.stats.backward_steps += spec.steps
    spec.stats.backward_evals += spec.steps * spec.tableau.stages
    it = iter(g)
    return tuple(next(it) if t.requires_grad else None for t in inputs)
