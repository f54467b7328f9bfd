"""What a gradient mode needs to know about one solve."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..solvers import ButcherTableau, StepCallback, VectorField, rk_step
from ..stats import SolveStats


@dataclass
class SolveSpec:
    """One fixed-step solve: ``steps`` steps of size ``h = (t1 - t0) / steps`` of ``tableau``.

    ``func`` takes and returns tuples of tensors (normalised by :func:`anodev2.odeint`);
    ``module`` is the ``nn.Module`` behind it, if any (its BatchNorm statistics are frozen
    during recomputation); ``n_state`` is the number of state tensors among the inputs of the
    autograd Functions, the rest being parameters. ``keep_forward`` (checkpoint mode) keeps the
    states of the schedule's first sweep from the forward pass instead of recomputing them.
    """

    func: VectorField
    tableau: ButcherTableau
    t0: float
    t1: float
    steps: int
    n_state: int
    stats: SolveStats
    module: Optional[nn.Module] = None
    checkpoints: Optional[int] = None
    preserve_rng: bool = True
    keep_forward: bool = False
    callback: Optional[StepCallback] = None

    @property
    def h(self) -> float:
        return (self.t1 - self.t0) / self.steps

    def step(self, n: int, y: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Step ``n`` (from ``t_n`` to ``t_{n+1}``) of the solve."""
        return rk_step(self.func, self.t0 + n * self.h, y, self.h, self.tableau)
