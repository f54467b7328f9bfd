"""What a gradient mode needs to know about one solve, and the interface every mode implements."""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..solvers import ButcherTableau, State, StepCallback, Time, VectorField, rk_step, stage_times
from ..stats import SolveStats

#: ``(t0, t1)`` as tensors when the gradient with respect to the interval is wanted, else ``()``.
Times = tuple[Tensor, ...]


@dataclass
class SolveSpec:
    """One fixed-step solve: ``steps`` steps of size ``h = (t1 - t0) / steps`` of ``tableau``.

    ``func`` takes and returns tuples of tensors (normalised by :func:`anodev2.odeint`);
    ``module`` is the ``nn.Module`` behind it, if any (its BatchNorm statistics are frozen
    during recomputation); ``n_state`` is the number of state tensors among the inputs of the
    autograd Functions. Those inputs are laid out ``(*y0, *times, *params)``, where ``times``
    is ``(t0, t1)`` as tensors if ``time_grad`` (gradients with respect to the interval are
    wanted), else empty.
    """

    func: VectorField
    tableau: ButcherTableau
    t0: float
    t1: float
    steps: int
    n_state: int
    stats: SolveStats
    module: Optional[nn.Module] = None
    callback: Optional[StepCallback] = None
    time_grad: bool = False

    @property
    def h(self) -> float:
        return (self.t1 - self.t0) / self.steps

    def split(self, inputs: tuple[Tensor, ...]) -> tuple[State, Times, tuple[Tensor, ...]]:
        """``(y0, times, params)`` of the autograd Functions' flat inputs."""
        k, m = self.n_state, self.n_state + (2 if self.time_grad else 0)
        return tuple(inputs[:k]), tuple(inputs[k:m]), tuple(inputs[m:])

    def grid(self, times: Times = ()) -> tuple[Time, Time]:
        """``(t0, h)``: floats, or 0-dim float64 tensors in the graph of ``times`` when given
        (``h = (t1 - t0) / steps``, ``t_n = t0 + n h``: the grid is a function of t0 and t1)."""
        if not times:
            return self.t0, self.h
        t0, t1 = (t.reshape(()).to(torch.float64) for t in times)
        return t0, (t1 - t0) / self.steps

    def stage_times(self, like: Tensor):
        """The solve's stage times as tensors (:func:`anodev2.solvers.stage_times`), made once per
        solve and shared by the forward pass, recomputed and reversed steps."""
        table = self.__dict__.get("_stage_times")
        if table is None:
            table = self._stage_times = stage_times(self.t0, self.h, self.steps, self.tableau, like)
        return table

    def step(self, n: int, y: State, times: Times = ()) -> State:
        """Step ``n`` (from ``t_n`` to ``t_{n+1}``) of the solve."""
        t0, h = self.grid(times)
        return rk_step(self.func, t0 + n * h, y, h, self.tableau, None if times else self.stage_times(y[0])[n])


class OptionSpec(NamedTuple):
    """One option of a gradient mode, for error messages and ``--help``."""
    default: Any
    allowed: str  # what a user may write, e.g. "null | integer >= 0"
    help: str


def mode_option(default: Any, allowed: str, help: str) -> Any:
    """A dataclass field of a gradient mode, with what it allows and means (see :meth:`GradMode.option_specs`)."""
    return dataclasses.field(default=default, metadata={"allowed": allowed, "help": help})


class GradMode(abc.ABC):
    """How :func:`anodev2.odeint` differentiates a solve. Implementations are small frozen
    dataclasses that validate their options once, on construction, and own their ``solve``.
    A mode's options are its dataclass fields (declared with :func:`mode_option`); a mode with
    options is written ``{"mode": name, **options}`` in configs (:meth:`as_dict`,
    :func:`anodev2.adjoint.get_grad_mode`)."""

    #: the shorthand string that resolves to this mode (``grad="checkpoint"``).
    name: ClassVar[str]

    @classmethod
    def option_specs(cls) -> dict[str, OptionSpec]:
        """``{option: OptionSpec(default, allowed, help)}`` of this mode (empty: no options)."""
        return {f.name: OptionSpec(f.default, f.metadata.get("allowed", ""), f.metadata.get("help", ""))
                for f in dataclasses.fields(cls)}

    def options(self) -> dict[str, Any]:
        """This mode's option values ``{option: value}``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, Any]:
        """``{"mode": name, **options}``: the config spelling, read back by ``get_grad_mode``."""
        return {"mode": self.name, **self.options()}

    @abc.abstractmethod
    def solve(self, spec: SolveSpec, y0: State, times: Times, params: tuple[Tensor, ...]) -> State:
        """Integrate ``y0`` over ``spec`` and return ``y(t1)`` with this mode's backward attached."""
