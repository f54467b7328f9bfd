"""The one registry of gradient-mode shorthands: ``grad="checkpoint"`` is ``Checkpoint()``."""
from __future__ import annotations

import dataclasses
from typing import Any, Union

from .backprop import Backprop
from .backsolve import Backsolve
from .checkpoint import Checkpoint
from .base import GradMode

#: shorthand name -> mode class (constructed with its default options).
GRAD_MODES: dict[str, type[GradMode]] = {cls.name: cls for cls in (Backprop, Checkpoint, Backsolve)}

Grad = Union[str, GradMode]


def get_grad_mode(grad: Grad) -> GradMode:
    """Resolve ``grad``: a :class:`GradMode` (returned as is; validated when built) or a
    shorthand in :data:`GRAD_MODES` (that mode with default options)."""
    if isinstance(grad, GradMode):
        return grad
    if not isinstance(grad, str) or grad not in GRAD_MODES:
        raise ValueError(f"grad={grad!r} is not supported; allowed: {list(GRAD_MODES)} or an object "
                         "anodev2.Backprop(), anodev2.Checkpoint(...), anodev2.Backsolve()")
    return GRAD_MODES[grad]()


#: keywords of the API v1 that became options of :class:`Checkpoint`.
CHECKPOINT_OPTIONS: tuple[str, ...] = ("checkpoints", "keep_forward", "preserve_rng")


def reject_loose_options(where: str, options: dict) -> None:
    """Raise a TypeError for keywords ``where`` does not take, telling the new spelling of the
    API v1 keywords ``checkpoints=``, ``keep_forward=``, ``preserve_rng=``."""
    if not options:
        return
    moved = {k: v for k, v in options.items() if k in CHECKPOINT_OPTIONS}
    if moved:
        args = ", ".join(f"{k}={v!r}" for k, v in moved.items())
        raise TypeError(f"{where}() no longer takes {sorted(moved)}: they are options of the gradient mode; "
                        f"write grad=anodev2.Checkpoint({args})")
    raise TypeError(f"{where}() got unexpected keyword argument(s) {sorted(options)}")


def with_checkpoint_options(grad: Grad, **options: Any) -> GradMode:
    """``grad`` with flat checkpoint options applied (for flat configurations such as
    ``models.build(..., grad="checkpoint", checkpoints=2, keep_forward=True)``).

    An option at :class:`Checkpoint`'s default value applies to every mode (so a config's
    ``keep_forward: false`` does not conflict with ``grad: backsolve``); any other value needs a
    checkpoint mode. The options are validated by :class:`Checkpoint` itself.
    """
    unknown = sorted(set(options) - set(CHECKPOINT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown checkpoint option(s) {unknown}; allowed: {list(CHECKPOINT_OPTIONS)}")
    defaults = {f.name: f.default for f in dataclasses.fields(Checkpoint)}
    given = {k: v for k, v in options.items() if v is not defaults[k]}  # defaults are None / bools
    mode = get_grad_mode(grad)
    if not given:
        return mode
    if not isinstance(mode, Checkpoint):
        args = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(f"{args} only applies to grad='checkpoint', got grad={mode.name!r}")
    return dataclasses.replace(mode, **given)
