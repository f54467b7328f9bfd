"""Gradient modes: backprop (reference), checkpointed discrete adjoint, backsolve (baseline),
as objects (``Checkpoint(checkpoints=4)``) or shorthand names (``"checkpoint"``)."""
from .backprop import Backprop
from .backsolve import Backsolve
from .checkpoint import Checkpoint
from .registry import (CHECKPOINT_OPTIONS, GRAD_MODES, Grad, get_grad_mode, reject_loose_options,
                    with_checkpoint_options)
from .recompute import frozen_norm_statistics
from .schedule import binomial_cost, first_sweep, optimal_split, revolve_schedule, slots_for
from .base import GradMode, SolveSpec

__all__ = ["Backprop", "Checkpoint", "Backsolve", "GradMode", "Grad", "GRAD_MODES", "get_grad_mode", "with_checkpoint_options",
           "binomial_cost", "first_sweep", "optimal_split", "revolve_schedule", "slots_for"]
