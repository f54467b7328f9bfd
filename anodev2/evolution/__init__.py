"""Time-varying weights for ODE blocks: ANODEV2's coupled weight ODE ``dθ/dt = q(θ, p)`` and the
families a reviewer compares it with, behind one interface and one registry.

Registry (``registry.py``; adding a kind is one entry of ``EVOLUTIONS``)::

    EVOLUTIONS: dict[str, EvolutionSpec]      # kind -> factory, options, style, default targets, off meaning
    EVOLUTION_KINDS = tuple(EVOLUTIONS)       # ("static", "diffusion", "advection", "reaction", "rda",
                                              #  "generator", "linear", "galerkin", "untied", "time_input")
    evolution_options(kind) -> {name: (default, description, (low, high))}
    check_evolution_options(kind, options) -> options with defaults filled in (TypeError / ValueError)
    build_evolution(kind, {"conv1.weight": torch.Size([O, I, k, k]), ...}, t0=0., t1=1., steps=None, **options)
    describe_kinds() -> text for --help

Spellings accepted by ``ODEBlock(evolution=...)`` and ``anodev2.models.build(..., evolution=...)``:
a kind name, a mapping ``{"kind": name, "targets": [...], **options}``, or a built evolution.

Interface (``WeightEvolution``, ``base.py``), by ``style``:

* ``"ode"`` (diffusion, advection, reaction, rda, generator): θ is part of the ODE state;
  ``evo(t, thetas) -> dθ/dt`` (tuple in, tuple out, same shapes, no batch dim). Optional split of
  that work: ``evo.prepare(dtype) -> tensors`` (the part that depends on the coefficients only,
  e.g. the folded per-channel operators) and ``evo.rates_prepared(thetas, tensors)`` (bitwise
  ``evo(t, thetas)``); an ODE block prepares once per solve and hands the tensors to the adjoint
  in place of the evolution's parameters. ``prepare`` returning None (the default) means the
  block calls ``evo(t, thetas)`` at every evaluation.
* ``"explicit"`` (linear, galerkin, untied): θ(t) is closed-form;
  ``evo.weights_at_time(t, base, piece=None) -> tuple of θ(t)`` with ``base`` the θ0 tensors (the
  parameters of f). Nothing is integrated; exact for any solver; gradients through ordinary
  parameters in every gradient mode. ``evo.pieces``: untied's number of sub-intervals (the
  block splits its solve there), else None.
* ``"time_input"``: f sees t as an extra input channel of every target conv; ``evo.attach(f)``
  once, ``with evo.at_time(t): f(z)``; ``weights_at_time`` reports the effective kernels ``[W, t·V]``.
* ``"static"``: θ constant.

Common to all: ``kind``, ``style``, ``targets``, ``target_shapes``, ``is_static``,
``coefficients()`` -> ``{"<target>/<term>": Tensor}`` (detached; exactly what the forward uses),
``bounds()`` -> ``{term: (low, high)}``, ``set_coefficients(mapping)`` (exact; out of bound ->
ValueError), ``parameter_count()``, ``check_span(t0, t1, steps)``, ``off()`` (context manager;
``off_meaning`` says what "evolution off" means: θ(t) = θ(t0) for the ode kinds, θ0 for linear /
galerkin (galerkin: the time-average), θ0 in every piece for untied, t frozen at t0 for
time_input) and ``enabled``.

On the block (``anodev2.ODEBlock``): ``block.evolution_off()`` (context manager),
``anodev2.block.evolution_off(model)`` (every block of a network), ``block.weights_at(at="steps")``
(θ(t_0..t_Nt)) and ``block.weights_at(at="evaluations")`` with ``block.evaluation_times()`` (θ at
every time f was evaluated in the last forward); parameter counts: ``evo.parameter_count()``,
``anodev2.models.describe(model)[i]["evolution_params"]``, ``param_counts(model)["evolution"]``.

Zero initialisation (the default of every kind) makes a block exactly the ANODE block with the
same weights. Zhang et al. 2019 (ANODEV2), arXiv 1906.04596; the operators are described in
``rda``, ``generator``, ``schedules``, ``time_input`` and docs/EVOLUTION.md.
"""

from __future__ import annotations

from .base import StaticEvolution, WeightEvolution, safe_key
from .generator import GeneratorEvolution, generator_bases
from .operators import STENCILS, neumann_laplacian, stencil_matrices, upwind_advection
from .rda import ADVECTION_TERMS, RDA_DEFAULTS, RDA_KINDS, RDA_TERMS, RDAEvolution, check_options
from .registry import (
    EVOLUTION_KINDS,
    EVOLUTIONS,
    EvolutionSpec,
    Option,
    Span,
    build_evolution,
    check_evolution_options,
    describe_kinds,
    evolution_options,
)
from .schedules import GalerkinSchedule, LinearSchedule, UntiedSchedule, WeightSchedule, galerkin_basis
from .slices import SliceEvolution, Term
from .time_input import TimeInputEvolution

__all__ = [
    "EVOLUTIONS",
    "EVOLUTION_KINDS",
    "EvolutionSpec",
    "Option",
    "Span",
    "build_evolution",
    "check_evolution_options",
    "evolution_options",
    "describe_kinds",
    "WeightEvolution",
    "StaticEvolution",
    "SliceEvolution",
    "Term",
    "RDAEvolution",
    "RDA_KINDS",
    "RDA_TERMS",
    "RDA_DEFAULTS",
    "ADVECTION_TERMS",
    "check_options",
    "GeneratorEvolution",
    "generator_bases",
    "WeightSchedule",
    "LinearSchedule",
    "GalerkinSchedule",
    "UntiedSchedule",
    "galerkin_basis",
    "TimeInputEvolution",
    "STENCILS",
    "stencil_matrices",
    "neumann_laplacian",
    "upwind_advection",
    "safe_key",
]
