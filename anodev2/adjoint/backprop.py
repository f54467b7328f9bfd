"""grad="backprop": autograd through the unrolled solver loop (the reference gradient)."""
from __future__ import annotations

from torch import Tensor

from ..solvers import integrate
from .spec import SolveSpec


def solve_backprop(spec: SolveSpec, y0: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Integrate under the ambient grad mode; memory O(steps * stages) activations."""
    spec.stats.forward_evals += spec.steps * spec.tableau.stages
    return integrate(spec.func, y0, spec.t0, spec.h, spec.steps, spec.tableau, callback=spec.callback)
