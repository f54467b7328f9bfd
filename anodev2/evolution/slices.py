"""Linear-per-output-channel evolutions of conv-kernel slices (the machinery of ``rda`` and
``generator``).

For a conv weight ``W [O, I, kH, kW]`` every ``kH x kW`` slice ``w_{o,i}`` (flattened to
``HW = kH·kW`` cells) evolves by

    dw_{o,i}/dt = M_o w_{o,i}  +  r_o ⊙ tanh(w_{o,i})                                    (1)

with one ``HW x HW`` matrix ``M_o = Σ_terms Σ_k c_{term,o,k} B_{term,k}`` per output channel
(fixed basis matrices ``B``, learned coefficients ``c``) and, for kinds with a reaction, one
reaction coefficient per output channel *and kernel entry* ``r_o ∈ R^{HW}`` (so the reaction
reshapes the kernel instead of rescaling output channel o, which a following normalisation
would cancel). Subclasses (``RDAEvolution``, ``GeneratorEvolution``) only list their terms.

Bounds hold however the parameters are written (W5): every forward and :meth:`coefficients`
use ``clamp(stored, low, high)`` -- the exact values the forward uses -- and a stored value that
left its bound (an optimiser step, ``load_state_dict(assign=True)``, ``p.data.fill_``,
``vector_to_parameters``; detected through the tensor's identity, storage and version) is
projected back in place before the next forward, so its gradient keeps flowing (projected
gradient descent). Zero is an allowed value of every term and gives ``q ≡ 0`` exactly.

Cost: targets with the same kernel size share one coefficient tensor per term
(``[ΣO, n_term]``); one matmul folds the coefficients into the ``M_o``, once per solve
(:meth:`SliceEvolution.prepare`; an evaluation of ``q`` only applies them,
:meth:`SliceEvolution.rates_prepared`); the targets that also share ``in_channels`` (every
target of a ResNet block) are evolved by one batched matmul.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .base import WeightEvolution, check_conv_shapes

__all__ = ["Term", "SliceEvolution"]

#: ``basis(kH, kW) -> Tensor[n, HW, HW]`` (float64), the matrices a linear term's coefficients scale.
Basis = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class Term:
    """One coefficient family of a slice evolution.

    Attributes:
        name: the term's name (coefficient keys are ``"<target>/<name>"``).
        low, high: closed bounds of every coefficient of the term.
        basis: for a linear term, ``basis(kH, kW) -> [n, HW, HW]``; None for the reaction.
        per_entry: the reaction: one coefficient per kernel entry (reported ``[O, kH, kW]``).
    Reported shape per target: ``[O]`` if the term has one basis matrix, ``[O, n]`` if several,
    ``[O, kH, kW]`` for the reaction.
    """

    name: str
    low: float
    high: float
    basis: Optional[Basis] = None

    @property
    def is_reaction(self) -> bool:
        return self.basis is None


class _Batch:
    """Targets of one group that also share ``in_channels``: evolved by one batched matmul."""

    def __init__(self, in_channels: int):
        self.in_channels = in_channels
        self.members: list[int] = []
        self.sizes: list[int] = []
        self.channels: list[int] = []
        self.span: Optional[tuple[int, int]] = None
        self.whole = False  # span covers every channel of the group


class _Group:
    """Targets sharing one kernel size ``(kH, kW)`` (one coefficient tensor per term)."""

    def __init__(self, key: str, size: tuple[int, int]):
        self.key, self.size = key, size
        self.members: list[int] = []
        self.offsets: list[int] = [0]
        self.batches: dict[int, _Batch] = {}
        self.counts: dict[str, int] = {}  # term -> n (basis size; HW for the reaction)


class _Clamp(torch.autograd.Function):
    """``clamp(x, low, high)`` in value, identity in gradient (``torch.clamp``'s gradient is 0 *at*
    the bounds, which would freeze a coefficient that starts at, or is projected onto, a bound:
    every diffusion and advection coefficient starts at its lower bound 0)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low, high) -> torch.Tensor:
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def _rows(x: torch.Tensor, batch: _Batch, index: Optional[torch.Tensor]) -> torch.Tensor:
    if batch.whole:  # the batch is every channel of its group: no slice (and no slice_backward)
        return x
    if batch.span is not None:
        return x[batch.span[0]:batch.span[1]]
    return x.index_select(0, index)


def _param_key(term: str, group: str) -> str:
    return f"{term}_{group}"


class SliceEvolution(WeightEvolution):
    """Base of evolutions of the form (1). Subclasses set ``kind`` and pass their ``terms``.

    Args:
        target_shapes: ``{parameter name: [O, I, kH, kW]}``.
        terms: the terms learned, in order.
        init_scale: 0 (default) starts every coefficient at 0 (``q ≡ 0``, no random numbers
            drawn); > 0 draws ``init_scale·N(0, 1)`` (``|.|`` for terms with ``low >= 0``),
            clamped into the bounds.
    Parameters: ``coef["<term>_k{kH}x{kW}"]`` of shape ``[ΣO, n]`` per kernel size (rows: the
    output channels of the targets of that size, in order).
    """

    style = "ode"
    off_meaning = "θ(t) = θ(t0) for all t (q ≡ 0): the block is the ANODE block with the same weights"

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], terms: Sequence[Term], init_scale: float = 0.0):
        super().__init__(target_shapes)
        check_conv_shapes(self.target_shapes)
        self.term_specs: tuple[Term, ...] = tuple(terms)
        self.terms: tuple[str, ...] = tuple(t.name for t in terms)
        self.init_scale = float(init_scale)
        self._groups: list[_Group] = []
        self._where: dict[str, tuple[_Group, int, int]] = {}
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

        self.coef = nn.ParameterDict()
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._linear_terms = [t for t in self.term_specs if not t.is_reaction]
        self._reaction = next((t for t in self.term_specs if t.is_reaction), None)
        for group in self._groups:
            channels = group.offsets[-1]
            cells = group.size[0] * group.size[1]
            mats = []
            for term in self.term_specs:
                if term.is_reaction:
                    n = cells
                else:
                    basis = term.basis(*group.size).to(torch.float64)
                    n = basis.shape[0]
                    mats.append(basis.transpose(1, 2).reshape(n, cells * cells))  # row w @ B^T
                group.counts[term.name] = n
                value = torch.zeros(channels, n)
                if self.init_scale > 0:
                    value = self.init_scale * torch.randn(channels, n)
                    if term.low >= 0:
                        value.abs_()
                    value = value.clamp(term.low, term.high)
                self.coef[_param_key(term.name, group.key)] = nn.Parameter(value)
            if mats:
                self.register_buffer(f"_basis_{group.key}", torch.cat(mats).float(), persistent=False)
                # per-column bounds of the linear terms' coefficients side by side (one clamp per solve)
                for end, attr in ((0, "low"), (1, "high")):
                    self.register_buffer(f"_{attr}_{group.key}", torch.cat(
                        [torch.full((group.counts[t.name],), (t.low, t.high)[end]) for t in self._linear_terms]),
                        persistent=False)
            for i, batch in enumerate(group.batches.values()):
                first = batch.channels[0]
                batch.span = (first, first + len(batch.channels)) \
                    if batch.channels == list(range(first, first + len(batch.channels))) else None
                batch.whole = batch.span == (0, channels)
                if batch.span is None:
                    self.register_buffer(f"_channels_{group.key}_{i}", torch.tensor(batch.channels),
                                         persistent=False)

    # --- coefficients ------------------------------------------------------------------
    def bounds(self) -> dict[str, tuple[float, float]]:
        """``{term: (low, high)}`` closed bounds of every term of this kind."""
        return {t.name: (t.low, t.high) for t in self.term_specs}

    def _project(self) -> None:
        """Clamp in place every stored coefficient tensor written since the last check (any way:
        new tensor, new storage or in-place change) into its bounds, so its gradient flows.
        Under ``torch.compile`` (no data-dependent branch, no storage pointers): every tensor is
        clamped in place at each call, which leaves in-bound values unchanged."""
        if torch.compiler.is_compiling():
            with torch.no_grad():
                for term in self.term_specs:
                    for group in self._groups:
                        self.coef[_param_key(term.name, group.key)].clamp_(term.low, term.high)
            return
        params = self.coef._parameters
        for term in self.term_specs:
            for group in self._groups:
                key = _param_key(term.name, group.key)
                p = params[key]
                seen = (id(p), p.data_ptr(), p._version)
                if self._seen.get(key) == seen:
                    continue
                with torch.no_grad():
                    if bool(((p < term.low) | (p > term.high)).any()):
                        p.clamp_(term.low, term.high)
                self._seen[key] = (id(p), p.data_ptr(), p._version)

    def _effective(self, term: Term, group: _Group) -> torch.Tensor:
        """The coefficients the forward uses: ``clamp(stored, low, high)`` (any write path), with
        the identity as gradient (projected gradient descent: the gradient at a bound is kept)."""
        return _Clamp.apply(self.coef[_param_key(term.name, group.key)], term.low, term.high)

    def _report_shape(self, term: Term, group: _Group) -> tuple[int, ...]:
        if term.is_reaction:
            return group.size
        n = group.counts[term.name]
        return () if n == 1 else (n,)

    def coefficient(self, term: str, name: str) -> torch.Tensor:
        """Effective coefficients of ``term`` for target ``name`` (the values the forward uses)."""
        if term not in self.terms:
            raise ValueError(f"term {term!r} not learned by kind {self.kind!r}; allowed: {self.terms}")
        if name not in self._where:
            raise ValueError(f"unknown target {name!r}; targets: {self.targets}")
        group, start, stop = self._where[name]
        spec = self.term_specs[self.terms.index(term)]
        return self._effective(spec, group)[start:stop].reshape(stop - start, *self._report_shape(spec, group))

    def coefficients(self) -> dict[str, torch.Tensor]:
        """``{"<target>/<term>": Tensor}`` of effective coefficients, detached: ``[O]`` for a
        one-matrix term, ``[O, n]`` for a term with n basis matrices, ``[O, kH, kW]`` for the
        reaction -- exactly the values the forward uses."""
        return {f"{name}/{term}": self.coefficient(term, name).detach().clone()
                for name in self.targets for term in self.terms}

    def set_coefficients(self, mapping: Mapping[str, Union[float, torch.Tensor]]) -> None:
        """Set effective coefficients exactly: ``{"<target>/<term>": number or tensor}`` (a tensor
        of the shape :meth:`coefficients` reports, or one broadcastable to it).

        Raises ValueError for an unknown key, a wrong shape, a non-finite value or a value
        outside the term's closed bound (nothing is changed then).
        """
        bounds = self.bounds()
        updates = []
        for key, value in mapping.items():
            name, _, term = str(key).rpartition("/")
            if name not in self._where or term not in bounds:
                raise ValueError(f"unknown coefficient {key!r}; keys are '<target>/<term>' with targets "
                                 f"{self.targets} and terms {self.terms}")
            group, start, stop = self._where[name]
            spec = self.term_specs[self.terms.index(term)]
            shape = (stop - start, *self._report_shape(spec, group))
            v = torch.as_tensor(value, dtype=torch.float64)
            try:
                v = torch.broadcast_to(v, shape)
            except RuntimeError:
                raise ValueError(f"coefficient {key!r} needs a number or a tensor of shape {list(shape)} "
                                 f"(or broadcastable to it), got shape {tuple(v.shape)}") from None
            low, high = bounds[term]
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"coefficient {key!r} must be finite, got {value!r}")
            bad = (v < low) | (v > high)
            if bool(bad.any()):
                worst = v[bad].flatten()[0].item()
                raise ValueError(f"coefficient {key!r}: value {worst:.6g} is outside the bound [{low}, {high}] "
                                 f"of term {term!r}")
            updates.append((_param_key(term, group.key), start, stop, v.reshape(stop - start, -1)))
        with torch.no_grad():
            for pkey, start, stop, v in updates:
                p = self.coef[pkey]
                p[start:stop] = v.to(p.dtype)

    # --- the rate ----------------------------------------------------------------------
    def prepare(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """The coefficient-only part of (1), computed once per solve instead of at every
        evaluation: per kernel-size group, the operators ``M_o`` ``[ΣO, HW, HW]`` (kinds with a
        linear term, ``HW > 1``) and then the reaction ``[ΣO, 1, HW]`` (kinds with one), from the
        effective (clamped) coefficients, in ``dtype`` (also under autocast). Stored values that
        left their bounds are projected first. The gradient with respect to the coefficients flows
        through these tensors: an ODE block hands them to the adjoint as the evolution's
        parameters."""
        self._project()
        params = self.coef._parameters
        device = next(iter(params.values())).device.type
        if torch.is_autocast_enabled(device):  # the fold is coefficient-only: in full precision, once
            with torch.autocast(device, enabled=False):
                return self._prepare(params, dtype)
        return self._prepare(params, dtype)

    def _prepare(self, params, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for group in self._groups:
            cells = group.size[0] * group.size[1]
            if self._linear_terms and cells > 1:
                # clamp(cat(stored)) = cat(clamp(stored)) (:meth:`_effective`) with one clamp
                parts = [params[_param_key(t_.name, group.key)] for t_ in self._linear_terms]
                raw = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
                coef = _Clamp.apply(raw, getattr(self, f"_low_{group.key}"), getattr(self, f"_high_{group.key}"))
                out.append((coef.to(dtype) @ getattr(self, f"_basis_{group.key}").to(dtype)).view(-1, cells, cells))
            if self._reaction is not None:
                out.append(self._effective(self._reaction, group).to(dtype).unsqueeze(1))
        return tuple(out)

    def rates_prepared(self, thetas: tuple[torch.Tensor, ...],
                       prepared: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``q(θ)`` of (1) from :meth:`prepare`'s tensors (no checks: the caller passes one
        tensor per target with its shape)."""
        out: list = [None] * len(thetas)
        it = iter(prepared)
        for group in self._groups:
            cells = group.size[0] * group.size[1]
            ops = next(it) if self._linear_terms and cells > 1 else None
            reaction = next(it) if self._reaction is not None else None
            for i, batch in enumerate(group.batches.values()):
                parts = [thetas[m].reshape(o, batch.in_channels, cells) for m, o in zip(batch.members, batch.sizes)]
                w = parts[0] if len(parts) == 1 else torch.cat(parts)  # [ΣO, I, HW]
                index = None if batch.span is not None else getattr(self, f"_channels_{group.key}_{i}")
                q = None
                if ops is not None:
                    m_ = _rows(ops, batch, index)
                    q = torch.bmm(w, m_ if m_.dtype == w.dtype else m_.to(w.dtype))
                if reaction is not None:
                    r = _rows(reaction, batch, index)  # [ΣO, 1, HW]
                    r = r if r.dtype == w.dtype else r.to(w.dtype)
                    q = r * torch.tanh(w) if q is None else torch.addcmul(q, r, torch.tanh(w))
                if q is None:  # only linear terms on 1x1 kernels: nothing moves
                    q = torch.zeros_like(w)
                pieces = torch.split(q, batch.sizes) if len(batch.sizes) > 1 else (q,)
                for m, piece in zip(batch.members, pieces):
                    out[m] = piece.view(thetas[m].shape)
        return tuple(out)

    def _rates(self, t: torch.Tensor, thetas: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return self.rates_prepared(thetas, self.prepare(thetas[0].dtype))

    def operator(self, name: str) -> torch.Tensor:
        """The matrices ``M_o`` of target ``name``'s linear part, ``[O, HW, HW]`` (float64,
        detached; ``dw/dt = M_o w`` on a flattened row-major slice, reaction not included)."""
        if name not in self._where:
            raise ValueError(f"unknown target {name!r}; targets: {self.targets}")
        group, start, stop = self._where[name]
        cells = group.size[0] * group.size[1]
        out = torch.zeros(stop - start, cells, cells, dtype=torch.float64)
        for term in self._linear_terms:
            basis = term.basis(*group.size).to(torch.float64)
            c = self._effective(term, group)[start:stop].detach().double()
            out = out + torch.einsum("on,nij->oij", c, basis)
        return out

    def extra_repr(self) -> str:
        bounds = ", ".join(f"{t.name}∈[{t.low:g}, {t.high:g}]" for t in self.term_specs)
        return f"kind={self.kind!r}, targets={self.targets}, {bounds}, init_scale={self.init_scale}"
