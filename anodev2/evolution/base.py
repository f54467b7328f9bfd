"""Weight-evolution base class and the static (q = 0) evolution.

A weight evolution is the right-hand side ``q`` of the weight ODE
``dθ/dt = q(θ, p)`` of an ANODEV2 block (Zhang et al. 2019, arXiv 1906.04596,
Eq. 3): ``forward(t, thetas)`` maps the current evolving weights (one tensor per
target, no batch dim) to their time derivatives. ``p`` are the module's own
parameters (the learned coefficients).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

__all__ = ["WeightEvolution", "StaticEvolution", "safe_key", "check_conv_shapes"]


def safe_key(name: str) -> str:
    """Map a parameter name such as ``"layer1.conv1.weight"`` to a key usable as a
    PyTorch parameter/module name (no ``'.'``): ``"layer1__conv1__weight"``."""
    return name.replace(".", "__")


def _normalise_shapes(target_shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Size]:
    if not isinstance(target_shapes, Mapping):
        raise TypeError(
            "target_shapes must be a mapping {parameter name: shape}, got "
            f"{type(target_shapes).__name__}"
        )
    shapes: dict[str, torch.Size] = {}
    keys: dict[str, str] = {}
    for name, shape in target_shapes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"target_shapes keys must be non-empty str parameter names, got {name!r}")
        try:
            size = torch.Size(shape)
        except (TypeError, ValueError):
            raise TypeError(
                f"target_shapes[{name!r}] must be a torch.Size or a tuple of ints, got {shape!r}"
            ) from None
        key = safe_key(name)
        if key in keys:
            raise ValueError(
                f"target names {keys[key]!r} and {name!r} collide after replacing '.' by '__'"
            )
        keys[key] = name
        shapes[name] = size
    return shapes


def check_conv_shapes(target_shapes: Mapping[str, torch.Size]) -> None:
    """Raise ValueError unless every shape is a 4-D conv weight ``[O, I, kH, kW]`` with
    all sizes >= 1 (kernels need not be square; 1x1 is allowed)."""
    for name, shape in target_shapes.items():
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(
                f"evolution target {name!r} has shape {tuple(shape)}; weight evolution needs a "
                "4-D conv weight [out_channels, in_channels, kH, kW] with all sizes >= 1"
            )


class WeightEvolution(nn.Module):
    """Base class of every time-varying-weight family (see the interface in ``anodev2.evolution``).

    Attributes:
        kind: the registry name (a key of ``anodev2.evolution.EVOLUTIONS``).
        style: how the block uses it -- ``"static"`` (θ constant, nothing integrated), ``"ode"``
            (θ is part of the ODE state, ``forward(t, thetas) = dθ/dt``), ``"explicit"`` (θ(t)
            is a closed-form function of t, :meth:`weights_at_time`; nothing integrated) or
            ``"time_input"`` (f sees t as an extra input channel, :meth:`attach`).
        targets: names of the evolved parameters (relative to ``f``), in order.
        target_shapes: ``{name: torch.Size}`` in the same order.
        is_static: True when θ(t) = θ0 identically (the block may skip all evolution work).
        pieces: explicit families whose θ(t) jumps inside ``[t0, t1]`` (``untied``): the number of
            equal sub-intervals; the block splits its solve there. None otherwise.
        enabled: False inside :meth:`off` (the family's "evolution off" meaning, ``off_meaning``).
        off_meaning: one sentence saying what evolution-off means for this family (None: no switch).

    ``forward(t, thetas)`` (ode style): ``t`` a 0-dim tensor, ``thetas`` a tuple with one tensor
    per target (shape ``target_shapes[name]``); returns a tuple ``dθ/dt`` of the same shapes
    and dtypes. Subclasses implement ``_rates(t, thetas)``.
    """

    kind: str = "base"
    style: str = "ode"
    is_static: bool = False
    pieces = None
    off_meaning = None

    def __init__(self, target_shapes: Mapping[str, Sequence[int]]):
        super().__init__()
        shapes = _normalise_shapes(target_shapes)
        self.targets: tuple[str, ...] = tuple(shapes)
        self.target_shapes: dict[str, torch.Size] = shapes
        self.enabled = True

    # --- evolution off ------------------------------------------------------------------
    @contextlib.contextmanager
    def off(self) -> Iterator["WeightEvolution"]:
        """Within the context the family is switched off (``off_meaning`` says what that means;
        every family: the block's f then uses its stored parameters θ0, except untied: piece 0 =
        θ0, and time_input: t frozen at t0). Raises for a family without a switch."""
        if self.off_meaning is None:
            raise ValueError(f"evolution kind {self.kind!r} has no evolution-off switch")
        before = self.enabled
        self.enabled = False
        try:
            yield self
        finally:
            self.enabled = before

    def check_span(self, t0: float, t1: float, steps: int) -> None:
        """Raise ValueError if this evolution cannot serve a block on ``[t0, t1]`` with ``steps``."""

    def forward(self, t: torch.Tensor, thetas: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if not isinstance(thetas, (tuple, list)):
            raise TypeError(
                f"thetas must be a tuple of tensors (one per target), got {type(thetas).__name__}"
            )
        if len(thetas) != len(self.targets):
            raise ValueError(
                f"thetas has {len(thetas)} tensors but the evolution has {len(self.targets)} "
                f"targets {self.targets}"
            )
        for name, theta in zip(self.targets, thetas):
            if not isinstance(theta, torch.Tensor):
                raise TypeError(f"theta for target {name!r} must be a Tensor, got {type(theta).__name__}")
            if theta.shape != self.target_shapes[name]:
                raise ValueError(
                    f"theta for target {name!r} has shape {tuple(theta.shape)}, expected "
                    f"{tuple(self.target_shapes[name])}"
                )
        if not self.enabled:
            return tuple(torch.zeros_like(theta) for theta in thetas)
        return self._rates(t, tuple(thetas))

    def _rates(self, t: torch.Tensor, thetas: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def prepare(self, dtype: torch.dtype = torch.float32) -> Optional[tuple[torch.Tensor, ...]]:
        """The work of ``q`` that depends on the coefficients only, done once per solve (ode kinds
        whose ``q`` does not depend on t): tensors for :meth:`rates_prepared`, through which the
        gradient reaches the coefficients (an ODE block hands them to the adjoint in place of
        the evolution's parameters). None (the default): no prepared form; the block calls
        ``forward(t, thetas)`` at every evaluation."""
        return None

    def rates_prepared(self, thetas: tuple[torch.Tensor, ...],
                       prepared: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``q(θ)`` from :meth:`prepare`'s tensors, equal to ``forward(t, thetas)`` bit for bit,
        without ``forward``'s argument checks (the caller, an ODE block, passes one tensor per
        target with its shape) and without the evolution-off switch (the block handles it)."""
        raise NotImplementedError(f"evolution kind {self.kind!r} has no prepared form (prepare() is None)")

    def coefficients(self) -> dict[str, torch.Tensor]:
        """Detached effective coefficients (exactly the values the forward uses):
        ``{"<target>/<term>": Tensor}``."""
        return {}

    def bounds(self) -> dict[str, tuple[float, float]]:
        """``{term: (low, high)}``: the closed interval each coefficient term is kept in."""
        return {}

    def set_coefficients(self, mapping: Mapping[str, object]) -> None:
        """Set effective coefficients exactly from ``{"<target>/<term>": value}``; a kind without
        coefficients accepts only an empty mapping."""
        if mapping:
            raise ValueError(f"evolution kind {self.kind!r} has no coefficients; got keys {sorted(mapping)}")

    def parameter_count(self) -> int:
        """Number of learned scalars the family adds to the block (its own parameters)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, targets={self.targets}"


class StaticEvolution(WeightEvolution):
    """``q = 0``: weights stay constant in time (plain Neural ODE / ANODE block).

    ``is_static`` is True, so an ODE block skips integrating θ altogether; ``forward``
    still returns zeros so that the evolution is usable as an ordinary ``q``.
    Has no parameters. Targets must be 4-D conv weights, as for every kind.
    """

    kind = "static"
    style = "static"
    is_static = True

    def __init__(self, target_shapes: Mapping[str, Sequence[int]]):
        super().__init__(target_shapes)
        check_conv_shapes(self.target_shapes)

    def _rates(self, t: torch.Tensor, thetas: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros_like(theta) for theta in thetas)
