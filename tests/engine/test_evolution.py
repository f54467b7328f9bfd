"""Tests for anodev2.evolution: conservative operators, the RDA family, its parameterisation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

import anodev2
from anodev2.evolution import (
    EVOLUTION_KINDS,
    RDAEvolution,
    StaticEvolution,
    WeightEvolution,
    build_evolution,
    neumann_laplacian,
    stencil_matrices,
    upwind_advection,
)
from anodev2.models import build

D64 = torch.float64
T0 = torch.tensor(0.0)
SHAPES = {"layer1.conv1.weight": torch.Size([4, 3, 3, 3]), "conv2.weight": torch.Size([2, 4, 5, 5])}
TERM_COUNT = {"static": 0, "diffusion": 1, "advection": 2, "reaction": 1, "rda": 4}
METHODS = ("euler", "midpoint", "heun", "rk4")


def random_coefficients(evo: RDAEvolution, seed: int = 0, fraction: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-channel random coefficients filling ``fraction`` of every bound (diffusion >= 0)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in evo.coefficients().items():
        low, high = evo.bounds()[key.rsplit("/", 1)[1]]
        u = torch.rand(value.shape, generator=gen, dtype=D64)
        out[key] = fraction * (low + (high - low) * u)
    return out


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize("size", [(1, 1), (1, 4), (2, 2), (3, 3), (4, 6), (7, 5)])
def test_stencil_matrices_match_pad_reference_operators(size):
    h, w = size
    s = stencil_matrices(h, w)
    assert s.shape == (5, h * w, h * w)
    x = torch.randn(3, 2, h, w, dtype=D64)
    a_x, a_y = torch.tensor([0.2, -0.1, 0.0], dtype=D64), torch.tensor([-0.25, 0.05, 0.1], dtype=D64)
    flat = x.reshape(3, 2, h * w)
    lap = (flat @ s[0].T).reshape(x.shape)
    adv = torch.stack([flat[o] @ (a_x[o] * s[1] + a_x[o].abs() * s[2] + a_y[o] * s[3] + a_y[o].abs() * s[4]).T
                       for o in range(3)]).reshape(x.shape)
    torch.testing.assert_close(lap, neumann_laplacian(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(adv, upwind_advection(x, a_x, a_y), rtol=0, atol=1e-12)
    # every stencil conserves the sum (zero column sums) and annihilates constants (zero row sums)
    assert s.sum(dim=1).abs().max() < 1e-12 and s.sum(dim=2).abs().max() < 1e-12


def test_upwind_advection_moves_a_spike_downwind_and_wraps():
    w = torch.zeros(1, 1, 3, 4, dtype=D64)
    w[..., 1, 3] = 1.0  # last column
    q = upwind_advection(w, torch.tensor([0.5], dtype=D64), torch.tensor([0.0], dtype=D64))
    expected = torch.zeros_like(w)
    expected[..., 1, 3], expected[..., 1, 0] = -0.5, 0.5  # leaves the right edge, enters the left
    assert torch.equal(q, expected)
    q = upwind_advection(w, torch.tensor([0.0], dtype=D64), torch.tensor([-0.5], dtype=D64))
    expected = torch.zeros_like(w)
    expected[..., 1, 3], expected[..., 0, 3] = -0.5, 0.5  # negative a_y: towards smaller row
    assert torch.equal(q, expected)


def test_neumann_laplacian_of_quadratic_is_two_in_interior():
    y, x = torch.meshgrid(torch.arange(6, dtype=D64), torch.arange(7, dtype=D64), indexing="ij")
    lap = neumann_laplacian((x**2 + 3 * y**2).expand(1, 1, 6, 7))
    torch.testing.assert_close(lap[..., 1:-1, 1:-1], torch.full_like(lap[..., 1:-1, 1:-1], 8.0))


def test_operator_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 dims"):
        neumann_laplacian(torch.zeros(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        neumann_laplacian([[1.0, 2.0]])
    with pytest.raises(ValueError, match="grid must be at least 1x1, got 0x3"):
        stencil_matrices(0, 3)


# ---------------------------------------------------------------- stability (step matrices)


def step_matrix(evo: RDAEvolution, shape, method: str, h: float) -> torch.Tensor:
    """The explicit one-step matrix over one kH*kW slice per output channel: ``[O, HW, HW]``,
    column c = one solver step applied to the unit vector e_c. One solve for all columns: the
    same coefficients on a weight with one input channel per unit vector (slices evolve
    independently, coefficients are per output channel)."""
    o, _, kh, kw = shape
    cells = kh * kw
    wide = build_evolution(evo.kind, {"w": (o, cells, kh, kw)}, d_max=evo.d_max, a_max=evo.a_max,
                           r_max=evo.r_max).double()
    wide.set_coefficients(evo.coefficients())
    w0 = torch.eye(cells, dtype=D64).reshape(1, cells, kh, kw).expand(o, -1, -1, -1).contiguous()
    (w1,) = anodev2.odeint(lambda t, th: wide(t, th), (w0,), 0.0, h, steps=1, method=method, grad="backprop")
    return w1.reshape(o, cells, cells).transpose(1, 2)  # [o, p, c]


@settings(max_examples=25, deadline=None, derandomize=True)  # reproducible in CI
@given(
    kh=st.sampled_from([1, 3, 5, 7]) | st.integers(1, 7),
    kw=st.sampled_from([1, 3, 5, 7]) | st.integers(1, 7),
    channels=st.integers(1, 3),
    method=st.sampled_from(METHODS),
    h=st.sampled_from([1.0, 0.5, 0.25]),
    at_bound=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_step_matrix_is_doubly_stochastic_within_bounds(kh, kw, channels, method, h, at_bound, seed):
    shape = (channels, 1, kh, kw)
    evo = build_evolution("rda", {"w": shape}).double()
    coeffs = random_coefficients(evo, seed)
    coeffs["w/reaction"] = torch.zeros(channels, dtype=D64)  # the linear part only (reaction: below)
    if at_bound:  # the extreme of (*): D = d_max, |a_x| = |a_y| = a_max with random signs
        sign = torch.where(torch.rand(2, channels, generator=torch.Generator().manual_seed(seed)) < 0.5, -1.0, 1.0)
        coeffs.update({"w/diffusion": torch.full((channels,), evo.d_max, dtype=D64),
                       "w/advection_x": evo.a_max * sign[0].double(), "w/advection_y": evo.a_max * sign[1].double()})
    evo.set_coefficients(coeffs)
    m = step_matrix(evo, shape, method, h)
    assert m.min() >= -1e-12, "a negative entry: not a convex combination"
    torch.testing.assert_close(m.sum(dim=-2), torch.ones(channels, kh * kw, dtype=D64), rtol=0, atol=1e-12)  # sum kept
    torch.testing.assert_close(m.sum(dim=-1), torch.ones(channels, kh * kw, dtype=D64), rtol=0, atol=1e-12)  # convex
    # hence the max-norm of a random slice does not grow
    w0 = torch.randn(channels, kh * kw, dtype=D64)
    w1 = torch.einsum("opc,oc->op", m, w0)
    assert (w1.abs().amax(dim=-1) <= w0.abs().amax(dim=-1) + 1e-12).all()


@pytest.mark.parametrize("method", METHODS)
def test_step_matrix_beyond_the_bound_is_not_convex(method):
    """The property test can fail: twice the bound (h = 2) gives negative entries."""
    shape = (1, 1, 3, 3)
    evo = build_evolution("rda", {"w": shape}).double()
    evo.set_coefficients({"w/diffusion": evo.d_max, "w/advection_x": evo.a_max, "w/advection_y": -evo.a_max})
    assert step_matrix(evo, shape, method, 1.0).min() >= -1e-12
    assert step_matrix(evo, shape, method, 2.0).min() < -0.1


@pytest.mark.parametrize("r", [-1.0, -0.3, 0.7, 1.0])
def test_reaction_euler_step_keeps_sign_and_is_bounded(r):
    evo = build_evolution("reaction", {"w": (2, 3, 3, 3)}).double()
    evo.set_coefficients({"w/reaction": r})
    w = 3 * torch.randn(2, 3, 3, 3, dtype=D64)
    (q,) = evo(T0, (w,))
    torch.testing.assert_close(q, r * torch.tanh(w), rtol=0, atol=0)
    w1 = w + 1.0 * q  # h = 1, h|r| <= 1
    assert (w1 * w >= 0).all() and (w1.abs() <= 2 * w.abs() + 1e-12).all()


# ---------------------------------------------------------------- evolutions: API


def test_kinds_and_types():
    assert EVOLUTION_KINDS == ("static", "diffusion", "advection", "reaction", "rda")
    for kind in EVOLUTION_KINDS:
        evo = build_evolution(kind, SHAPES)
        assert isinstance(evo, WeightEvolution) and evo.kind == kind
        assert evo.targets == ("layer1.conv1.weight", "conv2.weight")
        assert evo.is_static == (kind == "static")
        assert isinstance(evo, StaticEvolution if kind == "static" else RDAEvolution)


def test_static_returns_zeros_and_has_no_coefficients():
    evo = build_evolution("static", SHAPES)
    thetas = tuple(torch.randn(s) for s in SHAPES.values())
    for o, th in zip(evo(T0, thetas), thetas):
        assert torch.equal(o, torch.zeros_like(th))
    assert list(evo.parameters()) == [] and evo.coefficients() == {} and evo.bounds() == {}
    evo.set_coefficients({})
    with pytest.raises(ValueError, match=r"kind 'static' has no coefficients; got keys \['w/diffusion'\]"):
        evo.set_coefficients({"w/diffusion": 0.0})


@pytest.mark.parametrize("kind", ["diffusion", "advection", "reaction", "rda"])
def test_one_coefficient_tensor_per_kernel_size(kind):
    shapes = {**SHAPES, "b.weight": torch.Size([3, 2, 3, 3]), "pw.weight": torch.Size([5, 2, 1, 1])}
    evo = build_evolution(kind, shapes)
    params = dict(evo.named_parameters())
    n = TERM_COUNT[kind]
    assert {k: tuple(p.shape) for k, p in params.items()} == {"raw.k3x3": (n, 7), "raw.k5x5": (n, 2),
                                                              "raw.k1x1": (n, 5)}
    coeffs = evo.coefficients()
    assert len(coeffs) == n * len(shapes)
    for key, value in coeffs.items():
        target, term = key.rsplit("/", 1)
        assert term in evo.bounds() and value.shape == (shapes[target][0],) and not value.requires_grad
    evo2 = build_evolution(kind, shapes)
    evo.set_coefficients(random_coefficients(evo, 1, 0.5))
    evo2.load_state_dict(evo.state_dict())
    for key, value in evo.coefficients().items():
        assert torch.equal(value, evo2.coefficients()[key])


def test_bounds_per_kind_and_options():
    assert build_evolution("rda", SHAPES).bounds() == {
        "diffusion": (0.0, 0.125), "advection_x": (-0.25, 0.25), "advection_y": (-0.25, 0.25),
        "reaction": (-1.0, 1.0)}
    assert build_evolution("diffusion", SHAPES, d_max=0.25).bounds() == {"diffusion": (0.0, 0.25)}
    assert build_evolution("advection", SHAPES, a_max=0.5).bounds() == {"advection_x": (-0.5, 0.5),
                                                                         "advection_y": (-0.5, 0.5)}


@pytest.mark.parametrize("kind", ["diffusion", "advection", "reaction", "rda"])
def test_zero_initialisation_gives_q_exactly_zero_and_draws_no_random_numbers(kind):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    evo = build_evolution(kind, SHAPES)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in evo.parameters())
    for q, w in zip(evo(T0, tuple(torch.randn(s) for s in SHAPES.values())), SHAPES.values()):
        assert q.shape == w and torch.equal(q, torch.zeros(w))


def test_random_initialisation_is_small_per_channel_deterministic_and_in_bounds():
    torch.manual_seed(0)
    evo = build_evolution("rda", SHAPES, init_scale=0.01)
    torch.manual_seed(0)
    again = build_evolution("rda", SHAPES, init_scale=0.01)
    bounds = evo.bounds()
    for key, value in evo.coefficients().items():
        low, high = bounds[key.rsplit("/", 1)[1]]
        assert torch.equal(value, again.coefficients()[key])
        assert (value >= low).all() and (value <= high).all() and value.abs().max() < 0.05
        assert value.unique().numel() == value.numel()  # per-channel different


def test_set_coefficients_is_exact_and_validates():
    evo = build_evolution("rda", SHAPES)
    values = random_coefficients(evo, 3)
    values["conv2.weight/diffusion"] = torch.tensor([0.0, 0.125], dtype=D64)  # both ends of the bound
    values["conv2.weight/advection_y"] = torch.tensor([-0.25, 0.25], dtype=D64)
    evo.set_coefficients(values)
    for key, value in evo.coefficients().items():
        assert torch.equal(value, values[key].float()), key
    evo.set_coefficients({"conv2.weight/reaction": -0.5})
    assert torch.equal(evo.coefficient("reaction", "conv2.weight"), torch.tensor([-0.5, -0.5]))
    cases = [
        ({"conv2.weight/diffusion": -0.01}, r"'conv2.weight/diffusion': value -0.01 is outside the bound "
                                            r"\[0.0, 0.125\] of term 'diffusion'"),
        ({"conv2.weight/advection_x": torch.tensor([0.1, 0.3])}, r"value 0.3 is outside the bound \[-0.25, 0.25\]"),
        ({"conv2.weight/reaction": 1.5}, r"value 1.5 is outside the bound \[-1.0, 1.0\] of term 'reaction'"),
        ({"conv9.weight/reaction": 0.0}, r"unknown coefficient 'conv9.weight/reaction'; keys are"),
        ({"conv2.weight/growth": 0.0}, r"unknown coefficient 'conv2.weight/growth'"),
        ({"conv2.weight/reaction": torch.zeros(3)}, r"needs a number or a tensor of shape \[2\], got shape \(3,\)"),
        ({"conv2.weight/reaction": math.nan}, "must be finite"),
    ]
    for mapping, message in cases:
        with pytest.raises(ValueError, match=message):
            evo.set_coefficients(mapping)
    with pytest.raises(ValueError, match="unknown coefficient 'conv2.weight/reaction'"):
        build_evolution("diffusion", SHAPES).set_coefficients({"conv2.weight/reaction": 0.0})
    with pytest.raises(ValueError, match="not learned by kind 'diffusion'"):
        build_evolution("diffusion", SHAPES).coefficient("reaction", "conv2.weight")


def test_optimizer_steps_are_projected_into_the_bounds_and_can_come_back():
    evo = build_evolution("rda", {"w": (2, 1, 3, 3)}).double()
    w = torch.randn(2, 1, 3, 3, dtype=D64)
    opt = torch.optim.SGD(evo.parameters(), lr=1.0)
    (p,) = evo.parameters()
    p.grad = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [5.0, -5.0]], dtype=D64)
    opt.step()  # D -> -1 (below 0), a_x -> +1 (above a_max), r -> -5, +5
    evo(T0, (w,))  # the next forward projects
    c = evo.coefficients()
    assert torch.equal(c["w/diffusion"], torch.tensor([0.0, 1.0 / 8], dtype=D64))
    assert torch.equal(c["w/advection_x"], torch.tensor([0.25, -0.25], dtype=D64))
    assert torch.equal(c["w/reaction"], torch.tensor([-1.0, 1.0], dtype=D64))
    assert torch.equal(p.detach(), torch.stack([c[f"w/{t}"] for t in evo.terms]))  # stored value projected
    # at the bound the gradient still flows: one step inwards moves the coefficient by lr * grad
    p.grad = torch.full_like(p, 0.0)
    p.grad[0, 1] = 0.05
    opt.step()
    evo(T0, (w,))
    assert evo.coefficients()["w/diffusion"][1].item() == pytest.approx(0.125 - 0.05, abs=1e-15)


def test_gradcheck_rda_wrt_weights_and_coefficients():
    torch.manual_seed(2)
    shapes = {"a.conv.weight": torch.Size([2, 2, 3, 3]), "b.weight": torch.Size([3, 1, 3, 3]),
              "c.weight": torch.Size([2, 1, 2, 3]), "pw.weight": torch.Size([1, 2, 1, 1])}
    evo = build_evolution("rda", shapes).double()
    names = [n for n, _ in evo.named_parameters()]
    raws = tuple((0.05 + 0.05 * torch.rand_like(p)).requires_grad_() for p in evo.parameters())  # inside bounds
    thetas = tuple(torch.randn(s, dtype=D64, requires_grad=True) for s in shapes.values())
    k = len(thetas)

    def fn(*args):
        return functional_call(evo, dict(zip(names, args[k:])), (T0, tuple(args[:k])))

    assert torch.autograd.gradcheck(fn, thetas + raws)


def test_rda_is_the_sum_of_its_terms_on_mixed_shapes():
    shapes = {"a.weight": (3, 2, 3, 3), "b.weight": (2, 3, 3, 3), "c.weight": (2, 2, 2, 5), "d.weight": (2, 1, 1, 1)}
    evo = build_evolution("rda", shapes).double()
    coeffs = random_coefficients(evo, 5)
    evo.set_coefficients(coeffs)
    thetas = tuple(torch.randn(s, dtype=D64) for s in shapes.values())
    for name, w, q in zip(shapes, thetas, evo(T0, thetas)):
        c = {t: coeffs[f"{name}/{t}"].view(-1, 1, 1, 1) for t in evo.terms}
        ref = (c["diffusion"] * neumann_laplacian(w)
               + upwind_advection(w, coeffs[f"{name}/advection_x"], coeffs[f"{name}/advection_y"])
               + c["reaction"] * torch.tanh(w))
        torch.testing.assert_close(q, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_device(dtype):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        evo = build_evolution("rda", SHAPES).to(device=device, dtype=dtype)
        evo.set_coefficients(random_coefficients(evo, 0, 0.5))
        thetas = tuple(torch.randn(s, dtype=dtype, device=device, requires_grad=True) for s in SHAPES.values())
        out = evo(T0.to(device), thetas)
        for q, w in zip(out, thetas):
            assert q.dtype == dtype and q.device == w.device and q.shape == w.shape
        sum(q.sum() for q in out).backward()
        assert all(p.grad is not None for p in evo.parameters()) and all(w.grad is not None for w in thetas)
    evo = build_evolution("rda", SHAPES)  # float64 weights through float32 coefficients keep float64
    assert all(q.dtype == D64 for q in evo(T0, tuple(torch.randn(s, dtype=D64) for s in SHAPES.values())))


def _compute_ops(evo: WeightEvolution, thetas) -> int:
    """Number of aten ops other than views / metadata in one evaluation of ``evo``."""
    from torch.profiler import ProfilerActivity, profile

    views = ("view", "reshape", "_reshape_alias", "unsqueeze", "squeeze", "t", "transpose", "permute",
             "split", "split_with_sizes", "narrow", "slice", "select", "as_strided", "expand", "detach",
             "_unsafe_view", "alias", "lift_fresh", "empty", "result_type")
    evo(T0, thetas)  # projection check happens once
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        evo(T0, thetas)
    names = [e.name for e in prof.events() if e.name.startswith("aten::")]
    top = [n for n in names if n.split("::")[1] not in views]
    return len(top)


def test_op_count_is_independent_of_the_number_of_targets():
    # Targets are batched per (kernel size, in_channels): the op count depends on how many such
    # batches there are (here 2: in_channels 4 and 5, out_channels varying), not on the targets
    # (from 2 targets per batch on: a single-target batch skips the concatenation).
    counts = []
    for n in (4, 16):
        shapes = {f"c{i}.weight": (3 + i, 4 + i % 2, 3, 3) for i in range(n)}
        evo = build_evolution("rda", shapes)
        evo.set_coefficients(random_coefficients(evo, 0, 0.5))
        counts.append(_compute_ops(evo, tuple(torch.randn(s) for s in shapes.values())))
    assert counts[0] == counts[1] and counts[0] > 0


# ---------------------------------------------------------------- in a real network


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    anode = build("resnet4", "anode", width=0.25).double()
    torch.manual_seed(seed)
    v2 = build("resnet4", "anodev2", width=0.25).double()
    v2.load_state_dict(anode.state_dict(), strict=False)
    return anode, v2


def _loss_and_grads(model, x, y, params):
    torch.manual_seed(1)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    return loss, torch.autograd.grad(loss, params)


def test_anodev2_with_zero_coefficients_is_anode_bitwise():
    anode, v2 = _pair()
    x, y = torch.randn(4, 3, 32, 32, dtype=D64), torch.tensor([0, 3, 5, 9])
    evolutions = [m for m in v2.modules() if isinstance(m, RDAEvolution)]
    assert evolutions and all(torch.equal(p, torch.zeros_like(p)) for e in evolutions for p in e.parameters())
    names = [n for n, _ in anode.named_parameters()]
    v2_params = dict(v2.named_parameters())
    loss_a, grads_a = _loss_and_grads(anode, x, y, list(anode.parameters()))
    loss_b, grads_b = _loss_and_grads(v2, x, y, [v2_params[n] for n in names])
    assert torch.equal(loss_a, loss_b)
    for name, ga, gb in zip(names, grads_a, grads_b):
        assert torch.equal(ga, gb), name
    # and the evolution is not inert: non-zero coefficients change the output
    evolutions[0].set_coefficients(random_coefficients(evolutions[0], 0))
    loss_c, _ = _loss_and_grads(v2, x, y, [v2_params[names[0]]])
    assert not torch.equal(loss_a, loss_c)


def test_coefficient_gradient_at_initialisation_is_nonzero_and_per_channel_different():
    _, v2 = _pair()
    x, y = torch.randn(8, 3, 32, 32, dtype=D64), torch.arange(8)
    evo = next(m for m in v2.modules() if isinstance(m, RDAEvolution))
    (grad,) = _loss_and_grads(v2, x, y, list(evo.parameters()))[1]
    for row, term in enumerate(evo.terms):
        g = grad[row]
        assert g.abs().min() > 0, term
        assert g.unique().numel() == g.numel(), term  # per-channel different


# ---------------------------------------------------------------- bad inputs


def test_unknown_kind_lists_allowed():
    with pytest.raises(ValueError, match="unknown evolution kind 'heat'.*static.*rda"):
        build_evolution("heat", SHAPES)
    with pytest.raises(TypeError, match="kind must be a str"):
        build_evolution(None, SHAPES)
    with pytest.raises(ValueError, match="allowed"):
        RDAEvolution("static", SHAPES)


@pytest.mark.parametrize("kind", EVOLUTION_KINDS)
def test_non_4d_target_names_target_and_shape(kind):
    with pytest.raises(ValueError, match=r"'fc\.weight' has shape \(10, 64\)"):
        build_evolution(kind, {"conv.weight": (2, 2, 3, 3), "fc.weight": (10, 64)})
    with pytest.raises(ValueError, match=r"'c\.weight' has shape \(2, 0, 3, 3\)"):
        build_evolution(kind, {"c.weight": (2, 0, 3, 3)})


def test_bad_options_and_shapes():
    with pytest.raises(TypeError, match=r"unknown weight-evolution option\(s\) \['dmax'\]"):
        build_evolution("rda", SHAPES, dmax=0.1)
    with pytest.raises(TypeError, match=r"unknown weight-evolution option"):
        build_evolution("static", SHAPES, dmax=0.1)
    with pytest.raises(ValueError, match="d_max must be > 0"):
        build_evolution("diffusion", SHAPES, d_max=0.0)
    with pytest.raises(ValueError, match="a_max must be > 0"):
        build_evolution("advection", SHAPES, a_max=-1.0)
    with pytest.raises(ValueError, match=r"4·d_max \+ 2·a_max = 1.5 > 1 for terms \('diffusion', 'advection_x'"):
        build_evolution("rda", SHAPES, d_max=0.25)
    with pytest.raises(ValueError, match=r"4·d_max \+ 2·a_max = 1.2 > 1 for terms \('diffusion',\)"):
        build_evolution("diffusion", SHAPES, d_max=0.3)
    build_evolution("diffusion", SHAPES, d_max=0.25)  # advection not learned: the whole budget for D
    with pytest.raises(ValueError, match="r_max must be <= 1 so that h·|r| <= 1"):
        build_evolution("reaction", SHAPES, r_max=2.0)
    with pytest.raises(ValueError, match="init_scale must be >= 0"):
        build_evolution("rda", SHAPES, init_scale=-1e-3)
    with pytest.raises(TypeError, match="finite real number"):
        build_evolution("rda", SHAPES, d_max="big")
    with pytest.raises(TypeError, match="target_shapes must be a mapping"):
        build_evolution("rda", [(2, 2, 3, 3)])
    with pytest.raises(TypeError, match=r"target_shapes\['w'\] must be"):
        build_evolution("rda", {"w": "3x3"})
    with pytest.raises(ValueError, match="collide"):
        build_evolution("rda", {"a.b": (1, 1, 3, 3), "a__b": (1, 1, 3, 3)})


def test_forward_rejects_bad_thetas():
    evo = build_evolution("rda", SHAPES)
    good = tuple(torch.randn(s) for s in SHAPES.values())
    with pytest.raises(ValueError, match="thetas has 1 tensors but the evolution has 2 targets"):
        evo(T0, good[:1])
    with pytest.raises(ValueError, match=r"'conv2\.weight' has shape \(2, 4, 3, 3\), expected \(2, 4, 5, 5\)"):
        evo(T0, (good[0], torch.randn(2, 4, 3, 3)))
    with pytest.raises(TypeError, match="tuple of tensors"):
        evo(T0, good[0])
