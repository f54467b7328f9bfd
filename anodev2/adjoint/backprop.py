"""grad="backprop": autograd through the unrolled solver loop (the reference gradient)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..solvers import State, integrate
from .base import GradMode, SolveSpec, Times


@dataclass(frozen=True)
class Backprop(GradMode):
    """Differentiate by autograd through every step: the reference gradient, fastest
    backward, memory O(steps * stages) activations. No options."""

    name = "backprop"

    def solve(self, spec: SolveSpec, y0: State, times: Times, params: tuple[Tensor, ...]) -> State:
        spec.stats.forward_evals += spec.steps * spec.tableau.stages
        return integrate(spec.func, y0, *spec.grid(times), spec.steps, spec.tableau, callback=spec.callback)
