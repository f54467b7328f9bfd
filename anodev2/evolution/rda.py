"""Reaction-diffusion-advection (RDA) weight evolutions.

For a conv weight ``W`` of shape ``[O, I, kH, kW]`` each ``kH x kW`` slice is a field on a grid
of unit cells (see ``operators``):

    q(W) = D ⊙ L W  +  A(a_x, a_y) W  +  r ⊙ tanh(W)

with per-output-channel coefficients ``D, a_x, a_y, r`` (shape ``[O]``, broadcast over
``[O, I, kH, kW]``): ``L`` the zero-flux 5-point Laplacian, ``A`` first-order upwind periodic
advection in flux form with velocity ``(a_x, a_y)``, and a bounded reaction ``r tanh(W)``.

**Stability.** With ``h`` the step of the block's solver, every Euler step of the linear part
is ``W + h(D L + A) W``: its matrix has diagonal ``>= 1 - h(4D + |a_x| + |a_y|)``, non-negative
off-diagonal entries and rows and columns summing to 1 (doubly stochastic). Hence for

    4·D + |a_x| + |a_y| <= 1/h                                                          (*)

each step is a convex combination of a slice's entries (max/min principle, max-norm
non-increasing) that conserves the slice's sum. The defaults ``d_max = 1/8``, ``a_max = 1/4``
give (*) for every ``h <= 1``. The same bound holds for every method of ``anodev2.solvers``
(euler, midpoint/rk2, heun, rk4): each is an s-stage method of order s, so its step matrix is
the truncated Taylor polynomial ``P(hM) = sum_{j<=s} (hM)^j / j!``, whose threshold factor is 1
(Kraaijevanger 1986): ``P`` has non-negative coefficients in ``I + hM``. The reaction is bounded
by ``|r| <= r_max = 1``: ``W + h r tanh(W)`` keeps the sign of ``W`` and ``|W|`` grows by at
most a factor ``1 + h`` for ``h <= 1``.

**Parameterisation.** Coefficients are stored as themselves (identity map: a gradient step of
size ``δ`` moves a coefficient by ``δ`` at every value, no saturated map) and kept inside their
closed bounds by projection: after a parameter changes in place (an optimiser step, detected
through ``Tensor._version``), the next forward clamps it into its bounds before use - projected
gradient descent. Zero is an allowed value of every term and gives ``q ≡ 0`` exactly.

**Cost.** Targets with the same kernel size share one coefficient tensor ``[terms, ΣO]``. Two
small matmuls with fixed stencil matrices (one for the coefficients, one for their absolute
values) fold the coefficients into one ``HW x HW`` operator per output channel; the targets
that also share ``in_channels`` (every target of a ResNet block) are then evolved together by
one concatenation, one batched matmul, one ``tanh`` and one ``addcmul``, whatever their number.

Initialisation: ``init_scale = 0`` (default) starts every coefficient at 0, so an ANODEV2 block
starts as the ANODE block with the same weights and draws nothing from the RNG; ``init_scale >
0`` draws ``D = init_scale·|N(0,1)|`` and ``a, r = init_scale·N(0,1)`` (clamped to the bounds).

The operator of Zhang et al. 2019 (ANODEV2, arXiv 1906.04596, Sec. 3) is not given in print in
closed form; this is our concrete choice (docs/EVOLUTION.md).
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from .base import WeightEvolution, check_conv_shapes
from .operators import STENCILS, stencil_matrices

__all__ = ["RDAEvolution", "RDA_KINDS", "RDA_TERMS", "RDA_OPTIONS", "check_options"]

#: the coefficient terms each RDA-family kind learns, in order.
RDA_TERMS: dict[str, tuple[str, ...]] = {
    "diffusion": ("diffusion",),
    "advection": ("advection_x", "advection_y"),
    "reaction": ("reaction",),
    "rda": ("diffusion", "advection_x", "advection_y", "reaction"),
}
RDA_KINDS: tuple[str, ...] = tuple(RDA_TERMS)

#: keyword options of ``RDAEvolution`` / ``build_evolution`` and their defaults.
RDA_OPTIONS: dict[str, float] = {"d_max": 0.125, "a_max": 0.25, "r_max": 1.0, "init_scale": 0.0}

#: stencil index (in ``operators.STENCILS``) and coefficient of each linear term: (term, |.|?).
_LINEAR: dict[str, tuple[tuple[int, bool], ...]] = {
    "diffusion": ((0, False),),
    "advection_x": ((1, False), (2, True)),
    "advection_y": ((3, False), (4, True)),
}


def check_options(options: Mapping[str, object], terms: Sequence[str] = RDA_TERMS["rda"]) -> dict[str, float]:
    """Validate RDA options for a kind learning ``terms``; return them with defaults filled in.

    Raises ValueError when the bounds break the stability condition (*) for steps ``h <= 1``:
    ``4·d_max + 2·a_max <= 1`` (counting only the terms learned) and ``r_max <= 1``.
    """
    unknown = sorted(set(options) - set(RDA_OPTIONS))
    if unknown:
        raise TypeError(f"unknown weight-evolution option(s) {unknown}; allowed: {sorted(RDA_OPTIONS)}")
    out = dict(RDA_OPTIONS)
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise TypeError(f"option {key} must be a finite real number, got {value!r}")
        out[key] = float(value)
    for key in ("d_max", "a_max", "r_max"):
        if out[key] <= 0:
            raise ValueError(f"{key} must be > 0, got {out[key]}")
    if out["init_scale"] < 0:
        raise ValueError(f"init_scale must be >= 0, got {out['init_scale']}")
    rate = 4 * out["d_max"] * ("diffusion" in terms) + 2 * out["a_max"] * ("advection_x" in terms)
    if rate > 1:
        raise ValueError(
            f"d_max={out['d_max']}, a_max={out['a_max']} give 4·d_max + 2·a_max = {rate:g} > 1 for terms "
            f"{tuple(terms)}: explicit steps h <= 1 would no longer be convex combinations (maximum principle)"
        )
    if out["r_max"] > 1:
        raise ValueError(f"r_max must be <= 1 so that h·|r| <= 1 for steps h <= 1, got {out['r_max']}")
    return out


class _Batch:
    """Targets of one group that also share ``in_channels``: evolved by one batched matmul."""

    def __init__(self, in_channels: int):
        self.in_channels = in_channels
        self.members: list[int] = []  # target indices
        self.sizes: list[int] = []  # their out_channels
        self.channels: list[int] = []  # their channels in the group's coefficient tensor
        self.span: tuple[int, int] | None = None  # (first, stop) when those channels are contiguous


class _Group:
    """Targets sharing one kernel size ``(kH, kW)`` (one coefficient tensor), split into
    batches of equal ``in_channels`` (one matmul each; a ResNet block has a single one)."""

    def __init__(self, key: str, size: tuple[int, int]):
        self.key, self.size = key, size
        self.members: list[int] = []  # target indices
        self.offsets: list[int] = [0]  # channel offsets in the group's coefficient tensor
        self.batches: dict[int, _Batch] = {}  # in_channels -> batch


def _channels(x: torch.Tensor, batch: _Batch, index: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``x`` (indexed by group channel) that belong to ``batch``: a view when they are
    contiguous, else an ``index_select`` with ``index``."""
    if batch.span is not None:
        return x[batch.span[0]:batch.span[1]]
    return x.index_select(0, index)


class RDAEvolution(WeightEvolution):
    """Diffusion / advection / reaction / full RDA evolution of conv weights.

    Args:
        kind: one of ``RDA_KINDS`` = ("diffusion", "advection", "reaction", "rda").
        target_shapes: ``{parameter name: [O, I, kH, kW]}``; names may contain '.'.
        d_max: diffusion bound, ``0 <= D <= d_max`` (default 1/8).
        a_max: advection bound, ``|a_x|, |a_y| <= a_max`` (default 1/4).
        r_max: reaction bound, ``|r| <= r_max <= 1`` (default 1).
        init_scale: scale of the random initial coefficients (default 0: all zero).

    Parameters: ``raw["k{kH}x{kW}"]`` of shape ``[len(terms), ΣO]`` per kernel size (rows in the
    order of ``terms``, columns the output channels of the targets of that size, in order).
    """

    def __init__(self, kind: str, target_shapes: Mapping[str, Sequence[int]], **options: float):
        if kind not in RDA_TERMS:
            raise ValueError(f"unknown RDA evolution kind {kind!r}; allowed: {RDA_KINDS}")
        terms = RDA_TERMS[kind]
        opts = check_options(options, terms)
        super().__init__(target_shapes)
        check_conv_shapes(self.target_shapes)
        self.kind = kind
        self.terms: tuple[str, ...] = terms
        self.d_max, self.a_max, self.r_max = opts["d_max"], opts["a_max"], opts["r_max"]
        self.init_scale = opts["init_scale"]
        self._groups: list[_Group] = []
        self._where: dict[str, tuple[_Group, int, int]] = {}  # target -> (group, first, last channel)
        by_size: dict[tuple[int, int], _Group] = {}
        for index, (name, shape) in enumerate(self.target_shapes.items()):
            size = (shape[2], shape[3])
            if size not in by_size:
                by_size[size] = _Group(f"k{size[0]}x{size[1]}", size)
                self._groups.append(by_size[size])
            group = by_size[size]
            start = group.offsets[-1]
            group.members.append(index)
            batch = group.batches.setdefault(shape[1], _Batch(shape[1]))
            batch.members.append(index)
            batch.sizes.append(shape[0])
            batch.channels += range(start, start + shape[0])
            group.offsets.append(start + shape[0])
            self._where[name] = (group, start, start + shape[0])

        low, high = zip(*(self.bounds()[t] for t in terms))
        self.register_buffer("_low", torch.tensor(low).view(-1, 1), persistent=False)
        self.register_buffer("_high", torch.tensor(high).view(-1, 1), persistent=False)
        # Which stencils the kind needs, split in those scaled by a coefficient and by its |.|.
        linear = [(ti, s, use_abs) for ti, t in enumerate(terms) for s, use_abs in _LINEAR.get(t, ())]
        self._absolute = any(use_abs for _, _, use_abs in linear)
        self._reaction = terms.index("reaction") if "reaction" in terms else None

        self.raw = nn.ParameterDict()
        self._versions: dict[str, int] = {}
        for group in self._groups:
            channels = group.offsets[-1]
            value = torch.zeros(len(terms), channels)
            if self.init_scale > 0:
                value = self.init_scale * torch.randn(len(terms), channels)
                if "diffusion" in terms:
                    value[terms.index("diffusion")].abs_()
                value = torch.minimum(torch.maximum(value, self._low), self._high)
            self.raw[group.key] = nn.Parameter(value)
            cells = group.size[0] * group.size[1]
            if linear and cells > 1:
                # Per term row, the sum of the stencils it multiplies, transposed and flattened to
                # [terms, HW_in * HW_out]: coefficients^T [C, terms] @ this = the per-channel
                # operators M_c^T (a slice row w [HW_in] maps to w @ M_c^T). "plain" takes the
                # coefficient, "upwind" its absolute value; the reaction row is zero in both.
                mats = stencil_matrices(*group.size).transpose(1, 2).reshape(len(STENCILS), -1)
                for part, want_abs in (("plain", False), ("upwind", True)):
                    if want_abs and not self._absolute:
                        continue
                    rows = torch.zeros(len(terms), cells * cells, dtype=torch.float64)
                    for ti, s, use_abs in linear:
                        if use_abs == want_abs:
                            rows[ti] += mats[s]
                    self.register_buffer(f"_{part}_{group.key}", rows.float(), persistent=False)
            for i, batch in enumerate(group.batches.values()):
                first = batch.channels[0]
                batch.span = (first, first + len(batch.channels)) \
                    if batch.channels == list(range(first, first + len(batch.channels))) else None
                if batch.span is None:
                    self.register_buffer(f"_channels_{group.key}_{i}", torch.tensor(batch.channels),
                                         persistent=False)

    # --- coefficients ------------------------------------------------------------------
    def bounds(self) -> dict[str, tuple[float, float]]:
        """``{term: (low, high)}`` closed bounds of every term of this kind."""
        every = {"diffusion": (0.0, self.d_max), "advection_x": (-self.a_max, self.a_max),
                 "advection_y": (-self.a_max, self.a_max), "reaction": (-self.r_max, self.r_max)}
        return {t: every[t] for t in self.terms}

    def _project(self) -> None:
        """Clamp every coefficient tensor changed in place since the last check into its bounds."""
        for key, p in self.raw.items():
            if self._versions.get(key) == p._version:
                continue
            with torch.no_grad():
                low, high = self._low.to(p.dtype), self._high.to(p.dtype)
                if bool(((p < low) | (p > high)).any()):
                    p.copy_(torch.minimum(torch.maximum(p, low), high))
            self._versions[key] = p._version

    def coefficient(self, term: str, name: str) -> torch.Tensor:
        """Effective coefficient ``[O]`` of ``term`` for target ``name`` (clamped into its bounds)."""
        if term not in self.terms:
            raise ValueError(f"term {term!r} not learned by kind {self.kind!r}; allowed: {self.terms}")
        if name not in self._where:
            raise ValueError(f"unknown target {name!r}; targets: {self.targets}")
        group, start, stop = self._where[name]
        low, high = self.bounds()[term]
        return self.raw[group.key][self.terms.index(term), start:stop].clamp(low, high)

    def coefficients(self) -> dict[str, torch.Tensor]:
        """``{"<target>/<term>": Tensor[O]}`` of effective coefficients, detached."""
        return {f"{name}/{term}": self.coefficient(term, name).detach().clone()
                for name in self.targets for term in self.terms}

    def set_coefficients(self, mapping: Mapping[str, Union[float, torch.Tensor]]) -> None:
        """Set effective coefficients exactly: ``{"<target>/<term>": number or Tensor[O]}``.

        Raises KeyError-like ValueError for an unknown key, ValueError for a wrong shape, a
        non-finite value or a value outside the term's closed bound.
        """
        bounds = self.bounds()
        updates = []
        for key, value in mapping.items():
            name, _, term = str(key).rpartition("/")
            if name not in self._where or term not in bounds:
                raise ValueError(f"unknown coefficient {key!r}; keys are '<target>/<term>' with targets "
                                 f"{self.targets} and terms {self.terms}")
            group, start, stop = self._where[name]
            v = torch.as_tensor(value, dtype=torch.float64)
            if v.dim() > 1 or (v.dim() == 1 and v.numel() != stop - start):
                raise ValueError(f"coefficient {key!r} needs a number or a tensor of shape [{stop - start}], "
                                 f"got shape {tuple(v.shape)}")
            low, high = bounds[term]
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"coefficient {key!r} must be finite, got {value!r}")
            bad = (v < low) | (v > high)
            if bool(bad.any()):
                worst = v[bad].flatten()[0].item() if v.dim() else v.item()
                raise ValueError(f"coefficient {key!r}: value {worst:.6g} is outside the bound [{low}, {high}] "
                                 f"of term {term!r}")
            updates.append((group.key, self.terms.index(term), start, stop, v))
        with torch.no_grad():
            for gkey, row, start, stop, v in updates:
                p = self.raw[gkey]
                p[row, start:stop] = v.to(p.dtype)
        self._versions = {k: p._version for k, p in self.raw.items()}

    # --- the rate ----------------------------------------------------------------------
    def _rates(self, t: torch.Tensor, thetas: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # Per group: fold the coefficients into one operator per output channel,
        # M_c = D_c S_lap + a_x,c S_cx + |a_x,c| S_ux + ..., with two matmuls [C, terms] @ [terms, HW*HW];
        # then per batch of equal in_channels one bmm  [ΣO, I, HW] @ [ΣO, HW, HW]  applies it to
        # every slice, plus one tanh / addcmul for the reaction.
        self._project()
        out: list[torch.Tensor] = [torch.empty(0)] * len(thetas)
        for group in self._groups:
            dtype = thetas[group.members[0]].dtype
            cells = group.size[0] * group.size[1]
            coef = self.raw[group.key].to(dtype)  # [terms, C]
            plain = getattr(self, f"_plain_{group.key}", None)
            ops = None
            if plain is not None:
                ops = coef.t() @ plain.to(dtype)  # [C, HW_in * HW_out]
                if self._absolute:
                    ops = torch.addmm(ops, coef.t().abs(), getattr(self, f"_upwind_{group.key}").to(dtype))
                ops = ops.view(-1, cells, cells)  # [C, HW_in, HW_out]
            reaction = coef[self._reaction] if self._reaction is not None else None  # [C]
            for i, batch in enumerate(group.batches.values()):
                parts = [thetas[m].reshape(o, batch.in_channels, cells) for m, o in zip(batch.members, batch.sizes)]
                w = parts[0] if len(parts) == 1 else torch.cat(parts)  # [ΣO, I, HW]
                index = None if batch.span is not None else getattr(self, f"_channels_{group.key}_{i}")
                q = torch.bmm(w, _channels(ops, batch, index)) if ops is not None else None
                if reaction is not None:
                    r = _channels(reaction, batch, index).view(-1, 1, 1)
                    q = r * torch.tanh(w) if q is None else torch.addcmul(q, r, torch.tanh(w))
                if q is None:  # diffusion/advection on 1x1 kernels: nothing moves
                    q = torch.zeros_like(w)
                pieces = torch.split(q, batch.sizes) if len(batch.sizes) > 1 else (q,)
                for m, piece in zip(batch.members, pieces):
                    out[m] = piece.view(thetas[m].shape)
        return tuple(out)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, targets={self.targets}, d_max={self.d_max}, a_max={self.a_max}, "
                f"r_max={self.r_max}, init_scale={self.init_scale}")
