"""The engine's fast paths (issue 19) compute exactly what the slow ones did: the weight swap
instead of functional_call, the shared stage-time table, the adjoint without an RNG log when
f draws nothing, the step-0 input adjoint skipped when the input needs no gradient; the
checkpointed adjoint under bfloat16 autocast; torch.compile through ODE blocks (one tiny,
clearly marked compile test)."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

import anodev2
from anodev2.adjoint import recompute
from anodev2.block import _call_with_weights
from anodev2.solvers import EULER, RK4, stage_times
from anodev2.solvers.stepper import _stage_time
from helpers import compile_and_compare


def _f(c=2, dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.Tanh(), nn.Conv2d(c, c, 3, padding=1)).to(dtype)


def test_weight_swap_equals_functional_call_values_and_gradients():
    f = _f()
    names = ("0.weight", "2.weight")
    thetas = tuple((f.get_parameter(n).detach() + 0.1 * torch.randn_like(f.get_parameter(n))).requires_grad_()
                   for n in names)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    ref = functional_call(f, dict(zip(names, thetas)), (x,), strict=False)
    got = _call_with_weights(f, names, thetas, (x,))
    assert torch.equal(ref, got)
    wrt = (x, *thetas, f[0].bias, f[2].bias)
    g_ref = torch.autograd.grad(ref.square().sum(), wrt)
    g_got = torch.autograd.grad(got.square().sum(), wrt)
    assert all(torch.equal(a, b) for a, b in zip(g_ref, g_got))
    # the module's own parameters are back in place, also after an error inside f
    assert f[0].weight is dict(f.named_parameters())["0.weight"] and isinstance(f[0].weight, nn.Parameter)
    with pytest.raises(RuntimeError):
        _call_with_weights(f, names, thetas, (torch.randn(2, 3, 5, 5, dtype=torch.float64),))
    assert isinstance(f[0].weight, nn.Parameter) and isinstance(f[2].weight, nn.Parameter)


def test_weight_swap_with_tied_weights_replaces_every_name_like_functional_call():
    f = _f()
    f[2].weight = f[0].weight  # one Parameter under two names
    theta = torch.randn_like(f[0].weight)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    ref = functional_call(f, {"0.weight": theta}, (x,), strict=False)
    assert torch.equal(_call_with_weights(f, ("0.weight",), (theta,), (x,)), ref)
    untied = _f()
    untied[2].weight = nn.Parameter(f[0].weight.detach().clone())
    assert not torch.equal(ref, functional_call(untied, {"0.weight": theta}, (x,), strict=False))


@pytest.mark.parametrize("tableau", [EULER, RK4])
def test_stage_time_table_is_bitwise_the_per_stage_value(tableau):
    like = torch.zeros((), dtype=torch.float32)
    for t0, t1, steps in ((0.0, 1.0, 3), (0.3, -1.7, 7)):
        h = (t1 - t0) / steps
        table = stage_times(t0, h, steps, tableau, like)
        for n in range(steps):
            for i, c in enumerate(tableau.c):
                assert torch.equal(table[n][i], _stage_time(t0 + n * h, c, h, like))


def test_checkpoint_without_random_draws_keeps_no_rng_log_and_leaves_the_stream(monkeypatch):
    restores = []
    monkeypatch.setattr(recompute.RngLog, "restore", lambda self, n: restores.append(n))
    f = _f()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    y = anodev2.odeint(lambda t, z: f(z), x, steps=3, method="rk4", grad=anodev2.Checkpoint(), params=f.parameters())
    state = torch.get_rng_state()
    y.sum().backward()
    assert restores == [] and torch.equal(state, torch.get_rng_state())
    # with dropout the log is kept and replayed: the gradient is backprop's
    g = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Dropout(0.5)).double()
    grads = []
    for grad in (anodev2.Backprop(), anodev2.Checkpoint()):
        monkeypatch.undo()
        torch.manual_seed(3)
        x.grad = None
        anodev2.odeint(lambda t, z: g(z), x, steps=3, method="euler", grad=grad, params=g.parameters()).sum().backward()
        grads.append(x.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_input_adjoint_skipped_for_an_input_without_grad_and_kept_for_one_with():
    f = _f()
    x_free = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    theta = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def field(t, y):
        z, w = y
        return f(z) * w.sum(), -w

    for x_grad in (False, True):
        x = x_free.clone().requires_grad_(x_grad)
        out = []
        for grad in (anodev2.Backprop(), anodev2.Checkpoint(), anodev2.Checkpoint(keep_forward=True)):
            z1, w1 = anodev2.odeint(field, (x, theta), steps=3, method="midpoint", grad=grad, params=f.parameters())
            wrt = [t for t in (x, theta, *f.parameters()) if t.requires_grad]
            out.append(torch.autograd.grad((z1.square().sum() + w1.sum()), wrt))
        for g in out[1:]:
            assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(out[0], g))


def test_checkpoint_equals_backprop_under_bf16_autocast_because_the_autocast_state_is_replayed(monkeypatch):
    """bf16 autocast on the CPU: the reversed steps re-enter the forward pass's autocast state
    (dtype and weight-cast cache), so the checkpointed gradient is backprop's bit for bit when
    autocast's weight-cast cache is off; recomputing in float32 instead (no replay) is off by
    bf16's resolution (> 1e-3), which this test proves. With the cache on (autocast's default)
    backprop casts each shared weight once and sums its per-step gradients in bfloat16 at that
    cast, the adjoint sums them in float32: they then differ by bf16 round-off (< 2^-6)."""
    f = _f(4, torch.float32)
    x = torch.randn(2, 4, 6, 6)

    def grads(mode, cache):
        for p in f.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
            y = anodev2.odeint(lambda t, z: f(z), x, steps=2, method="rk4", grad=mode, params=f.parameters())
        assert y.dtype == torch.float32
        y.square().mean().backward()  # outside autocast, as a training loop does
        return [p.grad.clone() for p in f.parameters()]

    def rel(a, b):
        return max(((u - v).abs().max() / u.abs().max()).item() for u, v in zip(a, b))

    ref = grads(anodev2.Backprop(), False)
    for mode in (anodev2.Checkpoint(), anodev2.Checkpoint(keep_forward=True), anodev2.Checkpoint(checkpoints=1)):
        assert all(torch.equal(a, b) for a, b in zip(ref, grads(mode, False)))
    assert 0 < rel(grads(anodev2.Backprop(), True), grads(anodev2.Checkpoint(), True)) < 2 ** -6
    monkeypatch.setattr(anodev2.adjoint.checkpoint, "autocast_replay",
                        lambda device: lambda: torch.autocast("cpu", enabled=False))
    assert rel(ref, grads(anodev2.Checkpoint(), False)) > 1e-3


@pytest.mark.compile  # slow-ish: dynamo tracing (aot_eager backend, no code generation), ~5 s on 2 busy cores
def test_compiled_network_matches_eager_and_breaks_only_at_adjoint_blocks():
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this platform / Python")
    torch._dynamo.reset()
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1))
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1),
                        anodev2.ODEBlock(f, steps=2, method="euler", grad=anodev2.Backprop()),
                        anodev2.ODEBlock(_f(2, torch.float32), steps=2, method="euler", grad=anodev2.Checkpoint()),
                        nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(2, 1, 4, 4)

    _, breaks = compile_and_compare(net, x)
    assert net[2].__dict__.get("_compiled_field") is not None and net[1].__dict__.get("_compiled_field") is None
    reasons = list(breaks)
    assert len(reasons) == 1 and "torch.compiler.disable" in reasons[0], reasons  # the checkpoint block only
    net[2].uncompile_field()


def test_compiled_backprop_block_with_rda_and_per_time_batchnorm_traces_without_a_break():
    """A Backprop block with an evolving θ and per-time BatchNorm (norm="batch_t") traces into one
    graph: the coefficients are prepared (and projected) once per solve, and the normalisation is
    told each evaluation's time as a float of the fixed grid (no float(t) in the trace). Gradients
    equal eager's, and each slot is updated once per forward (times 0 and 1/2 of euler x 2; never 1)."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this platform / Python")
    from anodev2.time_norm import TimeBatchNorm2d

    torch._dynamo.reset()
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), TimeBatchNorm2d(2), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1))
    blk = anodev2.ODEBlock(f, steps=2, method="euler", grad=anodev2.Backprop(),
                           evolution={"kind": "rda", "init_scale": 0.1})
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), blk, nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    _, breaks = compile_and_compare(net, torch.randn(2, 1, 4, 4))
    assert breaks == {}, list(breaks)
    bn = f[1]
    assert bn.times == (0.0, 0.5, 1.0)
    assert [int(bn.get_buffer(f"num_batches_tracked_t{k}")) for k in range(3)] == [2, 2, 0]  # eager + compiled


@pytest.mark.parametrize("kind", ["rda", "generator", "diffusion", "reaction"])
def test_prepared_rates_are_bitwise_the_evolution_forward(kind):
    """An ode kind's coefficient-only work, done once per solve (prepare), then applied at each
    evaluation (rates_prepared), gives exactly forward(t, thetas) -- also for targets of two
    kernel sizes and in_channels (two groups, two batches)."""
    shapes = {"a.weight": (3, 2, 3, 3), "b.weight": (4, 2, 3, 3), "c.weight": (2, 5, 3, 3), "d.weight": (2, 2, 1, 3)}
    torch.manual_seed(1)
    evo = anodev2.evolution.build_evolution(kind, shapes, init_scale=0.1).double()
    thetas = tuple(torch.randn(s, dtype=torch.float64) for s in shapes.values())
    t = torch.tensor(0.3, dtype=torch.float64)
    ref, got = evo(t, thetas), evo.rates_prepared(thetas, evo.prepare(torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert any(bool(r.abs().max() > 0) for r in ref)  # not all zero: the comparison means something


def test_prepared_operators_once_per_solve_and_two_forwards_before_one_backward(monkeypatch):
    """The block folds the coefficients once per forward solve (not per evaluation, not again in
    backward), hands the folded tensors to the adjoint, and a backward run after a second forward
    re-evaluates the tensors of its own forward: gradients equal Backprop's in float64."""
    calls = []
    real = anodev2.evolution.slices.SliceEvolution.prepare
    monkeypatch.setattr(anodev2.evolution.slices.SliceEvolution, "prepare",
                        lambda self, dtype=torch.float32: calls.append(1) or real(self, dtype))
    x1, x2 = (torch.randn(2, 2, 5, 5, dtype=torch.float64) for _ in range(2))
    grads = {}
    for grad in ("backprop", "checkpoint", anodev2.Checkpoint(keep_forward=True)):
        blk = anodev2.ODEBlock(_f(), steps=3, method="rk4", grad=grad,
                               evolution={"kind": "rda", "init_scale": 0.1})
        calls.clear()
        y1 = blk(x1)
        with torch.no_grad():  # a forward in between changes the coefficients, not solve 1's tensors
            for p in blk.evolution.parameters():
                p.mul_(0.5)
        y2 = blk(x2)
        assert len(calls) == 2  # one per solve
        loss = y1.square().sum() + (y2 ** 3).sum()
        grads[str(grad)] = torch.autograd.grad(loss, list(blk.parameters()))
        assert len(calls) == 2  # backward folds nothing again
    ref = grads["backprop"]
    for name, g in grads.items():
        for a, b in zip(g, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} vs backprop")


def test_prepared_operators_are_full_precision_under_autocast():
    blk = anodev2.ODEBlock(_f(dtype=torch.float32), steps=2, method="euler", evolution="rda")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tensors = blk.evolution.prepare(torch.float32)
    assert all(t.dtype == torch.float32 for t in tensors)
