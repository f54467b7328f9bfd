"""anodev2: coupled neural ODEs with exact checkpointed discrete adjoints (ANODE / ANODEV2).

Public API: :func:`odeint`, :class:`ODEBlock`, :class:`SolveStats`; subpackages
``solvers``, ``adjoint``, ``evolution``, ``models``.
"""
from .block import ODEBlock
from .odeint import odeint
from .stats import SolveStats

__all__ = ["odeint", "SolveStats", "ODEBlock"]
__version__ = "0.1.0"

