"""Solvers: tableaux, empirical convergence orders, tuple states, reverse time, bad input."""
import math

import pytest
import torch

import anodev2
from anodev2.solvers import TABLEAUX, ButcherTableau, get_tableau

ORDERS = {"euler": 1, "midpoint": 2, "rk2": 2, "heun": 2, "rk4": 4}


def _rotation(t, y):
    # dy/dt = A y, a rotating, decaying linear system; exact solution in _exact.
    x, v = y[..., 0], y[..., 1]
    return torch.stack([-0.5 * x + 2.0 * v, -2.0 * x - 0.5 * v], dim=-1)


def _exact(y0, t):
    # y' = A y with A = [[-a, w], [-w, -a]]: y(t) = e^{-a t} R(w t) y0
    a, w = 0.5, 2.0
    c, s = math.cos(w * t), math.sin(w * t)
    x, v = y0[..., 0], y0[..., 1]
    return math.exp(-a * t) * torch.stack([c * x + s * v, -s * x + c * v], dim=-1)


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_empirical_order(method):
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    errs = []
    steps = [8, 16, 32, 64]
    for n in steps:
        y1 = anodev2.odeint(_rotation, y0, 0.0, 1.5, steps=n, method=method, grad="backprop")
        errs.append((y1 - _exact(y0, 1.5)).abs().max().item())
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
    assert abs(orders[-1] - ORDERS[method]) < 0.15, (method, orders)


def test_time_dependent_field_order_rk4():
    # y' = cos(t) y: y(t) = y0 exp(sin t). Checks that stage times c_i are used.
    f = lambda t, y: torch.cos(t) * y
    y0 = torch.tensor([1.3], dtype=torch.float64)
    errs = [(anodev2.odeint(f, y0, 0.0, 2.0, steps=n, method="rk4", grad="backprop") - 1.3 * math.exp(math.sin(2.0))).abs().item()
            for n in (10, 20, 40)]
    assert abs(math.log2(errs[1] / errs[2]) - 4) < 0.2


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_reverse_time_and_round_trip(method):
    y0 = torch.tensor([[1.0, -0.3]], dtype=torch.float64)
    y1 = anodev2.odeint(_rotation, y0, 0.0, 1.0, steps=200, method=method, grad="backprop")
    back = anodev2.odeint(_rotation, y1, 1.0, 0.0, steps=200, method=method, grad="backprop")
    tol = {1: 2e-2, 2: 1e-4, 4: 1e-9}[ORDERS[method]]
    assert (back - y0).abs().max() < tol


def test_tuple_state_with_and_without_batch_dim():
    z0 = torch.randn(5, 3, dtype=torch.float64)
    w0 = torch.randn(3, 3, dtype=torch.float64)
    f = lambda t, y: (y[0] @ y[1], -0.1 * y[1])
    z1, w1 = anodev2.odeint(f, (z0, w0), steps=50, method="rk4", grad="backprop")
    assert z1.shape == z0.shape and w1.shape == w0.shape
    torch.testing.assert_close(w1, w0 * math.exp(-0.1), rtol=1e-9, atol=1e-12)


def test_aliases_and_tableau_consistency():
    assert get_tableau("rk2") is get_tableau("midpoint")
    for name, tab in TABLEAUX.items():
        assert len(tab.b) == tab.stages and abs(sum(tab.b) - 1) < 1e-14
    with pytest.raises(ValueError, match=r"c\[1\] = 0.5 but row 1 of a sums to 0.3"):
        ButcherTableau("bad", 1, a=((), (0.3,)), b=(0.5, 0.5), c=(0.0, 0.5))


RALSTON3 = dict(a=((), (0.5,), (0.0, 0.75)), b=(2 / 9, 1 / 3, 4 / 9), c=(0.0, 0.5, 0.75))


def test_user_tableau_is_a_method_value():
    """A new method is a value: Ralston's third-order tableau converges at order 3 through odeint."""
    tab = ButcherTableau("ralston3", 3, **RALSTON3)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    errs = [(anodev2.odeint(_rotation, y0, 0.0, 1.5, steps=n, method=tab, grad="backprop") - _exact(y0, 1.5))
            .abs().max().item() for n in (16, 32)]
    assert abs(math.log2(errs[0] / errs[1]) - 3) < 0.15
    blk = anodev2.ODEBlock(torch.nn.Identity(), method=tab, steps=2)
    assert blk.tableau is tab and blk.method == "ralston3"


@pytest.mark.parametrize("order,kwargs,msg", [
    (4, RALSTON3, r"declares order 4 but fails the order-4 condition sum\(b c\^3\) = 1/4"),
    (2, dict(a=((), (0.5,)), b=(0.5, 0.5), c=(0.0, 0.5)), r"order-2 condition sum\(b c\) = 1/2"),
    (1, dict(a=((), (1.0,)), b=(0.5, 0.6), c=(0.0, 1.0)), r"order-1 condition sum\(b\) = 1"),
    (1, dict(a=((), (1.0, 0.0)), b=(0.5, 0.5), c=(0.0, 1.0)), r"row 1 of a has 2 entries.*strictly lower"),
    (1, dict(a=((),), b=(0.5, 0.5), c=(0.0, 1.0)), r"same number .* of stages"),
    (5, RALSTON3, r"order must be an int in 1..4"),
])
def test_bad_tableau_names_the_failed_condition(order, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ButcherTableau("bad", order, **kwargs)


def test_order_conditions_hold_for_the_builtin_tableaux():
    # rebuilding each with its declared order re-runs every condition up to that order
    for tab in TABLEAUX.values():
        assert ButcherTableau(tab.name, tab.order, tab.a, tab.b, tab.c) == tab
    with pytest.raises(ValueError, match="order-3 condition"):  # Heun is exactly second order
        ButcherTableau("heun", 3, TABLEAUX["heun"].a, TABLEAUX["heun"].b, TABLEAUX["heun"].c)


def test_one_evaluation_per_stage():
    calls = []
    f = lambda t, y: calls.append(1) or -y
    anodev2.odeint(f, torch.ones(2), steps=3, method="rk4", grad="backprop")
    assert len(calls) == 12


BAD = [
    (dict(method="rk45"), ValueError, r"method='rk45'.*allowed.*euler"),
    (dict(grad="adjoint"), ValueError, r"grad='adjoint'.*allowed.*backprop.*checkpoint.*backsolve"),
    (dict(steps=0), ValueError, r"steps must be an int >= 1"),
    (dict(steps=2.5), ValueError, r"steps must be an int >= 1"),
    (dict(checkpoints=2, grad="backprop"), TypeError, r"no longer takes \['checkpoints'\].*Checkpoint\(checkpoints=2\)"),
    (dict(preserve_rng=False), TypeError, r"Checkpoint\(preserve_rng=False\)"),
    (dict(stepz=2), TypeError, r"unexpected keyword argument\(s\) \['stepz'\]"),
    (dict(t1=float("nan")), TypeError, r"t1 must be a finite real"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        anodev2.odeint(lambda t, y: -y, torch.ones(2), **kwargs)


def test_bad_state_and_func_structure():
    with pytest.raises(TypeError, match="floating dtype"):
        anodev2.odeint(lambda t, y: y, torch.ones(2, dtype=torch.long))
    with pytest.raises(TypeError, match="y0 must be a Tensor or a non-empty tuple"):
        anodev2.odeint(lambda t, y: y, [])
    with pytest.raises(TypeError, match="must return a tuple of 2 Tensors"):
        anodev2.odeint(lambda t, y: y[0], (torch.ones(2), torch.ones(3)))
    with pytest.raises(ValueError, match=r"func output 1 is \(2,\).*state entry is \(3,\)"):
        anodev2.odeint(lambda t, y: (y[0], y[0]), (torch.ones(2), torch.ones(3)))
    with pytest.raises(TypeError, match="must return a Tensor"):
        anodev2.odeint(lambda t, y: (y,), torch.ones(2))
