"""Gradient edge cases (issue 8's defects), checked in every grad mode against backprop (float64),
finite differences, gradcheck and independent oracles (scipy's solve_ivp, closed forms)."""
import math

import numpy as np
import pytest
import torch
from helpers import rel_err
from scipy.integrate import solve_ivp

import anodev2

D = torch.float64
EXACT = [anodev2.Backprop(), anodev2.Checkpoint(), anodev2.Checkpoint(checkpoints=0),
         anodev2.Checkpoint(checkpoints=1, keep_forward=True), anodev2.Checkpoint(keep_forward=True)]
ALL = [*EXACT, anodev2.Backsolve()]


def _ids(modes):
    return [repr(m) for m in modes]


@pytest.mark.parametrize("grad", ALL, ids=_ids(ALL))
def test_unit_weight_step_with_sum_loss(grad):
    """Defect 1: Euler with h = 1 (h b = 1) and loss = y.sum(): the incoming adjoint is an expanded
    tensor that the step's VJP passes through unchanged; nothing may be written into it."""
    def run(mode):
        p = torch.tensor([.5, -1.], dtype=D, requires_grad=True)
        y0 = torch.tensor([1., 2.], dtype=D, requires_grad=True)
        y1 = anodev2.odeint(lambda t, y: p + torch.tanh(y), y0, 0., 2., steps=2, method="euler", grad=mode,
                            params=[p])
        y1.sum().backward()
        return y0.grad, p.grad
    ref = run("backprop")
    got = run(grad)
    tol = 1e-12 if not isinstance(grad, anodev2.Backsolve) else 1.0  # backsolve: approximate at h = 1
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all() and rel_err(a, b) < tol


def test_incoming_gradient_is_not_modified():
    """Defect 1, silent half: the gradient tensor handed to backward is left as it was."""
    p = torch.tensor([.5, -1.], dtype=D, requires_grad=True)
    y0 = torch.tensor([1., 2.], dtype=D, requires_grad=True)
    y1 = anodev2.odeint(lambda t, y: p * torch.tanh(y), y0, 0., 2., steps=2, method="euler", params=[p])
    v = torch.tensor([0.3, -0.7], dtype=D)
    v0 = v.clone()
    torch.autograd.grad(y1, [y0, p], grad_outputs=v)
    assert torch.equal(v, v0)


@pytest.mark.parametrize("grad", ALL, ids=_ids(ALL))
def test_duplicated_params_get_one_gradient(grad):
    """Defect 2: the same tensor twice in params gets its gradient once, in every mode."""
    def run(mode, params_twice):
        torch.manual_seed(0)
        w = torch.randn(3, 3, dtype=D, requires_grad=True)
        y0 = torch.randn(2, 3, dtype=D, requires_grad=True)
        f = lambda t, y: torch.tanh(y @ w)
        y1 = anodev2.odeint(f, y0, steps=4, method="rk4", grad=mode, params=[w, w] if params_twice else [w])
        return torch.autograd.grad((y1 ** 2).sum(), [y0, w])
    ref = run("backprop", False)
    got = run(grad, True)
    tol = 1e-10 if not isinstance(grad, anodev2.Backsolve) else 1e-3
    for a, b in zip(got, ref):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("grad", ALL, ids=_ids(ALL))
def test_field_ignoring_state_and_params(grad):
    """Defect 3: dy/dt = exp(-t) independent of y and of every parameter: y(1) = y0 + 1 - e^{-1}
    and dL/dy0 = dL/dy1 exactly (backsolve included)."""
    y0 = torch.tensor([0.5, -1.0], dtype=D, requires_grad=True)
    y1 = anodev2.odeint(lambda t, y: torch.exp(-t) * torch.ones_like(y), y0, steps=8, grad=grad)
    torch.testing.assert_close(y1, y0.detach() + 1 - math.exp(-1), rtol=0, atol=1e-6)  # rk4 = Simpson here: h^4/180 bound
    (g,) = torch.autograd.grad((y1 * torch.tensor([2.0, 3.0], dtype=D)).sum(), [y0])
    torch.testing.assert_close(g, torch.tensor([2.0, 3.0], dtype=D), rtol=0, atol=1e-14)


@pytest.mark.parametrize("grad", ALL, ids=_ids(ALL))
def test_tuple_entry_with_zero_derivative(grad):
    """Defect 3: a constant tuple entry (derivative zeros_like) and a parameter used only there."""
    def run(mode):
        a = torch.tensor(0.7, dtype=D, requires_grad=True)
        z0 = torch.tensor([1.0, -0.5], dtype=D, requires_grad=True)
        c0 = torch.tensor([2.0], dtype=D, requires_grad=True)
        f = lambda t, y: (-a * y[0] * y[1], torch.zeros_like(y[1]))
        z1, c1 = anodev2.odeint(f, (z0, c0), steps=6, method="heun", grad=mode, params=[a])
        return torch.autograd.grad((z1 ** 2).sum() + c1.sum(), [z0, c0, a])
    ref = run("backprop")
    tol = 1e-10 if not isinstance(grad, anodev2.Backsolve) else 1e-2
    for x, y in zip(run(grad), ref):
        assert rel_err(x, y) < tol


def _time_problem():
    w = torch.tensor([[0.3, -1.1], [0.8, 0.2]], dtype=D, requires_grad=True)
    y0 = torch.tensor([[1.0, -0.4]], dtype=D, requires_grad=True)
    f = lambda t, y: torch.tanh(y @ w) * torch.cos(2 * t) + 0.1 * t
    return f, y0, w


def _time_grads(mode, t0v, t1v, method="rk4", steps=5):
    f, y0, w = _time_problem()
    t0 = torch.tensor(t0v, dtype=D, requires_grad=True)
    t1 = torch.tensor(t1v, dtype=D, requires_grad=True)
    y1 = anodev2.odeint(f, y0, t0, t1, steps=steps, method=method, grad=mode, params=[w])
    return torch.autograd.grad((y1 ** 3).sum(), [y0, w, t0, t1])


@pytest.mark.parametrize("grad", EXACT, ids=_ids(EXACT))
@pytest.mark.parametrize("t0v,t1v", [(0.2, 1.3), (1.0, -0.5)])
def test_interval_gradients_are_exact(grad, t0v, t1v):
    """Defect 4: t0, t1 with requires_grad get the exact gradient of the computed solve in every
    exact mode (equal to backprop; backwards in time too)."""
    ref = _time_grads("backprop", t0v, t1v)
    for a, b in zip(_time_grads(grad, t0v, t1v), ref):
        assert rel_err(a, b) < 1e-10


def test_interval_gradients_match_finite_differences():
    """The backprop reference itself: central differences of the computed solve in t0 and t1."""
    f, y0, w = _time_problem()
    loss = lambda a, b: (anodev2.odeint(f, y0.detach(), a, b, steps=5, grad="backprop") ** 3).sum().item()
    _, _, g0, g1 = _time_grads("checkpoint", 0.2, 1.3)
    eps = 1e-6
    assert abs(g0.item() - (loss(0.2 + eps, 1.3) - loss(0.2 - eps, 1.3)) / (2 * eps)) < 1e-7
    assert abs(g1.item() - (loss(0.2, 1.3 + eps) - loss(0.2, 1.3 - eps)) / (2 * eps)) < 1e-7


def test_interval_gradcheck_through_checkpoint():
    f, y0, w = _time_problem()
    fn = lambda a, b, y: anodev2.odeint(f, y, a, b, steps=3, method="heun", grad=anodev2.Checkpoint(0), params=[w])
    args = (torch.tensor(0.1, dtype=D, requires_grad=True), torch.tensor(0.9, dtype=D, requires_grad=True), y0)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_interval_gradients_backsolve_are_the_continuous_ones():
    """Backsolve returns dL/dt1 = a(t1)·f(t1, y1) and dL/dt0 = -a(t0)·f(t0, y0): approximate, the
    error shrinks with the step count (and one interval end may be a plain float)."""
    errs = []
    for steps in (4, 16):
        ref = _time_grads("backprop", 0.2, 1.3, steps=steps)
        got = _time_grads("backsolve", 0.2, 1.3, steps=steps)
        errs.append(max(rel_err(a, b) for a, b in zip(got[2:], ref[2:])))
    assert errs[1] < errs[0] / 50 and errs[1] < 1e-5
    f, y0, w = _time_problem()
    t1 = torch.tensor(1.3, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(anodev2.odeint(f, y0, 0.2, t1, grad="backsolve", params=[w]).sum(), [t1])
    with torch.no_grad():
        y1 = anodev2.odeint(f, y0, 0.2, 1.3, grad="backprop")
        assert rel_err(g, f(torch.tensor(1.3, dtype=D), y1).sum()) < 1e-14


def test_learned_integration_time_against_the_closed_form():
    """y' = -k y: y(T) = y0 e^{-k T}, dy(T)/dT = -k y(T); rk4 with 256 steps is within 1e-10."""
    k, y0 = 0.8, torch.tensor([1.5], dtype=D)
    T = torch.tensor(1.7, dtype=D, requires_grad=True)
    yT = anodev2.odeint(lambda t, y: -k * y, y0, 0.0, T, steps=256)
    (g,) = torch.autograd.grad(yT.sum(), [T])
    assert abs(yT.item() - 1.5 * math.exp(-k * 1.7)) < 1e-10
    assert abs(g.item() + k * 1.5 * math.exp(-k * 1.7)) < 1e-10


def test_interval_without_grad_or_rejected():
    f, y0, w = _time_problem()
    t1 = torch.tensor(1.0, dtype=D, requires_grad=True)
    with torch.no_grad():
        assert not anodev2.odeint(f, y0, 0.0, t1).requires_grad
    with pytest.raises(ValueError, match=r"t0 must be a scalar.*shape \(2,\)"):
        anodev2.odeint(f, y0, torch.zeros(2), 1.0)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_values_agree_with_scipy(method):
    """Independent oracle: a nonlinear time-dependent 3-D system against solve_ivp (DOP853, tight
    tolerances); the error falls with the declared order (fine grid, backwards in time too)."""
    def rhs(t, y):
        return np.array([y[1], -math.sin(y[0]) - 0.2 * y[1] + 0.3 * math.cos(t), -y[2] * y[0]])

    f = lambda t, y: torch.stack([y[1], -torch.sin(y[0]) - 0.2 * y[1] + 0.3 * torch.cos(t), -y[2] * y[0]])
    y0 = np.array([0.4, -0.2, 1.0])
    order = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]
    for t0, t1 in ((0.0, 2.0), (2.0, -1.0)):
        ref = solve_ivp(rhs, (t0, t1), y0, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
        errs = [np.abs(anodev2.odeint(f, torch.tensor(y0, dtype=D), t0, t1, steps=n, method=method,
                                      grad="backprop").numpy() - ref).max() for n in (40, 80)]
        assert abs(math.log2(errs[0] / errs[1]) - order) < 0.25, (method, errs)
