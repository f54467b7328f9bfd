"""Gradient modes: backprop (reference), checkpointed discrete adjoint, backsolve (baseline),
as objects (``Checkpoint(checkpoints=4)``), names (``"checkpoint"``) or config mappings
(``{"mode": "checkpoint", "checkpoints": 4}``), all resolved by :func:`get_grad_mode` (``registry.py``)."""
from .backprop import Backprop
from .backsolve import Backsolve
from .checkpoint import Checkpoint
from .registry import CHECKPOINT_OPTIONS, GRAD_MODES, Grad, get_grad_mode, reject_loose_options
from .recompute import frozen_norm_statistics
from .schedule import binomial_cost, first_sweep, optimal_split, revolve_schedule, slots_for
from .base import GradMode, OptionSpec, SolveSpec

__all__ = ["Backprop", "Checkpoint", "Backsolve", "GradMode", "OptionSpec", "Grad", "GRAD_MODES", "get_grad_mode",
           "binomial_cost", "first_sweep", "optimal_split", "revolve_schedule", "slots_for"]
