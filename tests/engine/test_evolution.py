"""Tests for anodev2.evolution: finite-difference operators and the RDA family."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from anodev2.evolution import (
    EVOLUTION_KINDS,
    RDAEvolution,
    StaticEvolution,
    WeightEvolution,
    build_evolution,
    grad_x,
    grad_y,
    laplacian,
    laplacian_and_gradients,
)

D64 = torch.float64
T0 = torch.tensor(0.0)
SHAPES = {"layer1.conv1.weight": torch.Size([4, 3, 3, 3]), "conv2.weight": torch.Size([2, 4, 5, 5])}
TERM_COUNT = {"static": 0, "diffusion": 1, "advection": 2, "reaction": 1, "rda": 4}


def grid(h: int, w: int, dtype=D64):
    """Row index y (dim -2) and column index x (dim -1), each [h, w]."""
    y, x = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    return y, x


def set_raw(evo: RDAEvolution, term: str, value) -> None:
    with torch.no_grad():
        for p in evo.raw[term].values():
            p.copy_(torch.as_tensor(value, dtype=p.dtype).expand_as(p))


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize("shape", [(2, 3, 3, 3), (1, 1, 5, 5), (2, 2, 4, 6), (3, 2, 1, 1), (2, 1, 1, 4)])
def test_laplacian_and_gradients_of_constant_are_zero(shape):
    w = torch.full(shape, 1.7, dtype=D64)
    for op in (laplacian, grad_x, grad_y):
        out = op(w)
        assert out.shape == w.shape and out.dtype == D64
        assert torch.equal(out, torch.zeros_like(w))


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (2, 2, 5, 4), (2, 1, 2, 2), (2, 2, 1, 5)])
def test_laplacian_conserves_slice_sum(shape):
    w = torch.randn(shape, dtype=D64)
    assert laplacian(w).sum(dim=(-2, -1)).abs().max() < 1e-12
    # Non-trivial: the Laplacian itself is not zero (so the test can fail).
    if shape[-1] * shape[-2] > 1:
        assert laplacian(w).abs().max() > 1e-3


def test_laplacian_of_quadratic_is_two_in_interior():
    y, x = grid(6, 7)
    for field, axis in ((x**2, -1), (y**2, -2)):
        lap = laplacian(field.expand(2, 3, 6, 7))
        assert torch.allclose(lap[..., 1:-1, 1:-1], torch.full_like(lap[..., 1:-1, 1:-1], 2.0))
        # Along the varying axis the zero-flux edges differ from 2 (ghost = edge value).
        edge = lap[..., :, 0] if axis == -1 else lap[..., 0, :]
        assert not torch.allclose(edge, torch.full_like(edge, 2.0))
    lap = laplacian((x**2 + 3 * y**2).expand(1, 1, 6, 7))
    assert torch.allclose(lap[..., 1:-1, 1:-1], torch.full_like(lap[..., 1:-1, 1:-1], 8.0))


def test_laplacian_explicit_stencil():
    w = torch.randn(2, 3, 4, 5, dtype=D64)
    ghost = torch.nn.functional.pad(w, (1, 1, 1, 1), mode="replicate")  # zero-flux ghost cells
    ref = (ghost[..., :-2, 1:-1] + ghost[..., 2:, 1:-1] + ghost[..., 1:-1, :-2] + ghost[..., 1:-1, 2:]
           - 4 * w)
    assert torch.allclose(laplacian(w), ref, atol=1e-12)


def test_gradient_orientation_x_last_dim_y_second_to_last():
    y, x = grid(4, 5)
    ramp_x = x.expand(2, 3, 4, 5)  # increases along columns (last dim)
    ramp_y = y.expand(2, 3, 4, 5)  # increases along rows (second-to-last dim)
    assert torch.equal(grad_x(ramp_x), torch.ones_like(ramp_x))
    assert torch.equal(grad_y(ramp_x), torch.zeros_like(ramp_x))
    assert torch.equal(grad_y(ramp_y), torch.ones_like(ramp_y))
    assert torch.equal(grad_x(ramp_y), torch.zeros_like(ramp_y))


def test_gradient_central_inside_one_sided_at_edges():
    w = torch.tensor([[0.0, 1.0, 4.0, 9.0]], dtype=D64)  # x^2 along x
    assert torch.allclose(grad_x(w), torch.tensor([[1.0, 2.0, 4.0, 5.0]], dtype=D64))
    assert torch.allclose(grad_y(w.T), torch.tensor([[1.0, 2.0, 4.0, 5.0]], dtype=D64).T)


def test_linear_ramp_has_exact_slope_everywhere():
    y, x = grid(5, 5)
    sx = torch.tensor([0.5, -2.0, 1.25], dtype=D64).view(3, 1, 1, 1)
    sy = torch.tensor([3.0, 0.0, -0.75], dtype=D64).view(3, 1, 1, 1)
    w = 0.3 + sx * x + sy * y  # [3, 1, 5, 5]
    lap, gx, gy = laplacian_and_gradients(w)
    assert torch.allclose(gx, sx.expand_as(w), atol=1e-12)
    assert torch.allclose(gy, sy.expand_as(w), atol=1e-12)
    # Linear in the interior -> Laplacian 0 there (edges feel the zero-flux boundary).
    assert lap[..., 1:-1, 1:-1].abs().max() < 1e-12


def test_fused_operator_matches_separate_ones():
    w = torch.randn(3, 2, 4, 5, dtype=D64)
    lap, gx, gy = laplacian_and_gradients(w)
    assert torch.equal(lap, laplacian(w)) and torch.equal(gx, grad_x(w)) and torch.equal(gy, grad_y(w))
    assert laplacian_and_gradients(w, need_laplacian=False)[0] is None
    assert laplacian_and_gradients(w, need_gradients=False)[1:] == (None, None)


def test_advection_matches_formula_on_random_weights():
    evo = build_evolution("advection", SHAPES).double()
    with torch.no_grad():
        for p in evo.parameters():
            p.copy_(torch.randn_like(p))
    thetas = tuple(torch.randn(s, dtype=D64) for s in SHAPES.values())
    for name, q, w in zip(evo.targets, evo(T0, thetas), thetas):
        ax = evo.coefficient("advection_x", name).view(-1, 1, 1, 1)
        ay = evo.coefficient("advection_y", name).view(-1, 1, 1, 1)
        assert torch.allclose(q, ax * grad_x(w) + ay * grad_y(w), atol=1e-12)


def test_operator_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 dims"):
        laplacian(torch.zeros(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        grad_x([[1.0, 2.0]])


# ---------------------------------------------------------------- evolutions


def test_kinds_and_types():
    assert EVOLUTION_KINDS == ("static", "diffusion", "advection", "reaction", "rda")
    for kind in EVOLUTION_KINDS:
        evo = build_evolution(kind, SHAPES)
        assert isinstance(evo, WeightEvolution)
        assert evo.kind == kind
        assert evo.targets == ("layer1.conv1.weight", "conv2.weight")
        assert evo.is_static == (kind == "static")
        assert isinstance(evo, StaticEvolution if kind == "static" else RDAEvolution)


def test_static_returns_zeros_and_has_no_parameters():
    evo = build_evolution("static", SHAPES)
    thetas = tuple(torch.randn(s) for s in SHAPES.values())
    out = evo(T0, thetas)
    assert isinstance(out, tuple) and len(out) == 2
    for o, th in zip(out, thetas):
        assert o.shape == th.shape and torch.equal(o, torch.zeros_like(th))
    assert list(evo.parameters()) == [] and evo.coefficients() == {}


@pytest.mark.parametrize("kind", EVOLUTION_KINDS)
def test_parameter_count_is_terms_times_out_channels(kind):
    evo = build_evolution(kind, SHAPES)
    n = sum(p.numel() for p in evo.parameters())
    assert n == TERM_COUNT[kind] * (4 + 2)
    for name, p in evo.named_parameters():
        assert p.shape in (torch.Size([4]), torch.Size([2]))
        assert "layer1__conv1__weight" in name or "conv2__weight" in name
    coeffs = evo.coefficients()
    assert len(coeffs) == TERM_COUNT[kind] * 2
    for key, value in coeffs.items():
        target, term = key.rsplit("/", 1)
        assert target in SHAPES and value.shape == (SHAPES[target][0],) and not value.requires_grad
    # state_dict round trip with dotted target names
    evo2 = build_evolution(kind, SHAPES)
    evo2.load_state_dict(evo.state_dict())
    for a, b in zip(evo.parameters(), evo2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["diffusion", "advection", "reaction", "rda"])
def test_initialisation_near_zero_and_deterministic(kind):
    torch.manual_seed(0)
    evo = build_evolution(kind, SHAPES)
    torch.manual_seed(0)
    evo_again = build_evolution(kind, SHAPES)
    for a, b in zip(evo.parameters(), evo_again.parameters()):
        assert torch.equal(a, b)
    thetas = tuple(torch.randn(s) for s in SHAPES.values())
    for q, w in zip(evo(T0, thetas), thetas):
        assert q.shape == w.shape
        assert 0 < q.norm() < 1e-2 * w.norm()
    for key, value in evo.coefficients().items():
        assert value.abs().max() < 1e-2, key


def test_diffusion_conserves_kernel_sum_and_matches_formula():
    evo = build_evolution("diffusion", SHAPES).double()
    with torch.no_grad():
        for p in evo.parameters():
            p.copy_(torch.randn_like(p))
    thetas = tuple(torch.randn(s, dtype=D64) for s in SHAPES.values())
    for name, q, w in zip(evo.targets, evo(T0, thetas), thetas):
        assert q.sum(dim=(-2, -1)).abs().max() < 1e-12
        d = evo.coefficient("diffusion", name)
        assert torch.all((d > 0) & (d < 0.25))
        assert torch.allclose(q, d.view(-1, 1, 1, 1) * laplacian(w))


def test_advection_of_linear_ramp_is_slope_times_coefficient():
    shapes = {"c.weight": torch.Size([3, 2, 5, 5])}
    evo = build_evolution("advection", shapes).double()
    with torch.no_grad():
        evo.raw["advection_x"]["c__weight"].copy_(torch.tensor([0.3, -1.0, 2.0]))
        evo.raw["advection_y"]["c__weight"].copy_(torch.tensor([-0.7, 0.5, 0.0]))
    ax, ay = evo.coefficient("advection_x", "c.weight"), evo.coefficient("advection_y", "c.weight")
    assert ax.abs().max() < 0.25 and ay.abs().max() < 0.25  # bounded by a_max
    y, x = grid(5, 5)
    sx, sy = 1.5, -0.5
    w = (2.0 + sx * x + sy * y).expand(3, 2, 5, 5)
    (q,) = evo(T0, (w,))
    expected = (ax * sx + ay * sy).view(3, 1, 1, 1).expand_as(w)
    assert torch.allclose(q, expected, atol=1e-12)


def test_reaction_equals_r_tanh_w():
    evo = build_evolution("reaction", SHAPES).double()
    set_raw(evo, "reaction", 0.0)
    with torch.no_grad():
        evo.raw["reaction"]["conv2__weight"].copy_(torch.tensor([1.5, -3.0]))
    thetas = tuple(3 * torch.randn(s, dtype=D64) for s in SHAPES.values())
    q1, q2 = evo(T0, thetas)
    assert torch.equal(q1, torch.zeros_like(q1))
    r = torch.tensor([1.5, -3.0], dtype=D64).view(2, 1, 1, 1)
    assert torch.allclose(q2, r * torch.tanh(thetas[1]))


def test_rda_is_sum_of_its_terms():
    torch.manual_seed(1)
    parts = {k: build_evolution(k, SHAPES).double() for k in ("diffusion", "advection", "reaction")}
    full = build_evolution("rda", SHAPES).double()
    with torch.no_grad():
        for evo in parts.values():
            for term, pdict in evo.raw.items():
                for key, p in pdict.items():
                    p.copy_(torch.randn_like(p))
                    full.raw[term][key].copy_(p)
    thetas = tuple(torch.randn(s, dtype=D64) for s in SHAPES.values())
    total = [sum(qs) for qs in zip(*(evo(T0, thetas) for evo in parts.values()))]
    for a, b in zip(full(T0, thetas), total):
        assert torch.allclose(a, b, atol=1e-12)


def test_one_by_one_kernels_only_react():
    shapes = {"pw.weight": torch.Size([3, 4, 1, 1])}
    evo = build_evolution("rda", shapes).double()
    for term in ("diffusion", "advection_x", "advection_y", "reaction"):
        set_raw(evo, term, 1.0)
    w = torch.randn(3, 4, 1, 1, dtype=D64)
    (q,) = evo(T0, (w,))
    assert torch.allclose(q, torch.tanh(w))


def _euler_diffusion(d_max: float, steps: int):
    shapes = {"w": torch.Size([2, 3, 5, 5])}
    evo = build_evolution("diffusion", shapes, d_max=d_max).double()
    set_raw(evo, "diffusion", 40.0)  # sigmoid(40) == 1 in float64: D at its bound
    assert torch.equal(evo.coefficient("diffusion", "w"), torch.full((2,), d_max, dtype=D64))
    y, x = grid(5, 5)
    checker = ((x + y) % 2) * 2 - 1  # worst-case (highest-frequency) mode
    w = (checker + 0.3 * torch.randn(2, 3, 5, 5, dtype=D64)).clone()
    w0 = w.clone()
    maxima, minima = [w.amax(dim=(-2, -1))], [w.amin(dim=(-2, -1))]
    with torch.no_grad():
        for _ in range(steps):
            (q,) = evo(T0, (w,))
            w = w + 1.0 * q
            maxima.append(w.amax(dim=(-2, -1)))
            minima.append(w.amin(dim=(-2, -1)))
    return w0, w, maxima, minima


def test_euler_diffusion_at_bound_obeys_maximum_principle():
    w0, w, maxima, minima = _euler_diffusion(0.25, 200)
    for a, b in zip(maxima[:-1], maxima[1:]):
        assert torch.all(b <= a + 1e-12)
    for a, b in zip(minima[:-1], minima[1:]):
        assert torch.all(b >= a - 1e-12)
    assert torch.allclose(w.sum(dim=(-2, -1)), w0.sum(dim=(-2, -1)), atol=1e-10)  # mass conserved
    assert (w.amax(dim=(-2, -1)) - w.amin(dim=(-2, -1))).max() < 1e-3  # relaxed to its mean


def test_euler_diffusion_beyond_bound_blows_up():
    # Sanity check that the maximum-principle test can fail: h*D = 1 > 1/4 is unstable.
    _, w, maxima, _ = _euler_diffusion(1.0, 20)
    assert w.abs().max() > 1e3 * maxima[0].abs().max()


def test_gradcheck_rda_wrt_weights_and_coefficients():
    torch.manual_seed(2)
    shapes = {"a.conv.weight": torch.Size([2, 2, 3, 3]), "b.weight": torch.Size([2, 1, 2, 3]),
              "pw.weight": torch.Size([1, 2, 1, 1])}
    evo = build_evolution("rda", shapes).double()
    names = [n for n, _ in evo.named_parameters()]
    raws = tuple((torch.randn_like(p) * 0.5).requires_grad_() for _, p in evo.named_parameters())
    thetas = tuple(torch.randn(s, dtype=D64, requires_grad=True) for s in shapes.values())
    k = len(thetas)

    def fn(*args):
        return functional_call(evo, dict(zip(names, args[k:])), (T0, tuple(args[:k])))

    assert torch.autograd.gradcheck(fn, thetas + raws)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_device(dtype):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        evo = build_evolution("rda", SHAPES).to(device=device, dtype=dtype)
        thetas = tuple(torch.randn(s, dtype=dtype, device=device, requires_grad=True) for s in SHAPES.values())
        out = evo(T0.to(device), thetas)
        for q, w in zip(out, thetas):
            assert q.dtype == dtype and q.device == w.device and q.shape == w.shape
        sum(q.sum() for q in out).backward()
        assert all(p.grad is not None for p in evo.parameters())
        assert all(w.grad is not None for w in thetas)
    # float64 weights through float32 coefficients keep the weights' dtype
    evo = build_evolution("rda", SHAPES)
    out = evo(T0, tuple(torch.randn(s, dtype=D64) for s in SHAPES.values()))
    assert all(q.dtype == D64 for q in out)


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
    with pytest.raises(ValueError, match="d_init must satisfy"):
        build_evolution("diffusion", SHAPES, d_init=0.3)
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
    with pytest.raises(ValueError, match="not learned by kind"):
        build_evolution("diffusion", SHAPES).coefficient("reaction", "conv2.weight")
