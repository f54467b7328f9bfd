"""Gradient modes: the checkpointed discrete adjoint is exact (equals unrolled autograd in
float64), its recompute count is the binomial optimum, and backsolve is the inexact baseline."""
import pytest
import torch
from torch import nn

import anodev2
from anodev2 import SolveStats
from anodev2.adjoint import binomial_cost, slots_for
from helpers import rel_err

METHODS = ["euler", "midpoint", "heun", "rk4"]
D = torch.float64


def _problem(seed=0):
    """A coupled state (z [B, 4] with batch dim, W [4, 4] without) whose field closes over
    params A (matrix) and b (vector): dz/dt = tanh(z W + b) A, dW/dt = -0.3 tanh(W) + 0.1 A."""
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(3, 4, generator=g, dtype=D, requires_grad=True)
    w0 = (0.5 * torch.randn(4, 4, generator=g, dtype=D)).requires_grad_()
    A = (0.5 * torch.randn(4, 4, generator=g, dtype=D)).requires_grad_()
    b = torch.randn(4, generator=g, dtype=D, requires_grad=True)

    def f(t, y):
        z, w = y
        return torch.tanh(z @ w + b) @ A * (1 + 0.5 * torch.sin(3 * t)), -0.3 * torch.tanh(w) + 0.1 * A

    return f, (z0, w0), (A, b)


def _grads(grad, method, steps, checkpoints=None, t0=0.0, t1=1.0, stats=None):
    f, y0, params = _problem()
    if grad == "checkpoint":
        grad = anodev2.Checkpoint(checkpoints=checkpoints)
    z1, w1 = anodev2.odeint(f, y0, t0, t1, steps=steps, method=method, grad=grad,
                            params=params, stats=stats)
    loss = (z1 ** 2).sum() + (w1 * torch.cos(w1)).sum()
    return torch.autograd.grad(loss, [*y0, *params])


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_equals_backprop_all_steps_and_budgets(method):
    for steps in range(1, 21):
        ref = _grads("backprop", method, steps)
        for c in sorted({0, 1, 2, 3, steps - 1, steps + 2} - {-1}) + [None]:
            st = SolveStats()
            got = _grads("checkpoint", method, steps, checkpoints=c, stats=st)
            for a, b in zip(got, ref):
                assert rel_err(a, b) < 1e-10, (method, steps, c)
            slots = slots_for(steps, c)
            assert st.backward_steps == steps + binomial_cost(steps, slots), (steps, c, st)
            assert st.recomputed_steps == binomial_cost(steps, slots)
            assert st.checkpoints_held <= slots
            assert st.forward_evals == steps * st.stages
            assert st.backward_evals == st.backward_steps * st.stages


def test_recompute_count_matches_binomial_optimum_examples():
    # Explicit numbers for the documentation: Nt = 16, rk4.
    for c, expected in [(None, 15), (0, 120), (1, 45), (2, 33), (4, 25)]:
        st = SolveStats()
        _grads("checkpoint", "rk4", 16, checkpoints=c, stats=st)
        assert st.recomputed_steps == expected, (c, st)


def test_checkpoint_reverse_time_interval():
    ref = _grads("backprop", "rk4", 5, t0=1.0, t1=-0.5)
    got = _grads("checkpoint", "rk4", 5, checkpoints=1, t0=1.0, t1=-0.5)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-10


def test_forward_builds_no_graph_and_no_grad_stores_nothing():
    modes = []
    lin = nn.Linear(3, 3).double()
    f = lambda t, y: modes.append(torch.is_grad_enabled()) or torch.tanh(lin(y))
    y0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    y1 = anodev2.odeint(f, y0, steps=3, method="euler", grad="checkpoint", params=list(lin.parameters()))
    assert modes == [False] * 3, "checkpoint forward must run without a graph"
    assert type(y1.grad_fn).__name__.startswith("_CheckpointAdjoint")
    y1.sum().backward()
    assert modes[3:6] == [False, False, True] or modes.count(True) == 3
    with torch.no_grad():
        y2 = anodev2.odeint(f, y0, steps=3, grad="checkpoint", params=list(lin.parameters()))
    assert y2.grad_fn is None and not y2.requires_grad


def test_gradcheck_tiny():
    lin = nn.Linear(2, 2).double()
    f = lambda t, y: torch.tanh(lin(y))
    y0 = torch.randn(1, 2, dtype=D, requires_grad=True)
    for c in (None, 0, 1):
        fn = lambda y, w, b: anodev2.odeint(lambda t, x: torch.tanh(x @ w.T + b), y, steps=3, method="rk4",
                                            grad=anodev2.Checkpoint(c), params=(w, b))
        assert torch.autograd.gradcheck(fn, (y0, lin.weight, lin.bias))
        assert torch.autograd.gradgradcheck(fn, (y0, lin.weight, lin.bias))


def test_double_backward_equals_backprop():
    res = {}
    for grad in ("backprop", "checkpoint"):
        f, y0, params = _problem()
        z1, w1 = anodev2.odeint(f, y0, steps=4, method="heun", params=params,
                                grad=anodev2.Checkpoint(checkpoints=1) if grad == "checkpoint" else grad)
        loss = (z1 ** 2).sum() + w1.sum()
        g = torch.autograd.grad(loss, [y0[0], params[0]], create_graph=True)
        penalty = sum((gi ** 2).sum() for gi in g)
        res[grad] = torch.autograd.grad(penalty, [*y0, *params])
    for a, b in zip(res["checkpoint"], res["backprop"]):
        assert rel_err(a, b) < 1e-10


def test_backsolve_has_no_double_backward():
    f, y0, params = _problem()
    z1, _ = anodev2.odeint(f, y0, steps=2, grad="backsolve", params=params)
    with pytest.raises(RuntimeError, match="backsolve' does not support double backward"):
        torch.autograd.grad(z1.sum(), y0[0], create_graph=True)


def test_params_without_grad_and_unused_outputs():
    f, (z0, w0), (A, b) = _problem()
    A.requires_grad_(False)
    z1, w1 = anodev2.odeint(f, (z0, w0), steps=3, grad=anodev2.Checkpoint(0), params=(A, b))
    gz, gw, gb = torch.autograd.grad(z1.sum(), [z0, w0, b])  # w1 unused: zero cotangent
    f2, (z0b, w0b), (A2, b2) = _problem()
    A2.requires_grad_(False)
    z1b, _ = anodev2.odeint(f2, (z0b, w0b), steps=3, grad="backprop", params=(A2, b2))
    for a, r in zip((gz, gw, gb), torch.autograd.grad(z1b.sum(), [z0b, w0b, b2])):
        assert rel_err(a, r) < 1e-10


def test_backsolve_converges_for_smooth_linear_ode():
    # dy/dt = A y, J = <c, y(1)>: the true gradients are expm(A)^T c and c y0^T expm(A)^T-integral;
    # we check dJ/dy0 and dJ/dA against the exact continuous values via matrix_exp.
    g = torch.Generator().manual_seed(1)
    A0 = 0.5 * torch.randn(3, 3, generator=g, dtype=D)
    y0 = torch.randn(3, generator=g, dtype=D)
    c = torch.randn(3, generator=g, dtype=D)
    Ar = A0.clone().requires_grad_()
    yr = y0.clone().requires_grad_()
    (c @ torch.linalg.matrix_exp(Ar) @ yr).backward()
    true = (yr.grad, Ar.grad)
    errs = []
    for steps in (4, 8, 16, 32):
        A = A0.clone().requires_grad_()
        y = y0.clone().requires_grad_()
        y1 = anodev2.odeint(lambda t, x: A @ x, y, steps=steps, method="rk4", grad="backsolve", params=(A,))
        gy, gA = torch.autograd.grad(c @ y1, [y, A])
        errs.append(max(rel_err(gy, true[0]), rel_err(gA, true[1])))
    assert errs[-1] < 1e-6
    assert all(errs[i + 1] < errs[i] / 8 for i in range(3)), errs  # ~ order 4 convergence


def test_backsolve_gradient_is_wrong_for_relu_conv_network():
    # ANODE's central claim: for a ReLU conv ODE the reverse-time reconstruction fails and the
    # Neural ODE gradient differs from the exact one; the checkpoint adjoint is exact.
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).double()
    with torch.no_grad():
        for m in f:
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3.0)
    x = torch.randn(2, 4, 8, 8, dtype=D)
    out = {}
    for grad in ("backprop", "checkpoint", "backsolve"):
        y = anodev2.odeint(lambda t, z: f(z), x.clone().requires_grad_(), steps=2, method="euler", grad=grad,
                           params=list(f.parameters()))
        out[grad] = torch.autograd.grad((y ** 2).mean(), list(f.parameters()))
    exact = torch.cat([g.flatten() for g in out["backprop"]])
    assert rel_err(torch.cat([g.flatten() for g in out["checkpoint"]]), exact) < 1e-10
    assert rel_err(torch.cat([g.flatten() for g in out["backsolve"]]), exact) > 0.05


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_keep_forward_skips_the_first_sweep_with_the_same_gradient(method):
    from anodev2.adjoint import first_sweep

    for steps in (1, 2, 5, 12):
        ref = _grads("backprop", method, steps)
        for c in (None, 0, 1, 3):
            f, y0, params = _problem()
            st = SolveStats()
            z1, w1 = anodev2.odeint(f, y0, steps=steps, method=method, params=params, stats=st,
                                    grad=anodev2.Checkpoint(checkpoints=c, keep_forward=True))
            got = torch.autograd.grad((z1 ** 2).sum() + (w1 * torch.cos(w1)).sum(), [*y0, *params])
            for a, b in zip(got, ref):
                assert rel_err(a, b) < 1e-10, (steps, c)
            slots = slots_for(steps, c)
            sweep = first_sweep(steps, slots)
            assert st.recomputed_steps == binomial_cost(steps, slots) - (sweep[-1] if sweep else 0)
            assert st.checkpoints_held <= slots
    with pytest.raises(TypeError, match=r"no longer takes \['keep_forward'\].*grad=anodev2.Checkpoint\(keep_forward=True\)"):
        anodev2.odeint(f, y0, grad="backprop", params=params, keep_forward=True)
