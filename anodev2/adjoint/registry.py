"""The one registry of gradient modes: name -> class, and the one resolver of every spelling.

A gradient mode is written in three ways, all resolved by :func:`get_grad_mode`:

* an object: ``anodev2.Checkpoint(checkpoints=2)`` (returned as is; validated when built);
* a name: ``"checkpoint"`` (that mode with its default options);
* a mapping, the config spelling: ``{"mode": "checkpoint", "checkpoints": 2}``
  (``GradMode.as_dict()`` writes it back). ``mode`` may be left out where a caller has a
  default mode (a model variant's), so ``{"checkpoints": 2}`` adjusts that default.

Adding a mode is one class (a frozen dataclass subclassing :class:`GradMode`, its options
declared with :func:`~anodev2.adjoint.base.mode_option`) and one entry in :data:`GRAD_MODES`.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from .backprop import Backprop
from .backsolve import Backsolve
from .base import GradMode
from .checkpoint import Checkpoint

#: name -> mode class (constructed with its default options for the bare name).
GRAD_MODES: dict[str, type[GradMode]] = {cls.name: cls for cls in (Backprop, Checkpoint, Backsolve)}

#: what every ``grad=`` argument accepts.
Grad = Union[str, GradMode, Mapping[str, Any]]


def _allowed_modes() -> str:
    return " | ".join(GRAD_MODES)


def get_grad_mode(grad: Grad, *, default_mode: Optional[str] = None, where: str = "grad") -> GradMode:
    """Resolve ``grad`` (an object, a name or a mapping ``{"mode": name, **options}``) to a :class:`GradMode`.

    Args:
        default_mode: the mode a mapping without ``"mode"`` means (None: ``"mode"`` is required).
        where: how the caller names the argument in error messages (``"model.grad"`` in a config).
    Raises:
        ValueError / TypeError naming ``where``, the value and what is allowed (an unknown mode,
        an option the mode does not have, an option value the mode refuses).
    """
    if isinstance(grad, GradMode):
        return grad
    if isinstance(grad, str):
        if grad not in GRAD_MODES:
            raise ValueError(f"{where}={grad!r} is not allowed; allowed: {_allowed_modes()}, a mapping "
                             f"{{'mode': NAME, OPTION: VALUE}} or an object anodev2.Backprop(), "
                             f"anodev2.Checkpoint(...), anodev2.Backsolve()")
        return GRAD_MODES[grad]()
    if not isinstance(grad, Mapping):
        raise TypeError(f"{where} must be a mode name ({_allowed_modes()}), a mapping {{'mode': NAME, OPTION: VALUE}} "
                        f"or a GradMode object, got {type(grad).__name__}")
    options = dict(grad)
    name = options.pop("mode", default_mode)
    if name is None:
        raise ValueError(f"{where}={dict(grad)!r} needs 'mode'; allowed: {_allowed_modes()}")
    if not isinstance(name, str) or name not in GRAD_MODES:
        raise ValueError(f"{where}.mode={name!r} is not allowed; allowed: {_allowed_modes()}")
    cls = GRAD_MODES[name]
    specs = cls.option_specs()
    for key, value in options.items():
        if key not in specs:
            allowed = ", ".join(specs) if specs else f"no options (mode {name!r} has none)"
            raise ValueError(f"{where}.{key} is not an option of grad mode {name!r}; allowed: {allowed}")
        try:
            cls(**{key: value})
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{key}={value!r} is not allowed for grad mode {name!r}; "
                             f"allowed: {specs[key].allowed}") from None
    return cls(**options)


#: keywords of the API v1 that became options of :class:`Checkpoint`.
CHECKPOINT_OPTIONS: tuple[str, ...] = tuple(Checkpoint.option_specs())


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
