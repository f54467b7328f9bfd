"""ODEBlock: coupled (z, θ) integration, exact gradients to θ0 / p / static params,
BatchNorm and dropout under recomputation, weights_at, memory of the forward pass, bad input."""
import pytest
import torch
from torch import nn

import anodev2
from anodev2 import ODEBlock
from anodev2.evolution import EVOLUTION_KINDS, build_evolution
from helpers import rel_err

D = torch.float64


def make_f(norm="bn", dropout=0.0, channels=4):
    layers = [nn.Conv2d(channels, channels, 3, padding=1)]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(channels))
    elif norm == "gn":
        layers.append(nn.GroupNorm(2, channels))
    layers += [nn.ReLU(), nn.Dropout(dropout) if dropout else nn.Identity(), nn.Conv2d(channels, channels, 3, padding=1)]
    return nn.Sequential(*layers).to(D)


def make_block(seed=0, **kw):
    torch.manual_seed(seed)
    f = make_f(kw.pop("norm", "bn"), kw.pop("dropout", 0.0))
    b = ODEBlock(f, **kw).to(D)
    if b.evolution is not None:  # make the evolution visible: coefficients well away from zero
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for p in b.evolution.parameters():
                p.add_(0.5 * torch.randn_like(p))
    return b


def train_step(block, x, seed=0):
    torch.manual_seed(seed)
    y = block(x)
    loss = (y.sin() ** 2).mean()
    params = [p for p in block.parameters()]
    return y.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("evolution", [None, *EVOLUTION_KINDS])
@pytest.mark.parametrize("method,steps,checkpoints", [("euler", 3, None), ("rk4", 4, 1), ("heun", 5, 0)])
def test_block_gradients_equal_backprop(evolution, method, steps, checkpoints):
    x = torch.randn(2, 4, 5, 5, dtype=D)
    ref_block = make_block(evolution=evolution, method=method, steps=steps, grad="backprop")
    blk = make_block(evolution=evolution, method=method, steps=steps, grad=anodev2.Checkpoint(checkpoints))
    y_ref, g_ref = train_step(ref_block, x)
    y, g = train_step(blk, x)
    assert torch.equal(y, y_ref)
    names = [n for n, _ in blk.named_parameters()]
    assert len(g) == len(g_ref) == len(names)
    for n, a, b in zip(names, g, g_ref):
        assert b.abs().sum() > 0, f"{n} got no gradient"
        assert rel_err(a, b) < 1e-10, n
    for (n, a), (_, b) in zip(blk.f.named_buffers(), ref_block.f.named_buffers()):
        assert torch.equal(a, b), f"buffer {n} differs from backprop after a training step"
    if evolution not in (None, "static"):
        assert len(blk.evolving_names) == 2
        assert any(n.startswith("evolution.") for n in names)


def test_gradient_reaches_theta0_and_coefficients_and_static_params():
    blk = make_block(evolution={"kind": "rda", "targets": ["0.weight"]}, steps=3, method="rk4")
    assert blk.evolving_names == ("0.weight",)
    x = torch.randn(2, 4, 5, 5, dtype=D)
    _, g = train_step(blk, x)
    grads = dict(zip([n for n, _ in blk.named_parameters()], g))
    assert grads["f.0.weight"].abs().sum() > 0  # θ0, evolving
    assert grads["f.4.weight"].abs().sum() > 0  # static conv weight
    assert grads["f.1.weight"].abs().sum() > 0  # BatchNorm affine, static
    evo = [n for n in grads if n.startswith("evolution.")]
    assert evo and all(grads[n].abs().sum() > 0 for n in evo)


def test_static_and_none_compute_exactly_the_anode_block():
    x = torch.randn(2, 4, 5, 5, dtype=D)
    outs = []
    for evo in (None, "static"):
        blk = make_block(evolution=evo, steps=3, method="rk4")
        y, g = train_step(blk, x)
        outs.append((y, g))
        assert blk.evolving_names == ()
        assert blk.last_stats.forward_evals == 12
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))


def test_weights_at_is_the_theta_trajectory():
    blk = make_block(evolution="diffusion", steps=4, method="rk4")
    x = torch.randn(2, 4, 5, 5, dtype=D)
    blk(x)
    traj = blk.weights_at()
    assert set(traj) == {"0.weight", "4.weight"}
    evo = blk.evolution
    params = dict(blk.f.named_parameters())
    theta0 = tuple(params[n].detach() for n in evo.targets)
    # q does not depend on z: the trajectory's end equals θ integrated on its own
    alone = anodev2.odeint(lambda t, th: evo(t, th), theta0, steps=4, method="rk4", grad="backprop")
    for i, name in enumerate(evo.targets):
        ws = traj[name]
        assert len(ws) == 5
        assert torch.equal(ws[0], theta0[i])
        assert not ws[-1].requires_grad
        torch.testing.assert_close(ws[-1], alone[i], rtol=1e-12, atol=1e-14)
        assert (ws[-1] - ws[0]).norm() > 1e-6
    static = make_block(evolution="static", steps=3)
    static(x)
    assert all(len(v) == 4 for v in static.weights_at().values())
    assert make_block(evolution=None).weights_at() == {}


def test_time_dependent_f():
    class TimeConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, t, z):
            return torch.tanh(self.conv(z)) * (1 + t)

    torch.manual_seed(0)
    f = TimeConv().to(D)
    x = torch.randn(1, 3, 4, 4, dtype=D)
    y = ODEBlock(f, steps=2, method="euler", grad="checkpoint")(x)
    h = 0.5
    z1 = x + h * f(torch.tensor(0.0), x)
    z2 = z1 + h * f(torch.tensor(0.5), z1)
    torch.testing.assert_close(y, z2)
    ODEBlock(f, evolution="rda", steps=2)(x)  # functional_call path with (t, z)


def test_dropout_masks_are_reused_in_recomputation():
    x = torch.randn(2, 4, 5, 5, dtype=D)
    res = {}
    for grad in ("backprop", "checkpoint"):
        blk = make_block(evolution="rda", steps=3, method="rk4", dropout=0.5,
                         grad=anodev2.Checkpoint(checkpoints=1) if grad == "checkpoint" else grad)
        res[grad] = train_step(blk, x, seed=7)
        res[grad + "_rng"] = torch.rand(3)  # the global stream continues identically
    y_a, g_a = res["backprop"]
    y_b, g_b = res["checkpoint"]
    assert torch.equal(y_a, y_b)
    for a, b in zip(g_b, g_a):
        assert rel_err(a, b) < 1e-10
    assert torch.equal(res["backprop_rng"], res["checkpoint_rng"])


def test_batchnorm_statistics_over_training_steps():
    x = torch.randn(4, 4, 5, 5, dtype=D)
    blocks = {g: make_block(evolution="rda", steps=2, method="midpoint", grad=g) for g in ("backprop", "checkpoint")}
    for g, blk in blocks.items():
        opt = torch.optim.SGD(blk.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            (blk(x) ** 2).mean().backward()
            opt.step()
    a, b = blocks["checkpoint"].f[1], blocks["backprop"].f[1]
    # equal up to the round-off by which the parameters of the two runs differ after SGD steps
    torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-12, atol=1e-14)
    assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 3 * 2 * 2  # steps * stages per call
    for pa, pb in zip(blocks["checkpoint"].parameters(), blocks["backprop"].parameters()):
        assert rel_err(pa, pb) < 1e-12


def _saved_numel(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_forward_memory_is_only_the_block_input():
    x = torch.randn(2, 4, 8, 8, dtype=D, requires_grad=True)
    blk = make_block(evolution="rda", steps=8, method="rk4", grad="checkpoint")
    ref = make_block(evolution="rda", steps=8, method="rk4", grad="backprop")
    inputs = x.numel() + sum(p.numel() for p in blk.parameters())
    # the evolution's operators, folded from its coefficients once per solve (WeightEvolution.prepare),
    # are held with the parameters: their size is the coefficients' times HW, independent of Nt and batch
    prepared = _saved_numel(lambda: blk.evolution.prepare(D)) + sum(t.numel() for t in blk.evolution.prepare(D))
    assert _saved_numel(lambda: blk(x)) <= inputs + prepared
    short = make_block(evolution="rda", steps=2, method="rk4", grad="checkpoint")
    assert _saved_numel(lambda: blk(x)) == _saved_numel(lambda: short(x))  # O(1) in Nt
    assert _saved_numel(lambda: ref(x)) > 20 * x.numel()
    blk.eval()
    with torch.no_grad():
        assert _saved_numel(lambda: blk(x)) == 0
        assert not blk(x).requires_grad


def test_backsolve_block_runs_and_differs():
    x = torch.randn(2, 4, 5, 5, dtype=D)
    _, g_exact = train_step(make_block(evolution="rda", steps=2, grad="backprop"), x)
    _, g_bs = train_step(make_block(evolution="rda", steps=2, grad="backsolve"), x)
    assert all(torch.isfinite(g).all() for g in g_bs)
    assert max(rel_err(a, b) for a, b in zip(g_bs, g_exact)) > 1e-6


def test_bad_inputs():
    f = make_f()
    with pytest.raises(ValueError, match="evolution='wave' is not allowed; allowed: static | "):
        ODEBlock(f, evolution="wave")
    with pytest.raises(ValueError, match="evolution.kind='wave' is not allowed; allowed: static | "):
        ODEBlock(f, evolution={"kind": "wave"})
    with pytest.raises(ValueError, match=r"evolution=\{'d_max': 0.1\} needs 'kind'; allowed: static \| "):
        ODEBlock(f, evolution={"d_max": 0.1})
    with pytest.raises(ValueError, match="evolution targets entry 'conv9.weight' matches no parameter"):
        ODEBlock(f, evolution={"kind": "rda", "targets": ["conv9.weight"]})
    with pytest.raises(ValueError, match=r"^evolution.d_maxx is not an option of evolution kind 'rda'; allowed: targets, a_max"):
        ODEBlock(f, evolution={"kind": "rda", "d_maxx": 0.1})
    with pytest.raises(ValueError, match="f has no nn.Conv2d"):
        ODEBlock(nn.Linear(3, 3), evolution="rda")
    with pytest.raises(TypeError, match="f must be an nn.Module"):
        ODEBlock(lambda z: z)
    with pytest.raises(ValueError, match="method='rk7'"):
        ODEBlock(f, method="rk7")
    with pytest.raises(ValueError, match="grad='adjoint'"):
        ODEBlock(f, grad="adjoint")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        ODEBlock(f, steps=0)
    with pytest.raises(TypeError, match=r"ODEBlock\(\) no longer takes \['checkpoints'\].*Checkpoint\(checkpoints=3\)"):
        ODEBlock(f, grad="backsolve", checkpoints=3)

    class ThreeArgs(nn.Module):
        def forward(self, t, z, extra):
            return z

    with pytest.raises(TypeError, match=r"f.forward must take \(z\) or \(t, z\)"):
        ODEBlock(ThreeArgs())
    other = build_evolution("rda", {"conv.weight": torch.Size([4, 4, 3, 3])})
    with pytest.raises(ValueError, match="evolution target 'conv.weight' is not a parameter of f"):
        ODEBlock(f, evolution=other)
    wrong = build_evolution("rda", {"0.weight": torch.Size([4, 4, 5, 5])})
    with pytest.raises(ValueError, match="has shape"):
        ODEBlock(f, evolution=wrong)


def test_autocast_state_is_replayed_in_recomputation():
    # CPU bfloat16 autocast: the recomputed steps must run under the same autocast state as the
    # forward pass, else the gradients differ at bfloat16 precision (~1e-2).
    x = torch.randn(2, 4, 6, 6)
    res = {}
    for grad in ("backprop", "checkpoint"):
        torch.manual_seed(0)
        blk = ODEBlock(make_f(norm="gn").float(), steps=3, method="rk4", grad=grad, evolution="rda")
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # no cached bf16 weight casts
            y = blk(x)
        res[grad] = torch.autograd.grad(y.float().square().mean(), list(blk.parameters()))
    for a, b in zip(res["checkpoint"], res["backprop"]):
        assert rel_err(a, b) < 1e-5  # without the replay: 3e-4 .. 4e-3


def test_state_dict_keys_and_device_moves_keep_the_field_consistent():
    blk = make_block(evolution="rda", steps=2)
    keys = list(blk.state_dict())
    assert "f.0.weight" in keys and any(k.startswith("evolution.") for k in keys)
    assert not any(k.startswith("field.") for k in keys), "f must be stored once"
    blk.float()
    assert blk.field.f is blk.f and blk.field.f[0].weight.dtype == torch.float32
    blk(torch.randn(1, 4, 5, 5))
    import copy
    twin = copy.deepcopy(blk)
    assert twin.field.f is twin.f and twin.f is not blk.f


def test_keep_forward_block_equals_backprop_with_batchnorm_and_dropout():
    x = torch.randn(2, 4, 5, 5, dtype=D)
    y_ref, g_ref = train_step(make_block(evolution="rda", steps=4, method="rk4", grad="backprop", dropout=0.3), x, 3)
    blk = make_block(evolution="rda", steps=4, method="rk4", dropout=0.3,
                     grad=anodev2.Checkpoint(keep_forward=True))
    y, g = train_step(blk, x, 3)
    assert torch.equal(y, y_ref)
    assert all(rel_err(a, b) < 1e-10 for a, b in zip(g, g_ref))
    assert blk.last_stats.recomputed_steps == 0  # every state came from the forward pass
    with pytest.raises(TypeError, match="no longer takes"):
        ODEBlock(make_f(), grad="backprop", keep_forward=True)
