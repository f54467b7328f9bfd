"""Butcher tableaux of the fixed-step explicit Runge–Kutta methods.

A new explicit method is one :class:`ButcherTableau` added to :data:`TABLEAUX`;
the stepper in :mod:`anodev2.solvers.stepper` is written once for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit RK scheme: stages ``k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j)``,
    update ``y + h Σ_i b_i k_i``.

    ``a`` is strictly lower triangular and stored as rows of length ``i`` (row 0 empty).
    ``order`` is the classical order of accuracy, checked empirically in the tests.
    """

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError(f"tableau {self.name!r}: a, b, c must describe {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name!r}: row {i} of a must have {i} entries (explicit method)")
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"tableau {self.name!r}: row {i} of a must sum to c[{i}]")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"tableau {self.name!r}: weights b must sum to 1")

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = ButcherTableau("euler", 1, a=((),), b=(1.0,), c=(0.0,))
MIDPOINT = ButcherTableau("midpoint", 2, a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5))
HEUN = ButcherTableau("heun", 2, a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0))
RK4 = ButcherTableau(
    "rk4",
    4,
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 0.5, 0.5, 1.0),
)

#: Registry of method names (and aliases) to tableaux.
TABLEAUX: dict[str, ButcherTableau] = {
    "euler": EULER,
    "midpoint": MIDPOINT,
    "rk2": MIDPOINT,
    "heun": HEUN,
    "rk4": RK4,
}


def get_tableau(method: str) -> ButcherTableau:
    """Look up a method by name; raises ValueError naming the allowed methods."""
    if not isinstance(method, str) or method not in TABLEAUX:
        raise ValueError(f"method={method!r} is not supported; allowed: {sorted(TABLEAUX)}")
    return TABLEAUX[method]
