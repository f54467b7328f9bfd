"""A record of the work done by one solve, threaded through forward and backward.

Pass a :class:`SolveStats` to :func:`anodev2.odeint` (``stats=``); the forward pass
fills the forward fields and the backward pass (if any) the backward ones, so
recompute counts can be checked against the binomial optimum and reported.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass
class SolveStats:
    """Counts for one call of :func:`anodev2.odeint` (reset at the start of each call).

    Attributes:
        method, grad, steps, stages, checkpoints: the solve's settings
            (``checkpoints`` is the slot count used by the schedule; ``None`` = every state).
        forward_evals: evaluations of ``func`` in the forward pass (= steps * stages).
        backward_evals: evaluations of ``func`` during backward (recomputation and reversal,
            or the augmented reverse-time solve for ``backsolve``).
        backward_steps: RK step evaluations during backward; for ``checkpoint`` this is
            ``steps + t(steps, c)`` (DESIGN.md, binomial optimum).
        recomputed_steps: steps re-run without a graph during backward (= ``t(steps, c)``).
        checkpoints_held: peak number of intermediate states stored at once during backward
            (the block input is always kept and is not counted).
    """

    method: str = ""
    grad: str = ""
    steps: int = 0
    stages: int = 0
    checkpoints: Optional[int] = None
    forward_evals: int = 0
    backward_evals: int = 0
    backward_steps: int = 0
    recomputed_steps: int = 0
    checkpoints_held: int = 0

    def reset(self, *, method: str, grad: str, steps: int, stages: int, checkpoints: Optional[int]) -> None:
        """Clear all counts and record the settings of a new solve."""
        self.__init__(method=method, grad=grad, steps=steps, stages=stages, checkpoints=checkpoints)

    def as_dict(self) -> dict:
        return asdict(self)
