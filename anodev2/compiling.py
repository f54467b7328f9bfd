"""``anodev2.compile``: torch.compile for networks with ODE blocks.

``torch.compile(model)`` alone traces a Backprop block like any layer (the fixed-step loop
unrolls into the network's graph, no graph break), but it cannot reach f inside an adjoint
mode: the checkpointed (and backsolve) adjoint is a custom autograd Function whose backward
re-evaluates f step by step from Python while autograd runs, after the compiled forward has
returned. :func:`compile` therefore also compiles each ODE block's vector field on its own
(:meth:`anodev2.ODEBlock.compile_field`), so that every evaluation of f -- forward pass,
recomputed steps, reversed steps -- runs compiled, and the network around the blocks is
compiled as usual (one graph break at each adjoint-mode block, where the solve is left to
Python).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adjoint import Backprop
from .block import ODEBlock


def compile(model: nn.Module, *, fields: bool = True, **options: Any) -> nn.Module:
    """Compile ``model`` (``torch.compile(model, **options)``) and, with ``fields=True``, the
    vector field of every :class:`~anodev2.ODEBlock` inside it whose gradient mode is not
    Backprop (a Backprop block is traced into the network's graph and needs nothing more).
    ``options`` go to every ``torch.compile`` call (``backend``, ``mode``, ``dynamic``, ...).
    Returns the compiled model (the module itself is changed only by the fields it compiles:
    :meth:`~anodev2.ODEBlock.uncompile_field` undoes that)."""
    if fields:
        for m in model.modules():
            if isinstance(m, ODEBlock) and not isinstance(m.grad_mode, Backprop):
                m.compile_field(**options)
    return torch.compile(model, **options)
