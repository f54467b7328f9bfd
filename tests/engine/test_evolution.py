"""Tests for the ODE-style weight evolutions: finite-volume operators (outflow upwind advection,
Neumann diffusion), the RDA family and its stability bound on explicit step matrices, the
per-entry reaction under BatchNorm, and bounds that hold however parameters are written (W5)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import anodev2
from anodev2.evolution import (
    ADVECTION_TERMS,
    RDA_KINDS,
    RDAEvolution,
    SliceEvolution,
    StaticEvolution,
    Term,
    WeightEvolution,
    build_evolution,
    neumann_laplacian,
    stencil_matrices,
    upwind_advection,
)
from anodev2.models import build, ode_blocks

D64 = torch.float64
T0 = torch.tensor(0.0)
SHAPES = {"layer1.conv1.weight": torch.Size([4, 3, 3, 3]), "conv2.weight": torch.Size([2, 4, 5, 5])}
METHODS = ("euler", "midpoint", "heun", "rk4")
SPEEDS = ADVECTION_TERMS  # right, left, down, up


def random_coefficients(evo: RDAEvolution, seed: int = 0, fraction: float = 1.0) -> dict[str, torch.Tensor]:
    """Random coefficients filling ``fraction`` of every bound, in the shapes coefficients() reports."""
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
    speeds = torch.rand(4, 3, dtype=D64)
    flat = x.reshape(3, 2, h * w)
    lap = (flat @ s[0].T).reshape(x.shape)
    adv = torch.stack([flat[o] @ sum(speeds[k, o] * s[1 + k] for k in range(4)).T for o in range(3)]).reshape(x.shape)
    torch.testing.assert_close(lap, neumann_laplacian(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(adv, upwind_advection(x, *speeds), rtol=0, atol=1e-12)
    # diffusion conserves the sum and annihilates constants
    assert s[0].sum(dim=0).abs().max() < 1e-12 and s[0].sum(dim=1).abs().max() < 1e-12
    for k in range(1, 5):  # advection: off-diagonal >= 0, row sums 0 (interior) or -1 (upwind wall)
        off = s[k] - torch.diag(torch.diag(s[k]))
        assert off.min() >= 0
        assert set(s[k].sum(dim=1).tolist()) <= {0.0, -1.0}


def test_advection_has_outflow_walls_and_never_wraps():
    w = torch.zeros(1, 1, 3, 4, dtype=D64)
    w[..., 1, 3] = 1.0  # last column
    half, zero = torch.tensor([0.5], dtype=D64), torch.tensor([0.0], dtype=D64)
    q = upwind_advection(w, half, zero, zero, zero)  # moving right: the spike leaves the kernel
    expected = torch.zeros_like(w)
    expected[..., 1, 3] = -0.5
    assert torch.equal(q, expected)  # nothing enters the opposite (left) edge
    q = upwind_advection(w, zero, half, zero, zero)  # moving left: towards the interior
    expected[..., 1, 2] = 0.5
    assert torch.equal(q, expected)
    q = upwind_advection(w, zero, zero, zero, half)  # moving up (smaller row)
    expected = torch.zeros_like(w)
    expected[..., 1, 3], expected[..., 0, 3] = -0.5, 0.5
    assert torch.equal(q, expected)
    # issue 17's case: a Sobel-x kernel advected right for three Euler steps of 1/3 keeps its
    # left column's magnitude from growing and gets nothing from its right column
    evo = build_evolution("advection", {"w": (1, 1, 3, 3)}).double()
    evo.set_coefficients({"w/advection_right": 0.25})
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=D64).view(1, 1, 3, 3)
    (out,) = anodev2.odeint(evo, (sobel,), 0.0, 1.0, steps=3, method="euler", grad="backprop")
    torch.testing.assert_close(out[..., 0], sobel[..., 0] * (1 - 0.25 / 3) ** 3, rtol=0, atol=1e-15)
    assert (out[..., 2] > 0).all() and out.abs().max() <= sobel.abs().max()


def test_neumann_laplacian_of_quadratic_is_constant_in_interior():
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
    """The explicit one-step matrix over one kH*kW slice per output channel: ``[O, HW, HW]``
    (row p = output cell, column c = input cell). One solve for all columns: the same
    coefficients on a weight with one input channel per unit vector (slices evolve
    independently; no reaction, so the step is linear)."""
    o, _, kh, kw = shape
    cells = kh * kw
    wide = build_evolution(evo.kind, {"w": (o, cells, kh, kw)}, **evo.options).double()
    wide.set_coefficients(evo.coefficients())
    w0 = torch.eye(cells, dtype=D64).reshape(1, cells, kh, kw).expand(o, -1, -1, -1).contiguous()
    (w1,) = anodev2.odeint(lambda t, th: wide(t, th), (w0,), 0.0, h, steps=1, method=method, grad="backprop")
    return w1.reshape(o, cells, cells).transpose(1, 2)


@settings(max_examples=25, deadline=None, derandomize=True)  # reproducible in CI
@given(
    kh=st.sampled_from([1, 3, 5, 7]) | st.integers(1, 7),
    kw=st.sampled_from([1, 3, 5, 7]) | st.integers(1, 7),
    channels=st.integers(1, 3),
    method=st.sampled_from(METHODS),
    h=st.sampled_from([1.0, 0.5, 0.25]),
    at_bound=st.booleans(),
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(["rda", "diffusion", "advection"]),
)
def test_step_matrix_is_nonnegative_with_row_sums_at_most_one(kh, kw, channels, method, h, at_bound, seed, kind):
    """(*) h·(4D + Σ speeds) <= 1  =>  the step is entrywise >= 0 with row sums <= 1 (max-norm
    non-increasing), for every method; interior rows sum to exactly 1 (constants kept)."""
    shape = (channels, 1, kh, kw)
    evo = build_evolution(kind, {"w": shape}).double()
    coeffs = random_coefficients(evo, seed)
    if "reaction" in evo.terms:
        coeffs["w/reaction"] = torch.zeros(channels, kh, kw, dtype=D64)  # linear part (reaction: below)
    if at_bound:  # the extreme of (*): every coefficient at its upper bound
        coeffs.update({f"w/{t}": high for t, (_, high) in evo.bounds().items() if t != "reaction"})
    evo.set_coefficients(coeffs)
    m = step_matrix(evo, shape, method, h)
    assert m.min() >= -1e-12, "a negative entry: not a sub-convex combination"
    assert m.sum(dim=-1).max() <= 1 + 1e-12
    w0 = torch.randn(channels, kh * kw, dtype=D64)
    w1 = torch.einsum("opc,oc->op", m, w0)
    assert (w1.abs().amax(dim=-1) <= w0.abs().amax(dim=-1) + 1e-12).all()
    if not at_bound and kh > 2 and kw > 2 and method == "euler":  # interior cell: row sums to 1
        centre = (kh // 2) * kw + kw // 2
        torch.testing.assert_close(m[:, centre].sum(dim=-1), torch.ones(channels, dtype=D64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_step_matrix_beyond_the_bound_is_not_nonnegative(method):
    """The property test can fail: twice the bound (h = 2) gives negative entries."""
    shape = (1, 1, 3, 3)
    evo = build_evolution("rda", {"w": shape}).double()
    evo.set_coefficients({f"w/{t}": evo.a_max for t in SPEEDS})
    assert step_matrix(evo, shape, method, 1.0).min() >= -1e-12
    assert step_matrix(evo, shape, method, 2.0).min() < -0.1


@pytest.mark.parametrize("seed", range(4))
def test_euler_step_with_reaction_grows_the_max_norm_by_at_most_one_plus_h_r_max(seed):
    evo = build_evolution("rda", {"w": (3, 4, 3, 3)}).double()
    evo.set_coefficients(random_coefficients(evo, seed))
    evo.set_coefficients({"w/reaction": evo.r_max * torch.sign(torch.randn(3, 3, 3, dtype=D64))})
    w = 3 * torch.randn(3, 4, 3, 3, dtype=D64)
    h = 1.0
    (q,) = evo(T0, (w,))
    w1 = w + h * q
    norm0, norm1 = w.flatten(1).abs().amax(1), w1.flatten(1).abs().amax(1)
    assert (norm1 <= (1 + h * evo.r_max) * norm0 + 1e-12).all()


@pytest.mark.parametrize("r", [-1.0, -0.3, 0.7, 1.0])
def test_reaction_is_per_kernel_entry_keeps_sign_and_is_bounded(r):
    evo = build_evolution("reaction", {"w": (2, 3, 3, 3)}).double()
    rates = r * torch.linspace(0, 1, 9, dtype=D64).view(1, 3, 3).expand(2, 3, 3)
    evo.set_coefficients({"w/reaction": rates})
    w = 3 * torch.randn(2, 3, 3, 3, dtype=D64)
    (q,) = evo(T0, (w,))
    torch.testing.assert_close(q, rates.unsqueeze(1) * torch.tanh(w), rtol=0, atol=0)
    w1 = w + 1.0 * q  # h = 1, h|r| <= 1
    assert (w1 * w >= 0).all() and (w1.abs() <= 2 * w.abs() + 1e-12).all()


# ---------------------------------------------------------------- evolutions: API


def test_rda_kinds_and_types():
    assert RDA_KINDS == ("diffusion", "advection", "reaction", "rda")
    for kind in ("static",) + RDA_KINDS:
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


@pytest.mark.parametrize("kind", RDA_KINDS)
def test_one_coefficient_tensor_per_term_and_kernel_size(kind):
    shapes = {**SHAPES, "b.weight": torch.Size([3, 2, 3, 3]), "pw.weight": torch.Size([5, 2, 1, 1])}
    evo = build_evolution(kind, shapes)
    params = {k: tuple(p.shape) for k, p in evo.named_parameters()}
    cells = {"k3x3": 9, "k5x5": 25, "k1x1": 1}
    channels = {"k3x3": 7, "k5x5": 2, "k1x1": 5}
    expected = {f"coef.{t}_{g}": (channels[g], cells[g] if t == "reaction" else 1) for t in evo.terms for g in cells}
    assert params == expected
    coeffs = evo.coefficients()
    assert len(coeffs) == len(evo.terms) * len(shapes)
    for key, value in coeffs.items():
        target, term = key.rsplit("/", 1)
        o, _, kh, kw = shapes[target]
        assert value.shape == ((o, kh, kw) if term == "reaction" else (o,)) and not value.requires_grad
    evo2 = build_evolution(kind, shapes)
    evo.set_coefficients(random_coefficients(evo, 1, 0.5))
    evo2.load_state_dict(evo.state_dict())
    for key, value in evo.coefficients().items():
        assert torch.equal(value, evo2.coefficients()[key])


def test_bounds_per_kind_and_options():
    speeds = {t: (0.0, 0.25) for t in SPEEDS}
    assert build_evolution("rda", SHAPES).bounds() == {**speeds, "reaction": (-1.0, 1.0)}  # no D: identifiable
    assert build_evolution("diffusion", SHAPES).bounds() == {"diffusion": (0.0, 0.25)}
    assert build_evolution("advection", SHAPES).bounds() == {t: (0.0, 0.25) for t in SPEEDS}
    assert build_evolution("advection", SHAPES, a_max=0.1).bounds() == {t: (0.0, 0.1) for t in SPEEDS}
    assert build_evolution("reaction", SHAPES, r_max=0.5).bounds() == {"reaction": (-0.5, 0.5)}


@pytest.mark.parametrize("kind", RDA_KINDS)
def test_zero_initialisation_gives_q_exactly_zero_and_draws_no_random_numbers(kind):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    evo = build_evolution(kind, SHAPES)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in evo.parameters())
    for q, w in zip(evo(T0, tuple(torch.randn(s) for s in SHAPES.values())), SHAPES.values()):
        assert q.shape == w and torch.equal(q, torch.zeros(w))


def test_random_initialisation_is_small_deterministic_and_in_bounds():
    torch.manual_seed(0)
    evo = build_evolution("rda", SHAPES, init_scale=0.01)
    torch.manual_seed(0)
    again = build_evolution("rda", SHAPES, init_scale=0.01)
    bounds = evo.bounds()
    for key, value in evo.coefficients().items():
        low, high = bounds[key.rsplit("/", 1)[1]]
        assert torch.equal(value, again.coefficients()[key])
        assert (value >= low).all() and (value <= high).all() and value.abs().max() < 0.05
        assert value.unique().numel() == value.numel()  # per-channel (and per-entry) different


def test_set_coefficients_is_exact_and_validates():
    evo = build_evolution("rda", SHAPES)
    values = random_coefficients(evo, 3)
    values["conv2.weight/advection_up"] = torch.tensor([0.0, 0.25], dtype=D64)  # both ends of the bound
    evo.set_coefficients(values)
    for key, value in evo.coefficients().items():
        assert torch.equal(value, values[key].float()), key
    evo.set_coefficients({"conv2.weight/reaction": -0.5})  # a number broadcasts to [O, kH, kW]
    assert torch.equal(evo.coefficient("reaction", "conv2.weight"), torch.full((2, 5, 5), -0.5))
    cases = [
        ({"conv2.weight/advection_down": -0.01}, r"'conv2.weight/advection_down': value -0.01 is outside the "
                                                 r"bound \[0.0, 0.25\] of term 'advection_down'"),
        ({"conv2.weight/advection_right": torch.tensor([0.1, 0.3])}, r"value 0.3 is outside the bound \[0.0, 0.25\]"),
        ({"conv2.weight/advection_left": -0.1}, r"value -0.1 is outside the bound \[0.0, 0.25\]"),
        ({"conv2.weight/diffusion": 0.0}, r"unknown coefficient 'conv2.weight/diffusion'"),  # rda has no D
        ({"conv2.weight/reaction": 1.5}, r"value 1.5 is outside the bound \[-1.0, 1.0\] of term 'reaction'"),
        ({"conv9.weight/reaction": 0.0}, r"unknown coefficient 'conv9.weight/reaction'; keys are"),
        ({"conv2.weight/advection_x": 0.0}, r"unknown coefficient 'conv2.weight/advection_x'"),
        ({"conv2.weight/advection_up": torch.zeros(3)}, r"needs a number or a tensor of shape \[2\]"),
        ({"conv2.weight/reaction": torch.zeros(2, 3, 3)}, r"shape \[2, 5, 5\]"),
        ({"conv2.weight/reaction": math.nan}, "must be finite"),
    ]
    for mapping, message in cases:
        with pytest.raises(ValueError, match=message):
            evo.set_coefficients(mapping)
    with pytest.raises(ValueError, match="unknown coefficient 'conv2.weight/reaction'"):
        build_evolution("diffusion", SHAPES).set_coefficients({"conv2.weight/reaction": 0.0})
    with pytest.raises(ValueError, match="not learned by kind 'diffusion'"):
        build_evolution("diffusion", SHAPES).coefficient("reaction", "conv2.weight")


def test_optimizer_steps_are_projected_and_the_gradient_flows_at_the_bounds():
    evo = build_evolution("diffusion", {"w": (2, 1, 3, 3)}).double()
    w = torch.randn(2, 1, 3, 3, dtype=D64)
    # at the initial value 0 (the lower bound) the gradient is not cut off
    (q,) = evo(T0, (w,))
    (grad,) = torch.autograd.grad(q.square().sum() - (q * w).sum(), list(evo.parameters()))
    assert grad.abs().min() > 0
    opt = torch.optim.SGD(evo.parameters(), lr=1.0)
    (p,) = evo.parameters()
    p.grad = torch.tensor([[1.0], [-1.0]], dtype=D64)
    opt.step()  # D -> -1 (below 0), +1 (above d_max)
    evo(T0, (w,))  # the next forward projects
    assert torch.equal(evo.coefficients()["w/diffusion"], torch.tensor([0.0, 0.25], dtype=D64))
    assert torch.equal(p.detach().flatten(), torch.tensor([0.0, 0.25], dtype=D64))  # stored value projected
    p.grad = torch.tensor([[0.0], [0.05]], dtype=D64)  # one step inwards moves it by lr * grad
    opt.step()
    evo(T0, (w,))
    assert evo.coefficients()["w/diffusion"][1].item() == pytest.approx(0.25 - 0.05, abs=1e-15)


WRITE_PATHS = ("load_state_dict_assign", "data_fill", "vector_to_parameters")


def _write(evo: RDAEvolution, how: str, value: float) -> None:
    if how == "load_state_dict_assign":
        evo.load_state_dict({k: torch.full_like(v, value) for k, v in evo.state_dict().items()}, assign=True)
    elif how == "data_fill":
        for p in evo.parameters():
            p.data.fill_(value)
    else:
        vector_to_parameters(torch.full_like(parameters_to_vector(evo.parameters()), value), evo.parameters())


@pytest.mark.parametrize("kind", ["rda", "generator"])
@pytest.mark.parametrize("how", WRITE_PATHS)
def test_bounds_hold_however_parameters_are_written(how, kind):
    """Issue 18 W5: out-of-bound values written by any path are clamped in the forward,
    coefficients() reports exactly what the forward uses, and every path gives the same output."""
    shapes = {"a.weight": (3, 2, 3, 3), "b.weight": (2, 3, 3, 3)}
    thetas = tuple(torch.randn(s, dtype=D64) for s in shapes.values())
    reference = build_evolution(kind, shapes).double()
    reference.set_coefficients({f"{n}/{t}": reference.bounds()[t][1] for n in shapes for t in reference.terms})
    expected = reference(T0, thetas)
    evo = build_evolution(kind, shapes).double()
    evo(T0, thetas)  # the projection bookkeeping has seen the old tensors
    _write(evo, how, 5.0)
    reported = evo.coefficients()
    for key, value in reported.items():
        assert torch.equal(value, torch.full_like(value, evo.bounds()[key.rsplit("/", 1)[1]][1])), key
    for q, e in zip(evo(T0, thetas), expected):
        assert torch.equal(q, e)
    assert all(torch.equal(v, evo.coefficients()[k]) for k, v in reported.items())
    _write(evo, how, -5.0)
    low = {t: b[0] for t, b in evo.bounds().items()}
    assert all(torch.equal(v, torch.full_like(v, low[k.rsplit("/", 1)[1]])) for k, v in evo.coefficients().items())


def test_gradcheck_rda_wrt_weights_and_coefficients():
    torch.manual_seed(2)
    shapes = {"a.conv.weight": torch.Size([2, 1, 3, 3]), "b.weight": torch.Size([1, 2, 3, 3]),
              "c.weight": torch.Size([1, 1, 2, 3]), "pw.weight": torch.Size([1, 2, 1, 1])}
    evo = build_evolution("rda", shapes).double()
    names = [n for n, _ in evo.named_parameters()]
    coefs = tuple((0.02 + 0.05 * torch.rand_like(p)).requires_grad_() for p in evo.parameters())  # inside bounds
    thetas = tuple(torch.randn(s, dtype=D64, requires_grad=True) for s in shapes.values())
    k = len(thetas)

    def fn(*args):
        return functional_call(evo, dict(zip(names, args[k:])), (T0, tuple(args[:k])))

    assert torch.autograd.gradcheck(fn, thetas + coefs, fast_mode=True)


def _condition(jac: torch.Tensor) -> float:
    sv = torch.linalg.svdvals(jac)
    return (sv[0] / sv[-1]).item()


def _q_jacobian(kind: str, w: torch.Tensor) -> torch.Tensor:
    """d q(w) / d(coefficients) (q is linear in them: exact at any value), [w.numel(), n_coefs]."""
    evo = build_evolution(kind, {"w": tuple(w.shape)}).double()
    names = [n for n, _ in evo.named_parameters()]
    values = tuple(torch.full_like(p, 0.05) for p in evo.parameters())
    jac = torch.autograd.functional.jacobian(
        lambda *p: functional_call(evo, dict(zip(names, p)), (T0, (w,)))[0].flatten(), values)
    return torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)


def test_rda_coefficients_are_identifiable_and_a_separate_diffusion_would_not_be():
    """rda = four speeds + per-entry reaction: the four U_dir have disjoint off-diagonal supports
    and the reaction spans the diagonal, so d q / d(coefficients) has full rank with a condition
    number independent of the weights' scale (first order in w for every coefficient). Adding the
    Neumann-diffusion column D·L w (the rda of before) creates a direction that q sees only at
    O(w³) (L = ΣU_dir + diag(walls), tanh w ≈ w): its condition number grows as 1/scale²."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 3, 3, dtype=D64, generator=gen)
    old, new = [], []
    for scale in (1e-1, 1e-2):
        jac = _q_jacobian("rda", scale * w)
        lap = neumann_laplacian(scale * w)
        d_columns = torch.stack([torch.where(torch.arange(3).view(3, 1, 1, 1) == o, lap, 0.0).flatten()
                                 for o in range(3)], dim=1)  # one D per output channel
        new.append(_condition(jac))
        old.append(_condition(torch.cat([d_columns, jac], dim=1)))
    # measured: rda 26.6 at both scales; with D 7.7e3 -> 7.7e5; the single terms 1.5 / 4.5 / 6.0
    assert new[0] < 50 and new[1] == pytest.approx(new[0], rel=0.05)
    assert old[0] > 5e3 and old[1] > 50 * old[0]
    singles = [_condition(_q_jacobian(k, 1e-2 * w)) for k in ("diffusion", "advection", "reaction")]
    assert max(singles) < 10 and new[1] < 10 * max(singles)


def _rda_with_diffusion(shapes) -> SliceEvolution:
    """The rda of before: Neumann diffusion D + the four speeds + per-entry reaction (bounds 1/8, 1/8, 1)."""
    def stencil(i):
        return lambda kh, kw: stencil_matrices(kh, kw)[i:i + 1]
    terms = [Term(name, 0.0, 0.125, stencil(i)) for i, name in enumerate(("diffusion",) + SPEEDS)]
    evo = SliceEvolution(shapes, terms + [Term("reaction", -1.0, 1.0)])
    evo.kind = "rda with D"
    return evo


def test_rda_block_outputs_determine_the_coefficients():
    """The identifiability check of experiments/recover_evolution.py --conditioning at a small
    scale: the Jacobian of a teacher block's outputs (conv3x3-tanh-conv3x3, 3 channels, rk4 x 1,
    4 inputs 5x5) w.r.t. all coefficients at values of 20-80 % of their bounds has a condition
    number within 10x of the single-term kinds' (measured: diffusion 3.5, advection 5.6, reaction
    18.0, rda 139); the rda of before (a separate D, ``_rda_with_diffusion``) 3.3e3."""
    conds = {}
    for kind in RDA_KINDS + ("with D",):
        torch.manual_seed(0)
        f = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Tanh(),
                                torch.nn.Conv2d(3, 3, 3, padding=1)).double()
        with torch.no_grad():
            for conv in (f[0], f[2]):
                conv.weight.mul_(2.0)
        shapes = {n: p.shape for n, p in f.named_parameters() if p.dim() == 4}
        evo = (_rda_with_diffusion(shapes) if kind == "with D" else build_evolution(kind, shapes)).double()
        gen = torch.Generator().manual_seed(1)
        values = {}
        for key, value in evo.coefficients().items():
            low, high = evo.bounds()[key.rsplit("/", 1)[1]]
            magnitude = max(abs(low), high) * (0.2 + 0.6 * torch.rand(value.shape, generator=gen, dtype=D64))
            values[key] = magnitude if low >= 0 else magnitude * torch.sign(torch.randn(value.shape, generator=gen))
        evo.set_coefficients(values)
        block = anodev2.ODEBlock(f, steps=1, method="rk4", grad="backprop", evolution=evo).double()
        x = torch.randn(4, 3, 5, 5, dtype=D64, generator=gen)
        names = [f"evolution.{n}" for n, _ in evo.named_parameters()]
        params = tuple(p.detach().clone() for p in evo.parameters())
        jac = torch.autograd.functional.jacobian(
            lambda *p: functional_call(block, dict(zip(names, p)), (x,)).flatten(), params)
        conds[kind] = _condition(torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1))
    singles = max(conds[k] for k in ("diffusion", "advection", "reaction"))
    assert singles < 100 and conds["rda"] < 10 * singles and conds["with D"] > 10 * conds["rda"], conds


def test_rda_is_the_sum_of_its_terms_on_mixed_shapes():
    shapes = {"a.weight": (3, 2, 3, 3), "b.weight": (2, 3, 3, 3), "c.weight": (2, 2, 2, 5), "d.weight": (2, 1, 1, 1)}
    evo = build_evolution("rda", shapes).double()
    coeffs = random_coefficients(evo, 5)
    evo.set_coefficients(coeffs)
    thetas = tuple(torch.randn(s, dtype=D64) for s in shapes.values())
    for name, w, q in zip(shapes, thetas, evo(T0, thetas)):
        ref = (upwind_advection(w, *(coeffs[f"{name}/{t}"] for t in SPEEDS))
               + coeffs[f"{name}/reaction"].unsqueeze(1) * torch.tanh(w))
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
    return len([n for n in names if n.split("::")[1] not in views])


def test_op_count_is_independent_of_the_number_of_targets():
    # Targets are batched per (kernel size, in_channels): the op count depends on how many such
    # batches there are (here 2), not on the number of targets (from 2 targets per batch on).
    counts = []
    for n in (4, 16):
        shapes = {f"c{i}.weight": (3 + i, 4 + i % 2, 3, 3) for i in range(n)}
        evo = build_evolution("rda", shapes)
        evo.set_coefficients(random_coefficients(evo, 0, 0.5))
        counts.append(_compute_ops(evo, tuple(torch.randn(s) for s in shapes.values())))
    assert counts[0] == counts[1] and counts[0] > 0


# ---------------------------------------------------------------- in a real network


def _pair(seed: int = 0, **options):
    torch.manual_seed(seed)
    anode = build("resnet4", "anode", width=0.25).double()
    torch.manual_seed(seed)
    v2 = build("resnet4", "anodev2", width=0.25, **options).double()
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
    evolutions[0].set_coefficients(random_coefficients(evolutions[0], 0))  # and it is not inert
    loss_c, _ = _loss_and_grads(v2, x, y, [v2_params[names[0]]])
    assert not torch.equal(loss_a, loss_c)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_every_coefficient_has_a_gradient_at_init_and_reaction_is_not_cancelled_by_normalisation(norm):
    """Issue 17 item 1(a): at initialisation under BatchNorm the mean |gradient| of rda's reaction
    coefficients is within 10x of diffusion's (the ``diffusion`` kind on the same network and
    weights: at zero coefficients both are the ANODE network) and of the mean speed's (measured,
    seed 0: diffusion/reaction 5.0x BatchNorm, 3.0x GroupNorm; speed/reaction 2.6x, 2.4x; the
    per-output-channel reaction of before gave 5.5e-7 vs 1.6e-3, ~3000x). Every coefficient (the
    one-sided speeds included: no kink at 0) gets a non-zero gradient, per channel different."""
    x, y = torch.randn(8, 3, 32, 32, dtype=D64, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    grads = {}
    for kind in ("rda", "diffusion"):
        _, v2 = _pair(norm=norm, evolution=kind)
        (_, block), = ode_blocks(v2)
        evo = block.evolution
        names = [n for n, _ in evo.named_parameters()]
        grads.update(zip(names, _loss_and_grads(v2, x, y, list(evo.parameters()))[1]))
    assert set(grads) == {f"coef.{t}_k3x3" for t in ("diffusion",) + SPEEDS + ("reaction",)}
    for name, g in grads.items():
        assert g.abs().min() > 0, name
        assert g.unique().numel() == g.numel(), name
    diffusion, reaction = grads["coef.diffusion_k3x3"].abs().mean(), grads["coef.reaction_k3x3"].abs().mean()
    speed = torch.stack([grads[f"coef.{t}_k3x3"].abs().mean() for t in SPEEDS]).mean()
    print(f"{norm}: diffusion {diffusion:.3g} speed {speed:.3g} reaction {reaction:.3g}; "
          f"diffusion/reaction {diffusion / reaction:.2f}, speed/reaction {speed / reaction:.2f}")
    assert diffusion / 10 < reaction < diffusion * 10
    assert speed / 10 < reaction < speed * 10


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kind", ("static",) + RDA_KINDS + ("generator",))
def test_non_4d_target_names_target_and_shape(kind):
    with pytest.raises(ValueError, match=r"'fc\.weight' has shape \(10, 64\)"):
        build_evolution(kind, {"conv.weight": (2, 2, 3, 3), "fc.weight": (10, 64)})
    with pytest.raises(ValueError, match=r"'c\.weight' has shape \(2, 0, 3, 3\)"):
        build_evolution(kind, {"c.weight": (2, 0, 3, 3)})


def test_bad_options_and_shapes():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['dmax'\] for evolution kind 'rda'; allowed: "
                                        r"a_max, init_scale, r_max"):
        build_evolution("rda", SHAPES, dmax=0.1)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['d_max'\] for evolution kind 'static'; allowed: none"):
        build_evolution("static", SHAPES, d_max=0.1)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['r_max'\] for evolution kind 'diffusion'"):
        build_evolution("diffusion", SHAPES, r_max=0.5)
    with pytest.raises(ValueError, match="d_max must be > 0"):
        build_evolution("diffusion", SHAPES, d_max=0.0)
    with pytest.raises(ValueError, match=r"option 'a_max' of evolution kind 'advection' must be in \[0.0, 1.0\]"):
        build_evolution("advection", SHAPES, a_max=-1.0)
    with pytest.raises(ValueError, match=r"4·d_max \+ 4·a_max = 1.2 > 1 for kind 'rda'"):
        build_evolution("rda", SHAPES, a_max=0.3)
    with pytest.raises(ValueError, match=r"4·d_max \+ 4·a_max = 1.2 > 1 for kind 'diffusion'"):
        build_evolution("diffusion", SHAPES, d_max=0.3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['d_max'\] for evolution kind 'rda'"):
        build_evolution("rda", SHAPES, d_max=0.1)  # no D in rda (not identifiable; module docstring)
    with pytest.raises(ValueError, match=r"must be in \[0.0, 1.0\], got 2.0"):
        build_evolution("reaction", SHAPES, r_max=2.0)
    with pytest.raises(ValueError, match=r"init_scale' of evolution kind 'rda' must be in \[0.0, None\]"):
        build_evolution("rda", SHAPES, init_scale=-1e-3)
    with pytest.raises(TypeError, match="finite real number"):
        build_evolution("rda", SHAPES, a_max="big")
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


def test_block_refuses_a_step_that_breaks_the_stability_bound():
    f = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1))
    with pytest.raises(ValueError, match=r"step h = \|t1 - t0\| / steps = 2 breaks the stability bound .* "
                                         r"use steps >= 2 or smaller bounds"):
        anodev2.ODEBlock(f, t1=2.0, steps=1, evolution="rda")
    anodev2.ODEBlock(f, t1=2.0, steps=2, evolution="rda")  # h = 1
    anodev2.ODEBlock(f, t1=2.0, steps=1, evolution={"kind": "rda", "a_max": 0.125, "r_max": 0.5})
