"""Explicit-in-time weight families: ``linear``, ``galerkin``, ``untied``.

θ(t) is a closed-form function of t and of ordinary parameters, evaluated directly at every
time ``f`` is evaluated (each RK stage time): **nothing is added to the ODE state**, so the
schedule is exact for any solver and its gradients flow through ordinary parameters in every
gradient mode (backprop, checkpoint, backsolve). ``θ0`` is always the parameter of ``f``
itself, and every family's own parameters start at 0, so a fresh block is exactly ANODE.

* ``linear``:   ``θ(t) = θ0 + (t − t0)·θ1``; θ1 (one per target, shape of θ) starts at 0.
  Off: ``θ(t) = θ0`` (= θ(t0)).
* ``galerkin``: ``θ(t) = θ0 + Σ_{k=1}^{K−1} φ_k(t) α_k`` on ``[t0, t1]`` with ``φ_k`` the Legendre
  polynomials ``P_k(2(t − t0)/(t1 − t0) − 1)`` (``basis="legendre"``) or ``sin/cos(2πm(t − t0)/(t1 − t0))``
  (``basis="fourier"``); ``φ_0 = 1`` carries ``α_0 = θ0``, and every other ``φ_k`` has mean 0 on
  ``[t0, t1]``, so θ0 is the time-average of θ(t). Depth-variant layers of Massaroli et al. 2020
  and Stateful ODE-Nets (Queiruga et al. 2021). Off: ``θ(t) = θ0`` (the time-average).
* ``untied``:   piecewise-constant weights on ``pieces`` equal sub-intervals (default: one per
  solver step, the discrete-ResNet limit): ``θ_k = θ0 + δ_k`` with ``δ_0 ≡ 0`` and ``δ_k``
  (k >= 1) starting at 0. The block splits its solve at the piece boundaries, so every RK
  stage of a step uses that step's piece -- including the stage at the step's end time.
  Off: every piece uses θ0 (= piece 0).

Interface: ``weights_at_time(t, base, piece=None) -> tuple of θ(t)`` (``base``: the θ0 tensors,
in target order; ``piece``: the piece index for ``untied``, else ignored).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from .base import WeightEvolution, safe_key

__all__ = ["WeightSchedule", "LinearSchedule", "GalerkinSchedule", "UntiedSchedule", "galerkin_basis", "set_own"]


def _zeros(shape) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape))


def set_own(evo: WeightEvolution, mapping: Mapping[str, object], own: Mapping[str, torch.Tensor]) -> None:
    """``set_coefficients`` of families whose coefficients are unbounded parameters."""
    updates = []
    for key, value in mapping.items():
        if key not in own:
            raise ValueError(f"unknown coefficient {key!r} of evolution kind {evo.kind!r}; keys: {sorted(own)}")
        v = torch.as_tensor(value, dtype=torch.float64)
        try:
            v = torch.broadcast_to(v, own[key].shape)
        except RuntimeError:
            raise ValueError(f"coefficient {key!r} needs a number or a tensor of shape {list(own[key].shape)}, "
                             f"got shape {tuple(v.shape)}") from None
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"coefficient {key!r} must be finite")
        updates.append((own[key], v))
    with torch.no_grad():
        for p, v in updates:
            p.copy_(v.to(p.dtype))


class WeightSchedule(WeightEvolution):
    """Base of the explicit families: ``style = "explicit"``, interval ``[t0, t1]``."""

    style = "explicit"

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], t0: float = 0.0, t1: float = 1.0):
        super().__init__(target_shapes)
        if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
            raise ValueError(f"a weight schedule needs a finite interval with t0 != t1, got [{t0}, {t1}]")
        self.t0, self.t1 = float(t0), float(t1)
        self.weights = nn.ParameterDict()

    def check_span(self, t0: float, t1: float, steps: int) -> None:
        if (float(t0), float(t1)) != (self.t0, self.t1):
            raise ValueError(f"evolution kind {self.kind!r} was built for [t0, t1] = [{self.t0}, {self.t1}] but the "
                             f"block integrates [{t0}, {t1}]")

    def _own(self, name: str) -> nn.Parameter:
        return self.weights[safe_key(name)]

    def weights_at_time(self, t: torch.Tensor, base: Sequence[torch.Tensor],
                        piece: Optional[int] = None) -> tuple[torch.Tensor, ...]:
        """θ(t) of every target (same order as ``targets``), given ``base`` = the θ0 tensors."""
        if len(base) != len(self.targets):
            raise ValueError(f"base has {len(base)} tensors but the evolution has {len(self.targets)} targets")
        if not self.enabled:
            return tuple(base)
        return self._at(torch.as_tensor(t), tuple(base), piece)

    def _at(self, t: torch.Tensor, base: tuple[torch.Tensor, ...], piece: Optional[int]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def coefficients(self) -> dict[str, torch.Tensor]:
        """``{"<target>/<part>": Tensor}``: the family's own parameters (detached), as used."""
        return {f"{name}/{self.part}": self._own(name).detach().clone() for name in self.targets
                if self._own(name).numel()}  # untied with one piece has no own parameters

    part = "weights"

    def set_coefficients(self, mapping: Mapping[str, object]) -> None:
        """Set the family's own parameters exactly: ``{"<target>/<part>": tensor of the shape
        :meth:`coefficients` reports, or a number}``; unknown key, wrong shape or non-finite
        value -> ValueError (nothing changed)."""
        set_own(self, mapping, {f"{n}/{self.part}": self._own(n) for n in self.targets})

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, targets={self.targets}, t=[{self.t0}, {self.t1}]"


class LinearSchedule(WeightSchedule):
    """``θ(t) = θ0 + (t − t0)·θ1`` (module docstring). Parameters ``weights[<target>]`` = θ1."""

    kind = "linear"
    part = "slope"
    off_meaning = "θ(t) = θ0 = θ(t0) for all t (slope ignored)"

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], t0: float = 0.0, t1: float = 1.0):
        super().__init__(target_shapes, t0, t1)
        for name, shape in self.target_shapes.items():
            self.weights[safe_key(name)] = _zeros(shape)

    def _at(self, t, base, piece):
        out = []
        for name, theta0 in zip(self.targets, base):
            slope = self._own(name)
            dt = (t - self.t0).to(dtype=theta0.dtype, device=theta0.device)
            out.append(theta0 + dt * slope.to(theta0.dtype))
        return tuple(out)


def galerkin_basis(t: torch.Tensor, count: int, basis: str, t0: float, t1: float) -> torch.Tensor:
    """``[φ_1(t), ..., φ_{count−1}(t)]`` (``φ_0 = 1`` left out) as a 1-D tensor of t's dtype."""
    if basis == "legendre":
        s = 2 * (t - t0) / (t1 - t0) - 1
        values = [torch.ones_like(s), s]
        for k in range(2, count):
            values.append(((2 * k - 1) * s * values[-1] - (k - 1) * values[-2]) / k)
        return torch.stack(values[1:count])
    tau = (t - t0) / (t1 - t0)
    values = []
    for k in range(1, count):
        m = (k + 1) // 2
        values.append(torch.sin(2 * math.pi * m * tau) if k % 2 else torch.cos(2 * math.pi * m * tau))
    return torch.stack(values)


class GalerkinSchedule(WeightSchedule):
    """``θ(t) = θ0 + Σ_{k>=1} φ_k(t) α_k`` (module docstring). Parameters ``weights[<target>]``
    of shape ``[K − 1, *θ.shape]`` (α_1..α_{K−1}); α_0 is θ0 itself.

    Args:
        basis_size: K >= 2, the number of basis functions including the constant.
        basis: "legendre" (default) or "fourier".
    """

    kind = "galerkin"
    part = "alpha"
    off_meaning = "θ(t) = θ0 = α_0, the time-average of θ(t) over [t0, t1], for all t"

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], t0: float = 0.0, t1: float = 1.0,
                 basis_size: int = 3, basis: str = "legendre"):
        super().__init__(target_shapes, t0, t1)
        if isinstance(basis_size, bool) or not isinstance(basis_size, int) or basis_size < 2:
            raise ValueError(f"basis_size must be an int >= 2 (constant + at least one time-varying function), "
                             f"got {basis_size!r}")
        if basis not in ("legendre", "fourier"):
            raise ValueError(f"basis={basis!r} is not allowed; allowed: legendre | fourier")
        self.basis_size, self.basis = basis_size, basis
        for name, shape in self.target_shapes.items():
            self.weights[safe_key(name)] = _zeros((basis_size - 1, *shape))

    def _at(self, t, base, piece):
        phi = galerkin_basis(t.to(torch.float64), self.basis_size, self.basis, self.t0, self.t1)
        out = []
        for name, theta0 in zip(self.targets, base):
            alpha = self._own(name).to(theta0.dtype)
            w = phi.to(dtype=theta0.dtype, device=theta0.device)
            out.append(theta0 + torch.tensordot(w, alpha, dims=1))
        return tuple(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, basis={self.basis!r}, basis_size={self.basis_size}"


class UntiedSchedule(WeightSchedule):
    """Piecewise-constant weights ``θ_k = θ0 + δ_k`` on ``pieces`` equal sub-intervals (module
    docstring). Parameters ``weights[<target>]`` of shape ``[pieces − 1, *θ.shape]`` (δ_1..).

    Args:
        pieces: number of sub-intervals (>= 1); the block's ``steps`` must be a multiple.
    """

    kind = "untied"
    part = "delta"
    off_meaning = "every piece uses θ0 (= piece 0's weights): tied weights"

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], t0: float = 0.0, t1: float = 1.0,
                 pieces: int = 1):
        super().__init__(target_shapes, t0, t1)
        if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
            raise ValueError(f"pieces must be an int >= 1, got {pieces!r}")
        self.pieces = pieces
        for name, shape in self.target_shapes.items():
            self.weights[safe_key(name)] = _zeros((pieces - 1, *shape))

    def check_span(self, t0: float, t1: float, steps: int) -> None:
        super().check_span(t0, t1, steps)
        if steps % self.pieces:
            raise ValueError(f"untied weights with pieces={self.pieces} need steps to be a multiple of {self.pieces} "
                             f"(pieces end on step boundaries), got steps={steps}")

    def piece_of(self, t: float) -> int:
        """The piece holding time ``t`` (right-continuous: a boundary belongs to the later piece;
        ``t1`` to the last)."""
        k = math.floor((float(t) - self.t0) / (self.t1 - self.t0) * self.pieces)
        return min(max(k, 0), self.pieces - 1)

    def _at(self, t, base, piece):
        k = self.piece_of(float(t)) if piece is None else int(piece)
        if not 0 <= k < self.pieces:
            raise ValueError(f"piece {k} out of range for pieces={self.pieces}")
        if k == 0:
            return tuple(base)
        return tuple(theta0 + self._own(name)[k - 1].to(theta0.dtype) for name, theta0 in zip(self.targets, base))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pieces={self.pieces}"
