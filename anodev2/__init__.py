"""anodev2: coupled neural ODEs with exact checkpointed discrete adjoints (ANODE / ANODEV2).

Public API: :func:`odeint`, :class:`ODEBlock`, :class:`SolveStats`, the gradient modes
:class:`Backprop`, :class:`Checkpoint`, :class:`Backsolve`, and :class:`ButcherTableau` for
user-defined methods; ``anodev2.compile(model)`` compiles the vector fields of a network's ODE
blocks (left out of ``__all__`` so ``from anodev2 import *`` does not shadow the built-in
``compile``); subpackages ``solvers``, ``adjoint``, ``evolution``, ``models``.
"""
from .adjoint import Backprop, Backsolve, Checkpoint
from .block import ODEBlock
from .compiling import compile
from .odeint import odeint
from .solvers import ButcherTableau
from .stats import SolveStats

__all__ = ["odeint", "ODEBlock", "SolveStats", "Backprop", "Checkpoint", "Backsolve", "ButcherTableau"]
__version__ = "0.2.0"
