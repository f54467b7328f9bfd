"""Fixed-step explicit Runge–Kutta solvers: tableaux and the single stepper."""
from .integrate import StepCallback, integrate
from .stepper import State, VectorField, rk_step
from .tableau import EULER, HEUN, MIDPOINT, RK4, TABLEAUX, ButcherTableau, get_tableau

__all__ = ["ButcherTableau", "TABLEAUX", "get_tableau", "rk_step", "integrate", "StepCallback", "State", "VectorField",
           "EULER", "MIDPOINT", "HEUN", "RK4"]
