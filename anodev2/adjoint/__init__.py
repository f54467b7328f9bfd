"""Gradient modes: backprop (reference), checkpointed discrete adjoint, backsolve (baseline)."""
from .backprop import solve_backprop
from .backsolve import solve_backsolve
from .checkpoint import solve_checkpoint
from .recompute import frozen_norm_statistics
from .schedule import (Advance, Free, Reverse, binomial_cost, first_sweep, optimal_split, revolve_schedule,
                       slots_for)
from .spec import SolveSpec

GRAD_MODES = ("backprop", "checkpoint", "backsolve")

__all__ = ["GRAD_MODES", "SolveSpec", "solve_backprop", "solve_checkpoint", "solve_backsolve",
           "binomial_cost", "first_sweep", "optimal_split", "revolve_schedule", "slots_for", "Advance", "Reverse", "Free",
           "frozen_norm_statistics"]
