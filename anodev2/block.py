"""ODEBlock: the coupled (z, θ) block of ANODEV2 (Zhang et al. 2019, arXiv 1906.04596, Sec. 3).

Activations follow ``dz/dt = f(z, θ(t))`` while the chosen weights θ of ``f`` follow their own
ODE ``dθ/dt = q(θ, p)``; both are integrated together as one tuple state ``(z, θ_1, .., θ_k)``
(θ has no batch dimension and is held once). ``f`` is written once as an ordinary module and
evaluated with the evolved weights through ``torch.func.functional_call``. With
``evolution=None`` or a static ``q`` this is a plain Neural ODE / ANODE block and no θ is
integrated at all.
"""
from __future__ import annotations

import contextlib
import fnmatch
import inspect
import weakref
import numbers
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .adjoint import Backprop, Grad, GradMode, get_grad_mode
from .adjoint.registry import reject_loose_options
from .evolution import EVOLUTION_KINDS, EVOLUTIONS, WeightEvolution, build_evolution, check_evolution_options
from .odeint import DEFAULT_GRAD, DEFAULT_METHOD, DEFAULT_STEPS, odeint
from .solvers import ButcherTableau, Method, get_tableau
from .solvers.stepper import stage_time_values, time_value
from .stats import SolveStats
from .time_norm import attach_time_norms, time_grid


def conv_weight_names(f: nn.Module) -> list[str]:
    """Names (relative to ``f``) of the weights of every ``nn.Conv2d`` inside ``f``."""
    return [f"{name}.weight" if name else "weight" for name, m in f.named_modules() if isinstance(m, nn.Conv2d)]


def _weight_slots(f: nn.Module, names: tuple[str, ...]) -> Optional[list[tuple[dict, str]]]:
    """Where each target of ``names`` lives in ``f``: ``(its module's _parameters, key)``; None when
    one is tied to another name (one Parameter under two names) or not a plain entry of
    ``_parameters`` (a parametrization): those go through ``functional_call``."""
    slots = []
    for name in names:
        module, _, attr = name.rpartition(".")
        m = f
        for part in module.split(".") if module else ():
            m = m._modules.get(part)
            if m is None:
                return None
        if attr not in m._parameters or m._parameters[attr] is None:
            return None
        slots.append((m._parameters, attr))
    if _has_ties(f, names, tuple(d[a] for d, a in slots)):
        return None
    return slots


_RESOLVE = object()  # _call_with_weights: find the slots at this call


def _call_with_weights(f: nn.Module, names: tuple[str, ...], thetas, args, slots=_RESOLVE):
    """``f(*args)`` with the parameters ``names`` of ``f`` replaced by the tensors ``thetas``:
    ``torch.func.functional_call(f, dict(zip(names, thetas)), args, strict=False)`` for the common
    case at a fraction of its cost (it runs at every f-evaluation of an evolving block): each
    target is swapped in its module's ``_parameters`` and put back afterwards, even on error.
    ``slots``: :func:`_weight_slots` of ``(f, names)`` found once per solve (default: found here)."""
    if torch.compiler.is_compiling():  # dynamo traces functional_call; not a swap of _parameters
        return functional_call(f, dict(zip(names, thetas)), args, strict=False)
    if slots is _RESOLVE:
        slots = _weight_slots(f, names)
    if slots is None:
        return functional_call(f, dict(zip(names, thetas)), args, strict=False)
    old = [d[a] for d, a in slots]
    try:
        for (d, a), theta in zip(slots, thetas):
            d[a] = theta
        return f(*args)
    finally:
        for (d, a), o in zip(slots, old):
            d[a] = o


@torch.compiler.disable
def _solve_outside_dynamo(block: "ODEBlock", y0, callback):
    """An adjoint-mode solve called from a dynamo-traced network: run eagerly (a graph break),
    through the block's compiled field if it has one."""
    compiled = block.__dict__.get("_compiled_field")
    return block._odeint(block.field if compiled is None else compiled, y0, callback)


_TIES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _has_ties(f: nn.Module, names: tuple[str, ...], params: tuple) -> bool:
    """True if a target of ``names`` (whose current Parameters are ``params``) is also reachable
    under another name of ``f`` (tied weights, which functional_call replaces everywhere).
    Cached per f while the targets are the same Parameter objects."""
    hit = _TIES.get(f)
    if hit is not None and hit[0] == names and all(a is b for a, b in zip(hit[1], params)):
        return hit[2]
    ids = {id(p) for p in params}
    count = sum(1 for _, p in f.named_parameters(remove_duplicate=False) if id(p) in ids)
    tied = len(ids) != len(names) or count != len(names)
    _TIES[f] = (names, params, tied)
    return tied


#: what every ``evolution=`` argument accepts (besides a built ``WeightEvolution``).
Evolution = Union[None, str, Mapping[str, Any]]


def resolve_evolution(evolution: Evolution, *, default_kind: Optional[str] = None,
                      where: str = "evolution") -> Optional[dict[str, Any]]:
    """The one reader of an evolution's spelling: None, a kind name (``"rda"``) or a mapping
    ``{"kind": name, "targets": names or patterns, **options}`` -> None or a validated mapping
    ``{"kind": name, **the given entries}``.

    ``kind`` may be left out of a mapping where the caller has a default (a model variant's);
    ``targets`` (None = the caller's default targets) lists parameter names or fnmatch patterns
    relative to ``f``; the other entries are the kind's options, validated by the evolution
    library. Raises ValueError / TypeError naming ``where``, the value and what is allowed.
    """
    if evolution is None:
        return None
    if isinstance(evolution, str):
        spec: dict[str, Any] = {"kind": evolution}
    elif isinstance(evolution, Mapping):
        spec = dict(evolution)
        if "kind" not in spec:
            if default_kind is None:
                raise ValueError(f"{where}={dict(evolution)!r} needs 'kind'; allowed: {' | '.join(EVOLUTIONS)}")
            spec = {"kind": default_kind, **spec}
    else:
        raise TypeError(f"{where} must be None, a kind name ({' | '.join(EVOLUTIONS)}), a mapping "
                        f"{{'kind': NAME, 'targets': [...], OPTION: VALUE}} or a WeightEvolution, "
                        f"got {type(evolution).__name__}")
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in EVOLUTIONS:
        key = where if isinstance(evolution, str) else f"{where}.kind"
        raise ValueError(f"{key}={kind!r} is not allowed; allowed: {' | '.join(EVOLUTIONS)}")
    targets = spec.get("targets")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, (list, tuple)) and all(isinstance(t, str) for t in targets)):
        raise ValueError(f"{where}.targets={targets!r} is not allowed; allowed: null (the default targets), "
                         "a parameter name or pattern, or a list of them")
    options = {k: v for k, v in spec.items() if k not in ("kind", "targets")}
    known = EVOLUTIONS[kind].options
    for name, value in options.items():  # one option at a time: the message names it
        if name not in known:
            allowed = ", ".join(["targets", *known]) if known else f"targets (kind {kind!r} has no options)"
            raise ValueError(f"{where}.{name} is not an option of evolution kind {kind!r}; allowed: {allowed}")
        try:
            known[name].check(kind, name, value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}.{name}={value!r} is not allowed: {e}") from None
    try:  # the kind's check of the options together (e.g. RDA's stability bound)
        check_evolution_options(kind, options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} (kind {kind!r}): {e}") from None
    return spec


def _select_targets(f: nn.Module, targets: Optional[Union[str, Sequence[str]]]) -> list[str]:
    """Resolve an evolution's ``targets`` (None = every conv weight; names or fnmatch patterns)."""
    params = dict(f.named_parameters())
    if targets is None:
        names = conv_weight_names(f)
        if not names:
            raise ValueError("evolution needs weights to evolve, but f has no nn.Conv2d; "
                             "pass evolution={'kind': ..., 'targets': [parameter names]} (one of "
                             f"{sorted(params)})")
        return names
    patterns = [targets] if isinstance(targets, str) else list(targets)
    names: list[str] = []
    for pat in patterns:
        hits = [n for n in params if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(f"evolution targets entry {pat!r} matches no parameter of f; "
                             f"parameters: {sorted(params)}")
        names += [n for n in hits if n not in names]
    return names


def _takes_time(f: nn.Module) -> bool:
    """True if ``f.forward`` takes (t, z), False if it takes (z,)."""
    sig = inspect.signature(f.forward)
    required = [p for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(required) not in (1, 2):
        raise TypeError(f"f.forward must take (z) or (t, z); it requires {len(required)} positional "
                        f"arguments: {[p.name for p in required]}")
    return len(required) == 2


@contextlib.contextmanager
def _at_time(layers, t) -> Iterator[None]:
    """Tell per-time normalisation layers (``TimeBatchNorm2d``) the time of this evaluation of f."""
    time = time_value(t)  # a stage time of the solver carries its float: no device-to-host copy
    for m in layers:
        m.current_time = time
    try:
        yield
    finally:
        for m in layers:
            m.current_time = None


def _timed(layers, t, fn, *args):
    """``fn(*args)`` with the per-time normalisation layers told the time ``t`` (a float or a
    stage-time tensor); no context at all when f has none (the common case)."""
    if not layers:
        return fn(*args)
    with _at_time(layers, t):
        return fn(*args)


class CoupledField(nn.Module):
    """The vector field an ODEBlock integrates, by the evolution's ``style``:

    * ``"ode"``: the joint field ``F(t, (z, θ)) = (f(z; θ), q(θ))`` (θ in the state, ``names``);
    * ``"explicit"``: ``F(t, z) = f(z; θ(t))`` with ``θ(t) = evolution.weights_at_time(t, θ0, piece)``
      evaluated at every stage time (nothing but z in the state; ``scheduled`` names the θ);
    * ``"time_input"``: ``F(t, z) = f(z)`` with the hooked convs seeing t as an extra channel;
    * static / no evolution: ``F(t, z) = f(z)``.

    While ``recording`` is a list, every evaluation appends ``(t, θ seen by f)`` (detached).
    """

    def __init__(self, f: nn.Module, evolution: Optional[WeightEvolution], time_input: bool) -> None:
        super().__init__()
        self.f = f
        self.evolution = evolution
        self.time_input = time_input
        self.style = "static" if evolution is None or evolution.is_static else evolution.style
        targets = () if evolution is None else tuple(evolution.targets)
        self.names: tuple[str, ...] = targets if self.style == "ode" else ()
        self.scheduled: tuple[str, ...] = targets if self.style == "explicit" else ()
        #: the weights f sees change in time (every style but static)
        self.evolving: tuple[str, ...] = () if self.style == "static" else targets
        self.recording: Optional[list] = None

    def _record(self, t: Tensor, thetas) -> None:
        if self.recording is not None:
            self.recording.append((t.detach(), tuple(w.detach() for w in thetas)))

    #: the ``TimeBatchNorm2d`` layers of f (norm="batch_t"), told the time of every evaluation;
    #: empty (no overhead) when f has none. Set by ODEBlock.
    time_norms: tuple = ()

    def forward(self, t: Tensor, state, piece: Optional[int] = None):
        return _timed(self.time_norms, t, self._forward, t, state, piece)

    def _forward(self, t: Tensor, state, piece: Optional[int] = None):
        if self.style == "explicit":
            base = tuple(self.f.get_parameter(n) for n in self.scheduled)
            thetas = self.evolution.weights_at_time(t, base, piece)
            self._record(t, thetas)
            args = (t, state) if self.time_input else (state,)
            return _call_with_weights(self.f, self.scheduled, thetas, args)
        if self.style == "time_input":
            with self.evolution.at_time(t):
                if self.recording is not None:  # θ does not change; weights_at() builds [W, t·V] when asked
                    self.recording.append((self.evolution._t.detach(), None))  # the time the convs see
                return self.f(t, state) if self.time_input else self.f(state)
        if not self.names:
            return self.f(t, state) if self.time_input else self.f(state)
        return self.coupled(t, state)

    def coupled(self, t: Tensor, state, slots=_RESOLVE, tensors: Optional[tuple[Tensor, ...]] = None):
        """The ode style's ``(f(z; θ), q(θ))`` for ``state = (z, θ_1, .., θ_k)``; ``slots`` and
        ``tensors``: where f's targets live and the evolution's prepared tensors, found once per
        solve by :class:`_Prepared` (default: found / computed here)."""
        z, thetas = state[0], tuple(state[1:])
        self._record(t, thetas)
        args = (t, z) if self.time_input else (z,)
        dz = _call_with_weights(self.f, self.names, thetas, args, slots)
        if tensors is None:
            return (dz, *self.evolution(t, thetas))
        return (dz, *self.evolution.rates_prepared(thetas, tensors))


class _Prepared(nn.Module):
    """``field`` (ode style) for one solve, with the work that does not change during the solve
    done once: the evolution's coefficient-only part of q (``tensors``, from
    ``WeightEvolution.prepare``; they stand for the evolution's parameters in the solve, so the
    adjoint returns their gradient and autograd carries it to the coefficients) and where f's
    targets live (``slots``). A new object per solve: a backward run later re-evaluates exactly
    the tensors its forward used, whatever other forwards ran in between."""

    def __init__(self, field: CoupledField, tensors: tuple[Tensor, ...]) -> None:
        super().__init__()
        self.field = field
        self.tensors = tensors
        self.slots = _weight_slots(field.f, field.names)

    def forward(self, t: Tensor, state):  # the field's coupled() directly: no second module call
        return _timed(self.field.time_norms, t, self.field.coupled, t, state, self.slots, self.tensors)


class _PieceField(nn.Module):
    """``field`` restricted to piece ``k`` of a piecewise-constant (untied) schedule."""

    def __init__(self, field: CoupledField, piece: int) -> None:
        super().__init__()
        self.field = field
        self.piece = piece

    def forward(self, t: Tensor, state):
        return self.field(t, state, piece=self.piece)


class _OffField(nn.Module):
    """``field`` with its evolution switched off, independent of the switch's later state: f with
    its stored weights θ0 (ode kinds: θ(t) = θ(t0); linear / galerkin / untied: θ0), or f whose
    time-input convs see t0 (time_input)."""

    def __init__(self, field: CoupledField) -> None:
        super().__init__()
        self.field = field

    def forward(self, t: Tensor, z):
        return _timed(self.field.time_norms, t, self._forward, t, z)

    def _forward(self, t: Tensor, z):
        field = self.field
        f, evo = field.f, field.evolution
        args = (t, z) if field.time_input else (z,)
        if field.style == "time_input":
            t0 = torch.full_like(t, evo.t0)
            if field.recording is not None:
                field.recording.append((t0.detach(), None))
            with evo.at_time(t0):
                return f(*args)
        if field.recording is not None:
            field.recording.append((t.detach(), tuple(f.get_parameter(n).detach() for n in evo.targets)))
        return f(*args)


class ODEBlock(nn.Module):
    """``z(t1)`` of ``dz/dt = f(z, θ(t))``, ``dθ/dt = q(θ, p)`` from ``z(t0) = input``.

    Args:
        f: module mapping ``z -> dz/dt`` (``f(z)`` or ``f(t, z)``), output shape = input shape.
        steps, method, grad: as in :func:`anodev2.odeint`, with the same defaults (rk4, 4 steps,
            ``Checkpoint()``); ``grad`` is an object such as
            ``anodev2.Checkpoint(checkpoints=2, keep_forward=True)``, a name or a mapping
            ``{"mode": "checkpoint", "checkpoints": 2}`` (mode defaults to "checkpoint"), kept
            as the object it resolves to (``grad_mode``) and handed unchanged to ``odeint``.
        evolution: None (static weights: Neural ODE / ANODE), a kind name (one of
            ``anodev2.evolution.EVOLUTION_KINDS``), a mapping ``{"kind": name, "targets": ...,
            **options}`` (:func:`resolve_evolution`; ``targets``: which parameters of ``f``
            evolve, None = every conv weight, or names / fnmatch patterns relative to ``f``) or a
            :class:`~anodev2.evolution.WeightEvolution` whose targets are parameters of ``f``.
        t0, t1: the block's time interval.
        time_input: override the detection of ``f(t, z)`` vs ``f(z)``.
        record_weights: keep θ(t_n) of the last forward for :meth:`weights_at`.
    Attributes:
        grad_mode: the resolved gradient mode object (its options: ``grad_mode.options()``);
        tableau: the resolved method (``method`` its name).
    Shapes: input ``[B, ...]`` -> output of the same shape.
    """

    def __init__(
        self,
        f: nn.Module,
        *,
        steps: int = DEFAULT_STEPS,
        method: Method = DEFAULT_METHOD,
        grad: Grad = DEFAULT_GRAD,
        evolution: Union[Evolution, WeightEvolution] = None,
        t0: float = 0.0,
        t1: float = 1.0,
        time_input: Optional[bool] = None,
        record_weights: bool = True,
        **removed,
    ) -> None:
        super().__init__()
        if "evolution_targets" in removed:
            raise TypeError("ODEBlock() no longer takes evolution_targets: the targets are part of the evolution; "
                            f"write evolution={{'kind': ..., 'targets': {removed['evolution_targets']!r}}}")
        reject_loose_options("ODEBlock", removed)
        if not isinstance(f, nn.Module):
            raise TypeError(f"f must be an nn.Module, got {type(f).__name__}")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:  # as odeint: np.int64 too
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        self.tableau: ButcherTableau = get_tableau(method)
        self.grad_mode: GradMode = get_grad_mode(grad, default_mode=DEFAULT_GRAD.name)
        evo = self._make_evolution(f, evolution, t0=float(t0), t1=float(t1), steps=int(steps))
        # f and the evolution are the block's own submodules (state-dict keys "f.*", "evolution.*",
        # as for a discrete residual block); the joint vector field refers to them without
        # registering them a second time.
        self.f = f
        self.evolution = evo
        object.__setattr__(self, "field", CoupledField(f, evo, _takes_time(f) if time_input is None else bool(time_input)))
        self.steps = int(steps)
        self.t0, self.t1 = float(t0), float(t1)
        # norm="batch_t": one slot of running statistics per time of the fixed grid (stage and step times)
        self.field.time_norms = attach_time_norms(f, time_grid(self.t0, self.t1, self.steps, self.tableau.c))
        self.record_weights = record_weights
        self.last_stats = SolveStats()
        self._trajectory: list[tuple[Tensor, ...]] = []

    @property
    def method(self) -> str:
        return self.tableau.name

    @staticmethod
    def _make_evolution(f, evolution, *, t0: float = 0.0, t1: float = 1.0, steps: int = 1) -> Optional[WeightEvolution]:
        params = dict(f.named_parameters())
        if not isinstance(evolution, WeightEvolution):
            spec = resolve_evolution(evolution)
            if spec is None:
                return None
            kind, targets = spec.pop("kind"), spec.pop("targets", None)
            names = _select_targets(f, targets)
            evo = build_evolution(kind, {n: params[n].shape for n in names}, t0=t0, t1=t1, steps=steps, **spec)
            evo.check_span(t0, t1, steps)
            if evo.style == "time_input":
                evo.attach(f)
            return evo
        evolution.check_span(t0, t1, steps)
        if evolution.style == "time_input":
            evolution.attach(f)
        for n in evolution.targets:
            if n not in params:
                raise ValueError(f"evolution target {n!r} is not a parameter of f; parameters: {sorted(params)}")
            want = getattr(evolution, "target_shapes", {}).get(n)
            if want is not None and tuple(want) != tuple(params[n].shape):
                raise ValueError(f"evolution target {n!r} has shape {tuple(params[n].shape)} in f but the "
                                 f"evolution was built for {tuple(want)}")
        return evolution

    # --- read-only views -------------------------------------------------------------
    @property
    def evolution_kind(self) -> Optional[str]:
        return None if self.evolution is None else self.evolution.kind

    @property
    def evolving_names(self) -> tuple[str, ...]:
        """Names (relative to f) of the weights that vary in time (empty for static q; for
        time_input the convs that see t)."""
        return self.field.evolving

    @contextlib.contextmanager
    def evolution_off(self) -> Iterator["ODEBlock"]:
        """Within the context the evolution is switched off (``evolution.off_meaning`` says what
        that means for the kind). Raises ValueError for no evolution or a kind without a switch."""
        if self.evolution is None:
            raise ValueError("evolution_off(): this block has no evolution")
        with self.evolution.off():
            yield self

    def _solve_params(self) -> Union[list[Tensor], tuple[()]]:
        """The ``params`` handed to odeint: none for Backprop (autograd reaches every tensor f
        uses through the unrolled loop, so odeint never reads them; listing f's parameters
        walks the module tree on every forward), else :meth:`_static_params`."""
        return () if isinstance(self.grad_mode, Backprop) else self._static_params()

    def _static_params(self) -> list[Tensor]:
        evo = list(self.evolution.parameters()) if self.field.style != "static" else []
        return self._f_params() + evo

    def _f_params(self) -> list[Tensor]:
        """f's parameters that are not integrated (the evolving θ are part of the state)."""
        names = set(self.field.names)
        return [p for n, p in self.f.named_parameters() if n not in names]

    # --- forward ---------------------------------------------------------------------
    def forward(self, z: Tensor) -> Tensor:
        if self.field.style != "static" and not self.evolution.enabled:
            return self._forward_off(z)
        names, field = self.field.names, self.field
        record = self.record_weights and bool(names)
        # plain attributes, written through __dict__ (nn.Module.__setattr__ costs microseconds per write)
        trajectory: list = []
        self.__dict__["_trajectory"] = trajectory
        callback = (lambda n, y: trajectory.append(tuple(w.detach() for w in y[1:]))) if record else None
        y0 = (z, *(self.f.get_parameter(n) for n in names)) if names else z
        field.__dict__["recording"] = [] if self.record_weights and field.evolving else None
        try:
            pieces = self.evolution.pieces if field.style == "explicit" else None
            if pieces is not None and pieces > 1:
                out = self._solve_pieces(y0, pieces)
            else:
                out = self._solve(y0, callback)
        finally:
            self.__dict__["_evaluations"] = field.recording or []
            field.__dict__["recording"] = None
        return out[0] if names else out

    def _solve(self, y0, callback):
        """One solve of the block. Under ``torch.compile`` (:func:`anodev2.compile`): Backprop is
        traced like any layer (the solver loop unrolls into the network's graph); an adjoint mode
        is a custom autograd Function whose backward re-runs f from Python, so dynamo does not
        trace it (one graph break at the block) and f runs through the block's compiled vector
        field in the forward pass, the recomputation and the reversal alike."""
        if torch.compiler.is_compiling():
            if isinstance(self.grad_mode, Backprop):
                return self._odeint(self._traced_field(y0), y0, callback, params=())
            return _solve_outside_dynamo(self, y0, callback)
        compiled = self.__dict__.get("_compiled_field")
        if compiled is not None:
            return self._odeint(compiled, y0, callback)
        tensors = self.evolution.prepare(y0[1].dtype) if self.field.names else None
        if tensors is None:
            return self._odeint(self.field, y0, callback)
        params = () if isinstance(self.grad_mode, Backprop) else (*self._f_params(), *tensors)
        return self._odeint(_Prepared(self.field, tensors), y0, callback, params)

    def _traced_field(self, y0):
        """The vector field of a Backprop solve that dynamo traces: the evolution's prepared tensors
        made once per solve (so a stored coefficient is projected once, before any use), and the
        per-time normalisation layers told each evaluation's time as the Python float of the fixed
        grid -- a Backprop solve evaluates f exactly in grid order -- so that tracing needs no
        ``float(t)`` (a graph break at every evaluation)."""
        field = self.field
        tensors = self.evolution.prepare(y0[1].dtype) if field.names else None
        if tensors is None and not field.time_norms:
            return field
        times = iter(stage_time_values(self.t0, (self.t1 - self.t0) / self.steps, self.steps, self.tableau))

        def func(t: Tensor, state):
            if tensors is not None:
                return _timed(field.time_norms, next(times), field.coupled, t, state, _RESOLVE, tensors)
            return _timed(field.time_norms, next(times), field._forward, t, state)
        return func

    def _odeint(self, func, y0, callback, params=None):
        return odeint(func, y0, self.t0, self.t1, steps=self.steps, method=self.tableau, grad=self.grad_mode,
                      params=self._solve_params() if params is None else params, stats=self.last_stats,
                      callback=callback)

    def compile_field(self, **options) -> "ODEBlock":
        """Compile the block's vector field with ``torch.compile(field, **options)`` (the joint field
        of f and the evolution), used by every evaluation of f outside a dynamo trace: the forward
        pass, and the recomputed and reversed steps of the adjoint modes, which ``torch.compile``
        of the network cannot reach (they run in backward). :meth:`uncompile_field`
        goes back to eager. Returns the block."""
        object.__setattr__(self, "_compiled_field", torch.compile(self.field, **options))
        return self

    def uncompile_field(self) -> "ODEBlock":
        self.__dict__.pop("_compiled_field", None)
        return self

    def _forward_off(self, z: Tensor) -> Tensor:
        """The block with its evolution switched off: a solve of z alone through a field that does
        not read the switch (:class:`_OffField`), so a backward run after leaving the context
        recomputes exactly this forward. θ(t_n) views show θ0."""
        params = dict(self.f.named_parameters())
        if self.record_weights and self.field.names:
            self._trajectory = [tuple(params[n].detach() for n in self.field.names)] * (self.steps + 1)
        else:
            self._trajectory = []
        self.field.recording = [] if self.record_weights else None
        solve_params = () if isinstance(self.grad_mode, Backprop) else list(self.f.parameters()) + (
            list(self.evolution.parameters()) if self.field.style == "time_input" else [])  # t0·V is used
        try:
            return odeint(_OffField(self.field), z, self.t0, self.t1, steps=self.steps, method=self.tableau,
                          grad=self.grad_mode, params=solve_params, stats=self.last_stats)
        finally:
            self._evaluations, self.field.recording = self.field.recording or [], None

    def _solve_pieces(self, z: Tensor, pieces: int) -> Tensor:
        """Piecewise-constant (untied) weights: one solve of ``steps / pieces`` steps per piece, so
        every RK stage of a step -- the one at the step's end time included -- uses that step's
        piece. Each piece is its own solve: the gradient mode's options hold per piece (e.g.
        ``Checkpoint(checkpoints=c)`` keeps c states within a piece) and ``last_stats`` describes
        the last piece's solve."""
        per, span = self.steps // pieces, self.t1 - self.t0
        params = self._solve_params()
        for k in range(pieces):
            ta, tb = self.t0 + span * k / pieces, self.t0 + span * (k + 1) / pieces
            z = odeint(_PieceField(self.field, k), z, ta, tb, steps=per, method=self.tableau, grad=self.grad_mode,
                       params=params, stats=self.last_stats)
        return z

    def evaluation_times(self) -> list[float]:
        """The times at which f was evaluated in the last forward (every RK stage, in order;
        e.g. euler x 3 on [0, 1]: 0, 1/3, 2/3 -- f never sees θ(t1))."""
        return [float(t) for t, _ in getattr(self, "_evaluations", [])]

    def weights_at(self, at: str = "steps") -> dict[str, list[Tensor]]:
        """The weights f uses, per evolving weight, as detached tensors.

        ``at="steps"`` (default): θ(t_0), ..., θ(t_Nt) at the step times (Nt + 1 tensors; θ(t_0) =
        the parameter). Ode kinds: the integrated θ of the last forward; explicit kinds: θ(t_n)
        evaluated directly (untied: the piece starting at t_n, the last piece at t_Nt);
        time_input: the effective kernel ``[W, t_n·V]``; static: θ0 at every t_n; no evolution: ``{}``.
        ``at="evaluations"``: θ at every evaluation of f in the last forward (the times are
        :meth:`evaluation_times`): exactly what f saw.
        """
        if at not in ("steps", "evaluations"):
            raise ValueError(f"at={at!r} is not allowed; allowed: steps | evaluations")
        if self.evolution is None:
            return {}
        params = dict(self.f.named_parameters())
        style = self.field.style
        if at == "evaluations":
            if style == "static":
                return {n: [params[n].detach()] * len(self.evaluation_times()) for n in self.evolution.targets}
            found = getattr(self, "_evaluations", [])
            if not found:
                raise RuntimeError("weights_at('evaluations') needs a forward pass first (with record_weights=True)")
            if style == "time_input":
                base = tuple(params[n] for n in self.evolution.targets)
                with torch.no_grad():
                    found = [(t, self.evolution.weights_at_time(t, base)) for t, _ in found]
            return {n: [th[i].detach() for _, th in found] for i, n in enumerate(self.evolution.targets)}
        if style == "static":
            return {n: [params[n].detach()] * (self.steps + 1) for n in self.evolution.targets}
        if style in ("explicit", "time_input"):
            base = tuple(params[n] for n in self.evolution.targets)
            pieces = getattr(self.evolution, "pieces", None)
            out: dict[str, list[Tensor]] = {n: [] for n in self.evolution.targets}
            with torch.no_grad():
                for n in range(self.steps + 1):
                    t = self.t0 + (self.t1 - self.t0) * n / self.steps
                    piece = None if pieces is None else min(n * pieces // self.steps, pieces - 1)
                    for name, w in zip(self.evolution.targets,
                                       self.evolution.weights_at_time(torch.tensor(t, dtype=torch.float64), base, piece)):
                        out[name].append(w.detach())
            return out
        if not self._trajectory:
            raise RuntimeError("weights_at() needs a forward pass first (with record_weights=True)")
        return {n: [step[i] for step in self._trajectory] for i, n in enumerate(self.field.names)}

    def extra_repr(self) -> str:
        evo = self.evolution_kind
        return (f"steps={self.steps}, method={self.method!r}, grad={self.grad_mode!r}, "
                f"t=[{self.t0}, {self.t1}], evolution={evo!r}, evolving={list(self.evolving_names)}")


@contextlib.contextmanager
def evolution_off(model: nn.Module) -> Iterator[nn.Module]:
    """Switch off the weight evolution of every ODE block of ``model`` that has a switch (each
    kind's ``off_meaning``: ode kinds θ(t) = θ(t0), linear / galerkin / untied θ0, time_input t
    frozen at t0); blocks without an evolution or with a static one are left as they are.
    Restores every block on exit, even on error."""
    with contextlib.ExitStack() as stack:
        for m in model.modules():
            if isinstance(m, ODEBlock) and m.evolution is not None and m.evolution.off_meaning is not None:
                stack.enter_context(m.evolution.off())
        yield model
