"""Butcher tableaux of the fixed-step explicit Runge–Kutta methods.

A new explicit method is a value: build a :class:`ButcherTableau` (validated once, on
construction) and pass it as ``method=`` to :func:`anodev2.odeint` or :class:`anodev2.ODEBlock`;
the stepper in :mod:`anodev2.solvers.stepper` is written once for all of them.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Union

#: Absolute tolerance of the consistency and order-condition checks.
TOLERANCE = 1e-12
#: Highest order whose conditions :class:`ButcherTableau` checks (Butcher 2016, Sec. 31).
MAX_CHECKED_ORDER = 4


def _dot(u, v) -> float:
    return math.fsum(x * y for x, y in zip(u, v))


def _order_conditions(a, b, c) -> list[tuple[int, str, float, float]]:
    """``(order, condition, value, required)`` for the rooted trees of order 1..4
    (Hairer, Nørsett & Wanner, Solving ODEs I, Table II.2.1), with ``c = A 1``."""
    s = len(b)
    def mat(v):  # (A v)_i = Σ_{j<i} a_ij v_j
        return [_dot(a[i], v[:i]) for i in range(s)]
    c2 = [x * x for x in c]
    ac = mat(c)
    return [
        (1, "sum(b) = 1", math.fsum(b), 1.0),
        (2, "sum(b c) = 1/2", _dot(b, c), 1 / 2),
        (3, "sum(b c^2) = 1/3", _dot(b, c2), 1 / 3),
        (3, "sum(b A c) = 1/6", _dot(b, ac), 1 / 6),
        (4, "sum(b c^3) = 1/4", _dot(b, [x ** 3 for x in c]), 1 / 4),
        (4, "sum(b c A c) = 1/8", _dot(b, [x * y for x, y in zip(c, ac)]), 1 / 8),
        (4, "sum(b A c^2) = 1/12", _dot(b, mat(c2)), 1 / 12),
        (4, "sum(b A A c) = 1/24", _dot(b, mat(ac)), 1 / 24),
    ]


def _reals(name: str, what: str, values) -> tuple[float, ...]:
    if not isinstance(values, (tuple, list)):
        raise TypeError(f"tableau {name!r}: {what} must be a tuple of real numbers, got {type(values).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise TypeError(f"tableau {name!r}: {what} must hold finite real numbers, got {v!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit RK scheme: stages ``k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j)``,
    update ``y + h Σ_i b_i k_i``.

    ``a`` is the strictly lower triangular part of A, stored as rows of length ``i`` (row 0
    empty). Construction checks, once: the shapes, ``c_i = Σ_j a_ij`` (consistency), and the
    order conditions of every order up to the declared ``order`` (1..4), raising a
    ValueError that names the first condition that fails.
    """

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"ButcherTableau name must be a non-empty str, got {self.name!r}")
        name = self.name
        if isinstance(self.order, bool) or not isinstance(self.order, int) or not 1 <= self.order <= MAX_CHECKED_ORDER:
            raise ValueError(f"tableau {name!r}: order must be an int in 1..{MAX_CHECKED_ORDER} (the orders whose "
                             f"conditions are checked), got {self.order!r}")
        b, c = _reals(name, "b", self.b), _reals(name, "c", self.c)
        if not isinstance(self.a, (tuple, list)):
            raise TypeError(f"tableau {name!r}: a must be a tuple of rows, got {type(self.a).__name__}")
        a = tuple(_reals(name, f"row {i} of a", row) for i, row in enumerate(self.a))
        s = len(b)
        if s == 0 or len(c) != s or len(a) != s:
            raise ValueError(f"tableau {name!r}: a, b, c must describe the same number (>= 1) of stages, "
                             f"got {len(a)} rows of a, {s} entries of b, {len(c)} of c")
        for i, row in enumerate(a):
            if len(row) != i:
                raise ValueError(f"tableau {name!r}: row {i} of a has {len(row)} entries; an explicit method "
                                 f"stores the strictly lower triangular part, {i} entries in row {i}")
            if abs(math.fsum(row) - c[i]) > TOLERANCE:
                raise ValueError(f"tableau {name!r}: c[{i}] = {c[i]!r} but row {i} of a sums to {math.fsum(row)!r}; "
                                 "consistency requires c_i = sum_j a_ij")
        for order, cond, value, required in _order_conditions(a, b, c):
            if order <= self.order and abs(value - required) > TOLERANCE:
                raise ValueError(f"tableau {name!r} declares order {self.order} but fails the order-{order} "
                                 f"condition {cond} (got {value!r})")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)

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

Method = Union[str, ButcherTableau]


def get_tableau(method: Method) -> ButcherTableau:
    """Resolve ``method``: a name in :data:`TABLEAUX` or a :class:`ButcherTableau` (returned
    as is; it was validated when built). Raises ValueError naming the allowed values."""
    if isinstance(method, ButcherTableau):
        return method
    if not isinstance(method, str) or method not in TABLEAUX:
        raise ValueError(f"method={method!r} is not supported; allowed: a name in {sorted(TABLEAUX)} "
                         "or an anodev2.solvers.ButcherTableau")
    return TABLEAUX[method]
