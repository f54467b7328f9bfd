"""Fixed-step explicit Runge–Kutta solvers: tableaux and the single stepper."""
from .integrate import StepCallback, integrate
from .stepper import State, Time, VectorField, rk_step, stage_times
from .tableau import EULER, HEUN, MIDPOINT, RK4, TABLEAUX, ButcherTableau, Method, get_tableau

__all__ = ["ButcherTableau", "Method", "TABLEAUX", "get_tableau", "rk_step", "stage_times", "integrate", "StepCallback", "State",
           "Time", "VectorField", "EULER", "MIDPOINT", "HEUN", "RK4"]
