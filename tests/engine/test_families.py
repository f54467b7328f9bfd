"""The families of time-varying weights behind one registry (issue 17 item 2, issue 16 item 2):
registry API and errors, zero init == ANODE for every family, explicit schedules evaluated at
the stage times (untied: every stage of step n uses piece n), time_input == Chen et al.'s
concatenated t channel, the generator's stability, evolution-off, parameter counts, views."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

import anodev2
from anodev2 import ODEBlock
from anodev2.evolution import (
    EVOLUTION_KINDS,
    EVOLUTIONS,
    EvolutionSpec,
    Option,
    StaticEvolution,
    build_evolution,
    check_evolution_options,
    describe_kinds,
    evolution_options,
    galerkin_basis,
)
from anodev2.models import build, describe, format_description, ode_blocks, param_counts
from helpers import compile_and_compare

D = torch.float64
FAMILIES = tuple(k for k in EVOLUTION_KINDS if k != "static")
EXPLICIT = ("linear", "galerkin", "untied")


class F(nn.Module):
    """conv - GroupNorm - tanh - conv: a small f whose output depends on every weight."""

    def __init__(self, c: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(1, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, z):
        return self.conv2(torch.tanh(self.norm(self.conv1(z))))


def make(kind, seed=0, perturb=False, **block):
    torch.manual_seed(seed)
    blk = ODEBlock(F(), evolution=kind, **block).to(D)
    if perturb and blk.evolution is not None:  # move every own parameter well away from 0, inside bounds
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for p in blk.evolution.parameters():
                p.copy_(0.05 * torch.rand_like(p) + 0.02)
    return blk


def loss_and_grads(blk, x, params):
    loss = blk(x).sin().square().sum()
    return loss, torch.autograd.grad(loss, params)


# ---------------------------------------------------------------- registry


def test_registry_lists_every_kind_with_its_options():
    assert EVOLUTION_KINDS == tuple(EVOLUTIONS) == ("static", "diffusion", "advection", "reaction", "rda",
                                                    "generator", "linear", "galerkin", "untied", "time_input")
    for kind, spec in EVOLUTIONS.items():
        assert spec.kind == kind and spec.style in ("static", "ode", "explicit", "time_input")
        opts = evolution_options(kind)
        assert set(opts) == set(spec.options)
        for name, (default, description, bounds) in opts.items():
            assert description and check_evolution_options(kind, {name: default})[name] == default
        assert (spec.off is None) == (kind == "static")
    assert evolution_options("diffusion")["d_max"] == (0.25, "diffusion bound: 0 <= D <= d_max", (0.0, 1.0))
    assert "d_max" not in evolution_options("rda")  # rda: speeds + reaction, no separate D (identifiability)
    assert evolution_options("rda")["a_max"][0] == 0.25
    assert evolution_options("galerkin")["basis_size"][0] == 3 and evolution_options("untied") == {
        "pieces": (0, "number of equal sub-intervals; 0 = one per solver step", (0, None))}
    text = describe_kinds()
    assert all(f"{k}:" in text for k in EVOLUTION_KINDS) and "basis = 'legendre' one of legendre|fourier" in text


def test_errors_name_the_registry():
    allowed = " | ".join(EVOLUTION_KINDS)
    with pytest.raises(ValueError, match=f"unknown evolution kind 'heat'; allowed: {allowed}"):
        build_evolution("heat", {"w": (1, 1, 3, 3)})
    with pytest.raises(TypeError, match="kind must be a str"):
        build_evolution(None, {"w": (1, 1, 3, 3)})
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['K'\] for evolution kind 'galerkin'; allowed: basis, "
                                        r"basis_size"):
        build_evolution("galerkin", {"w": (1, 1, 3, 3)}, K=4)
    with pytest.raises(ValueError, match=r"'basis' of evolution kind 'galerkin' must be one of legendre \| fourier"):
        build_evolution("galerkin", {"w": (1, 1, 3, 3)}, basis="chebyshev")
    with pytest.raises(ValueError, match=r"'basis_size' of evolution kind 'galerkin' must be in \[2, None\], got 1"):
        build_evolution("galerkin", {"w": (1, 1, 3, 3)}, basis_size=1)
    with pytest.raises(TypeError, match="'pieces' of evolution kind 'untied' must be an int"):
        build_evolution("untied", {"w": (1, 1, 3, 3)}, pieces=2.5)
    with pytest.raises(ValueError, match="'untied' needs pieces >= 1 or the block's steps"):
        build_evolution("untied", {"w": (1, 1, 3, 3)})
    with pytest.raises(ValueError, match="pieces=2 need steps to be a multiple of 2"):
        ODEBlock(F(), steps=3, evolution={"kind": "untied", "pieces": 2})
    with pytest.raises(ValueError, match=r"built for \[t0, t1\] = \[0.0, 1.0\] but the block integrates \[0.0, 2.0\]"):
        ODEBlock(F(), t1=2.0, evolution=build_evolution("linear", {"conv1.weight": (3, 3, 3, 3)}))
    with pytest.raises(ValueError, match=f"allowed: {allowed}"):
        ODEBlock(F(), evolution="heat")
    with pytest.raises(ValueError, match="evolution kind 'static' has no evolution-off switch"):
        with make("static").evolution_off():
            pass


def test_adding_a_kind_is_one_registry_entry(monkeypatch):
    entry = EvolutionSpec("frozen", lambda shapes, span, note: StaticEvolution(shapes), "test kind", "static",
                          {"note": Option(1, "an int option", int, 0, 3)})
    monkeypatch.setitem(EVOLUTIONS, "frozen", entry)
    blk = ODEBlock(F(), evolution={"kind": "frozen", "note": 2})
    assert isinstance(blk.evolution, StaticEvolution)
    with pytest.raises(ValueError, match=r"'note' of evolution kind 'frozen' must be in \[0, 3\], got 5"):
        ODEBlock(F(), evolution={"kind": "frozen", "note": 5})
    model = build("resnet4", "anodev2", width=0.25, evolution={"kind": "frozen"})
    assert [r["evolution"] for r in describe(model)] == ["static"]  # the instance's own kind name


@pytest.mark.parametrize("kind", FAMILIES)
def test_every_family_is_reachable_from_block_models_and_options(kind):
    blk = ODEBlock(F(), evolution={"kind": kind, **{k: v[0] for k, v in evolution_options(kind).items()}})
    assert blk.evolution.kind == kind and blk.evolution_kind == kind
    model = build("resnet4", "anodev2", width=0.25, evolution=kind)
    (row,) = describe(model)
    assert row["evolution"] == kind and row["evolving"] and row["evolution_params"] > 0
    assert param_counts(model)["evolution"] == row["evolution_params"]
    assert f"evolution={kind} ({row['evolution_params']:,} params)" in format_description(model)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind,method", [(k, "euler") for k in FAMILIES] + [(k, "rk4") for k in
                                                                            ("rda", "generator", "untied", "galerkin")])
def test_zero_initialisation_is_anode(kind, method):
    """Every family starts as the ANODE block with the same weights: outputs and the gradients of
    every parameter of f equal, bitwise -- except (a) untied, to round-off: its solve is split at
    the piece boundaries, so step sizes differ in the last bit; (b) ode kinds under rk4, gradients
    to round-off: θ0's gradient arrives through the state's adjoint, which sums the same stage
    terms in another order (outputs still bitwise; euler: bitwise)."""
    x = torch.randn(2, 3, 5, 5, dtype=D)
    anode, fam = make(None, method=method, steps=2), make(kind, method=method, steps=2)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in fam.evolution.parameters())
    la, ga = loss_and_grads(anode, x, list(anode.f.parameters()))
    lb, gb = loss_and_grads(fam, x, list(fam.f.parameters()))
    if kind == "untied":
        torch.testing.assert_close(lb, la, rtol=1e-14, atol=0)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)
    elif fam.evolution.style == "ode" and method == "rk4":
        assert torch.equal(la, lb)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-15)
    else:
        assert torch.equal(la, lb)
        for a, b in zip(ga, gb):
            assert torch.equal(a, b)


@pytest.mark.parametrize("grad", [anodev2.Checkpoint(checkpoints=1), "backsolve"])
@pytest.mark.parametrize("kind", EXPLICIT + ("time_input", "generator"))
def test_gradient_modes_agree_for_every_family(kind, grad):
    """Checkpoint == Backprop in float64 (the schedules' parameters are ordinary parameters of
    the solve; tests/engine/test_block.py checks every kind with all states held and with c = 1, 0);
    Backsolve (the continuous adjoint, an inexact baseline) is close: rk4 x 4 within 1e-2
    (galerkin 6.9e-3, 2.8e-4 at rk4 x 8: fourth-order convergence)."""
    x = torch.randn(1, 3, 4, 4, dtype=D)
    ref = make(kind, perturb=True, method="rk4", steps=4, grad="backprop")
    blk = make(kind, perturb=True, method="rk4", steps=4, grad=grad)
    _, g_ref = loss_and_grads(ref, x, list(ref.parameters()))
    _, g = loss_and_grads(blk, x, list(blk.parameters()))
    names = [n for n, _ in blk.named_parameters()]
    assert any(n.startswith("evolution.") for n in names)
    for n, a, b in zip(names, g, g_ref):
        assert b.abs().sum() > 0, n
        err = ((a - b).norm() / b.norm()).item()
        assert err < (1e-2 if grad == "backsolve" else 1e-12), (n, err)


# ---------------------------------------------------------------- explicit schedules


def test_linear_and_galerkin_weights_are_evaluated_at_every_stage_time():
    for kind in ("linear", "galerkin"):
        blk = make(kind, perturb=True, method="rk4", steps=2)
        blk(torch.randn(1, 3, 4, 4, dtype=D))
        times = blk.evaluation_times()
        assert times == pytest.approx([0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0])  # f sees θ up to t1 with rk4
        seen = blk.weights_at("evaluations")["conv1.weight"]
        theta0 = blk.f.conv1.weight.detach()
        own = blk.evolution.weights["conv1__weight"].detach()
        for t, w in zip(times, seen):
            if kind == "linear":
                expected = theta0 + t * own
            else:
                phi = torch.tensor([2 * t - 1, (3 * (2 * t - 1) ** 2 - 1) / 2], dtype=D)  # P_1, P_2 on [0, 1]
                expected = theta0 + torch.tensordot(phi, own, dims=1)
            torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)
        steps = blk.weights_at()["conv1.weight"]
        assert len(steps) == 3 and torch.equal(steps[0], seen[0]) and torch.equal(steps[2], seen[-1])


@pytest.mark.parametrize("basis", ["legendre", "fourier"])
def test_galerkin_basis_has_mean_zero_so_theta0_is_the_time_average(basis):
    t = torch.linspace(0, 1, 20001, dtype=D)[:-1] + 0.5 / 20000  # midpoint rule on [0, 1]
    assert galerkin_basis(torch.tensor(0.25, dtype=D), 5, basis, 0.0, 1.0).shape == (4,)
    phi = galerkin_basis(t, 5, basis, 0.0, 1.0).T  # elementwise in t: [N, 4]
    torch.testing.assert_close(phi.mean(0), torch.zeros(4, dtype=D), rtol=0, atol=1e-8)
    gram = phi.T @ phi / len(t)  # orthogonal functions
    assert (gram - torch.diag(torch.diag(gram))).abs().max() < 1e-8


@pytest.mark.parametrize("method,steps,pieces", [("rk4", 3, 0), ("heun", 4, 2), ("midpoint", 2, 1)])
def test_untied_every_stage_of_a_step_uses_that_steps_weights(method, steps, pieces):
    """A hand-written loop: step n of size h with f's weights θ0 + δ_{piece(n)} at every RK stage,
    including rk4's / heun's stage at the step's end time (which a time lookup would assign to the
    next piece)."""
    blk = make({"kind": "untied", "pieces": pieces}, perturb=True, method=method, steps=steps)
    npieces = blk.evolution.pieces
    assert npieces == (pieces or steps)
    x = torch.randn(2, 3, 5, 5, dtype=D)
    out = blk(x)
    h, z = 1.0 / steps, x
    names = ("conv1.weight", "conv2.weight")
    for n in range(steps):
        k = n * npieces // steps
        weights = {m: blk.f.get_parameter(m) + (blk.evolution.weights[m.replace(".", "__")][k - 1] if k else 0)
                   for m in names}
        z = anodev2.odeint(lambda t, y: functional_call(blk.f, weights, (y,)), z, n * h, (n + 1) * h, steps=1,
                           method=method, grad="backprop")
    torch.testing.assert_close(out, z, rtol=1e-13, atol=1e-13)
    # a lookup by time alone puts t_{n+1} in the next piece; the block does not
    assert blk.evolution.piece_of(h) == min(npieces - 1, 1 * npieces // steps if npieces < steps else 1)
    views = blk.weights_at()["conv1.weight"]
    assert len(views) == steps + 1 and torch.equal(views[-1], views[-2])


# ---------------------------------------------------------------- time_input


class ConcatF(nn.Module):
    """Chen et al.'s ConcatConv2d f: every conv sees [z, t·1] (reference implementation)."""

    def __init__(self, f: F, v1: torch.Tensor, v2: torch.Tensor):
        super().__init__()
        self.f, self.v1, self.v2 = f, v1, v2

    def forward(self, t, z):
        def cat(x):
            return torch.cat([x, t.to(x.dtype) * torch.ones_like(x[:, :1])], dim=1)

        w1 = torch.cat([self.f.conv1.weight, self.v1], dim=1)
        w2 = torch.cat([self.f.conv2.weight, self.v2], dim=1)
        h = torch.tanh(self.f.norm(nn.functional.conv2d(cat(z), w1, None, padding=1)))
        return nn.functional.conv2d(cat(h), w2, self.f.conv2.bias, padding=1)


def test_time_input_is_the_concatenated_time_channel():
    blk = make("time_input", perturb=True, method="rk4", steps=3)
    assert blk.evolution.targets == ("conv1.weight", "conv2.weight")
    x = torch.randn(2, 3, 5, 5, dtype=D)
    v1, v2 = (blk.evolution.weights[k].detach() for k in ("conv1__weight", "conv2__weight"))
    ref = anodev2.odeint(ConcatF(blk.f, v1, v2), x, 0.0, 1.0, steps=3, method="rk4", grad="backprop")
    torch.testing.assert_close(blk(x), ref, rtol=1e-13, atol=1e-13)
    with pytest.raises(RuntimeError, match="called outside an ODE block's solve"):
        blk.f(x)
    kernels = blk.weights_at()["conv1.weight"]
    assert kernels[0].shape == (3, 4, 3, 3) and torch.equal(kernels[3][:, 3:], v1)  # [W, t V] at t = 1
    model = build("sqnxt23", "anodev2", width=0.125, evolution="time_input")
    _, block = ode_blocks(model)[0]
    assert len(block.evolving_names) == len([m for m in block.f.modules() if isinstance(m, nn.Conv2d)])  # 1x1 too


# ---------------------------------------------------------------- generator


@pytest.mark.parametrize("seed", range(3))
def test_generator_is_stable_by_construction(seed):
    """Re(eig M_o) <= 0 and ||exp(t M_o)||_2 <= 1 for random coefficients, at the bounds, and
    after out-of-bound writes (the clamp on every use keeps the symmetric part negative)."""
    evo = build_evolution("generator", {"w": (4, 2, 3, 3)}).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in evo.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=D) * 2 - 0.5)  # some far out of bounds
    m = evo.operator("w")
    assert m.shape == (4, 9, 9)
    assert torch.linalg.eigvals(m).real.max() <= 1e-12
    sym = (m + m.transpose(1, 2)) / 2
    assert torch.linalg.eigvalsh(sym).max() <= 1e-12
    assert torch.linalg.matrix_norm(torch.linalg.matrix_exp(m), ord=2).max() <= 1 + 1e-12
    h = 1 / 3  # explicit Euler: ||I + hM||_2^2 <= 1 + h^2 ||M||_2^2 (growth second order in h)
    euler = torch.linalg.matrix_norm(torch.eye(9, dtype=D) + h * m, ord=2)
    assert (euler**2 <= 1 + h**2 * torch.linalg.matrix_norm(m, ord=2) ** 2 + 1e-12).all()
    c = evo.coefficients()
    assert c["w/skew"].shape == (4, 36) and c["w/damping"].shape == (4, 9)
    assert c["w/coupling"].min() >= 0 and c["w/skew"].abs().max() <= 0.125
    # the forward uses exactly these coefficients: dθ/dt = M θ on every slice
    theta = torch.randn(4, 2, 3, 3, dtype=D)
    (q,) = evo(torch.tensor(0.0), (theta,))
    torch.testing.assert_close(q.reshape(4, 2, 9), torch.einsum("opc,oic->oip", m, theta.reshape(4, 2, 9)),
                               rtol=0, atol=1e-13)


def test_generator_gradient_is_nonzero_at_zero_init():
    blk = make("generator", method="euler", steps=3)
    _, grads = loss_and_grads(blk, torch.randn(2, 3, 5, 5, dtype=D), list(blk.evolution.parameters()))
    for g in grads:
        assert (g != 0).float().mean() > 0.9


# ---------------------------------------------------------------- evolution off, counts, views


@pytest.mark.parametrize("kind", FAMILIES)
def test_evolution_off_means_what_the_registry_says(kind):
    """Inside evolution_off() every family is the ANODE block with f's stored weights (ode kinds:
    θ(t) = θ(t0); linear: θ0; galerkin: θ0 = the time-average; untied: θ0 in every piece;
    time_input: t frozen at t0 = 0, where the t channel contributes nothing)."""
    x = torch.randn(2, 3, 5, 5, dtype=D)
    blk, anode = make(kind, perturb=True, method="heun", steps=2), make(None, method="heun", steps=2)
    on = blk(x)
    with blk.evolution_off():
        off = blk(x)
        assert not blk.evolution.enabled
    assert blk.evolution.enabled and EVOLUTIONS[kind].off == blk.evolution.off_meaning
    assert torch.equal(blk(x), on)
    torch.testing.assert_close(off, anode(x), rtol=1e-13, atol=1e-14)
    assert not torch.allclose(on, off)
    # a backward run after leaving the context recomputes the forward that was switched off
    with blk.evolution_off():
        loss = blk(x).sin().square().sum()
    grads = torch.autograd.grad(loss, list(blk.f.parameters()))
    _, expected = loss_and_grads(anode, x, list(anode.f.parameters()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert len(blk.weights_at()["conv1.weight"]) == 3


def _own_count(kind: str, shape, steps: int = 3) -> int:
    o, i, kh, kw = shape
    cells, size = kh * kw, o * i * kh * kw
    return {"diffusion": o, "advection": 4 * o, "reaction": o * cells, "rda": o * (4 + cells),
            "generator": o * (cells * (cells - 1) + cells), "linear": size, "galerkin": 2 * size,
            "untied": (steps - 1) * size, "time_input": o * cells}[kind]


@pytest.mark.parametrize("kind", FAMILIES)
def test_parameter_counts_per_family(kind):
    shape = (4, 3, 3, 3)
    evo = build_evolution(kind, {"a.weight": shape, "b.weight": shape}, steps=3)
    assert evo.parameter_count() == 2 * _own_count(kind, shape)


@pytest.mark.parametrize("kind", FAMILIES)
def test_tensorboard_views_for_every_family(kind):
    from anodev2.training.tb_logging import collect_evolution

    blk = make(kind, perturb=True, method="euler", steps=3)
    blk(torch.randn(2, 3, 5, 5, dtype=D))
    found = collect_evolution([("block", blk)])["block"]
    assert set(found["weights"]) == {"conv1.weight", "conv2.weight"}
    assert found["coefficients"] and all(v.numel() > 0 for v in found["coefficients"].values())
    seen = blk.weights_at("evaluations")
    assert len(blk.evaluation_times()) == 3 and all(len(v) == 3 for v in seen.values())
    assert blk.evaluation_times() == pytest.approx([0, 1 / 3, 2 / 3])  # euler x 3 never shows f θ(1)
    # TensorBoard shows exactly what f saw: θ at 0, 1/3, 2/3 (euler evaluates once per time)
    assert found["times"] == blk.evaluation_times()
    for name, views in found["weights"].items():
        assert len(views) == 3 and all(torch.equal(a, b) for a, b in zip(views, seen[name]))


def test_time_input_survives_deepcopy_and_cannot_be_attached_twice():
    import copy

    blk = make("time_input", perturb=True, method="euler", steps=2)
    twin = copy.deepcopy(blk)
    with torch.no_grad():
        for p in twin.evolution.parameters():
            p.mul_(3.0)
    x = torch.randn(1, 3, 4, 4, dtype=D)
    assert not torch.allclose(twin(x), blk(x))  # the copy's hooks read the copy's t-channel kernels
    with torch.no_grad():
        for p in twin.evolution.parameters():
            p.div_(3.0)
    torch.testing.assert_close(twin(x), blk(x), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="already attached"):
        ODEBlock(blk.f, evolution=blk.evolution)


def test_model_level_evolution_off_and_options_through_models_build():
    from anodev2.block import evolution_off

    torch.manual_seed(0)
    model = build("resnet10", "anodev2", width=0.25, norm="group",
                  evolution={"kind": "galerkin", "basis_size": 4, "basis": "fourier"}).double()
    blocks = [b for _, b in ode_blocks(model)]
    assert len(blocks) == 7 and all(b.evolution.basis_size == 4 and b.evolution.basis == "fourier" for b in blocks)
    with torch.no_grad():
        for b in blocks:
            for p in b.evolution.parameters():
                p.normal_(0, 0.05)
    torch.manual_seed(0)
    anode = build("resnet10", "anode", width=0.25, norm="group").double()
    anode.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 8, 8, dtype=D)
    with evolution_off(model):
        assert not any(b.evolution.enabled for b in blocks)
        torch.testing.assert_close(model(x), anode(x), rtol=1e-13, atol=1e-13)
    assert all(b.evolution.enabled for b in blocks) and not torch.allclose(model(x), anode(x))


@pytest.mark.compile  # dynamo tracing, a few seconds
def test_ode_kind_compiles_without_graph_breaks_and_projects_its_bounds():
    """Under torch.compile the RDA evolution traces without a graph break (no storage pointers
    or data-dependent branch in its projection) and still projects out-of-bound stored values."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this platform / Python")
    torch._dynamo.reset()
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1))
    blk = ODEBlock(f, steps=2, method="euler", grad=anodev2.Backprop(), evolution="rda")
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), blk, nn.Flatten(), nn.Linear(32, 3))
    x = torch.randn(2, 1, 4, 4)
    blk.evolution.set_coefficients({f"{n}/{t}": 0.5 * blk.evolution.bounds()[t][1]
                                    for n in blk.evolution.targets for t in blk.evolution.terms})

    compiled, breaks = compile_and_compare(net, x)
    assert not breaks, breaks
    with torch.no_grad():
        blk.evolution.coef["advection_up_k3x3"].fill_(7.0)
    compiled(x)
    assert torch.equal(blk.evolution.coef["advection_up_k3x3"].detach(), torch.full((4, 1), 0.25))


@pytest.mark.parametrize("kind", EXPLICIT + ("time_input",))
def test_set_coefficients_of_unbounded_families_round_trips(kind):
    evo = build_evolution(kind, {"a.weight": (2, 3, 3, 3)}, steps=3)
    values = {k: torch.randn(v.shape, dtype=D) for k, v in evo.coefficients().items()}
    evo.set_coefficients(values)
    for k, v in evo.coefficients().items():
        assert torch.equal(v, values[k].float())
    key = next(iter(values))
    with pytest.raises(ValueError, match="unknown coefficient 'a.weight/nope'"):
        evo.set_coefficients({"a.weight/nope": 0.0})
    with pytest.raises(ValueError, match="needs a number or a tensor of shape"):
        evo.set_coefficients({key: torch.zeros(7)})
    with pytest.raises(ValueError, match="must be finite"):
        evo.set_coefficients({key: float("inf")})
    assert all(torch.equal(v, values[k].float()) for k, v in evo.coefficients().items())  # nothing changed
