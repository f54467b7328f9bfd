"""norm="batch_t": TimeBatchNorm2d keeps running statistics per evaluation time of an ODE block
(anodev2/time_norm.py). Training mode equals norm="batch" bitwise; the Checkpoint adjoint's
recomputation neither updates a slot twice nor uses another slot; eval mode uses the slot of t."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anodev2
from anodev2.models import build, ode_blocks
from anodev2.time_norm import TimeBatchNorm2d, time_grid


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def batch(n=4, size=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def net(norm, **options):
    options.setdefault("evolution", "galerkin")
    return build("resnet4", "anodev2", width=0.25, norm=norm, **options).double()


def grads(model, x, y):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


def randomise_evolution(model, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, block in ode_blocks(model):
            for p in block.evolution.parameters():
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_layers_and_slots():
    model = net("batch_t")
    layers = [m for m in model.modules() if isinstance(m, TimeBatchNorm2d)]
    assert layers and not any(type(m) is nn.BatchNorm2d for m in model.modules())
    (_, block), = ode_blocks(model)
    inside = [m for m in block.f.modules() if isinstance(m, TimeBatchNorm2d)]
    assert inside and all(m.times == (0.0, 1 / 3, 2 / 3, 1.0) for m in inside)
    assert all(m.times == () for m in layers if not any(m is i for i in inside))  # stem etc.: plain BN
    keys = model.state_dict()
    assert {"layer1.0.f.norm1.running_mean_t3", "layer1.0.f.norm1.running_var_t0",
            "layer1.0.f.norm1.num_batches_tracked_t1"} <= set(keys)
    assert not any(k.endswith("_t0") and not k.startswith("layer1.0.f.") for k in keys)
    assert time_grid(0.0, 1.0, 2, (0.0, 0.5, 0.5, 1.0)) == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("grad", ["checkpoint", "backprop"])
def test_training_mode_equals_batchnorm_bitwise(grad):
    torch.manual_seed(0)
    ref = net("batch", grad=grad)
    randomise_evolution(ref)
    tbn = net("batch_t", grad=grad)
    missing, unexpected = tbn.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all("_t" in k.rsplit(".", 1)[-1] for k in missing)
    x, y = batch()
    for a, b in zip(grads(ref, x, y), grads(tbn, x, y)):
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        else:
            assert torch.equal(a, b)
    # outside the ODE block (stem, ...) the running statistics are BatchNorm's
    rs, ts = ref.state_dict(), tbn.state_dict()
    (path, _), = ode_blocks(ref)
    for k in rs:
        if "running" in k and not k.startswith(path + "."):
            assert torch.equal(rs[k], ts[k]), k


def test_checkpoint_equals_backprop_and_slots_updated_once():
    torch.manual_seed(1)
    ck = net("batch_t", grad="checkpoint")
    randomise_evolution(ck)
    bp = net("batch_t", grad="backprop")
    bp.load_state_dict(ck.state_dict())
    x, y = batch(seed=3)
    _, gx, gp = grads(ck, x, y)
    _, rx, rp = grads(bp, x, y)
    assert (gx - rx).norm() <= 1e-10 * rx.norm()
    for n in rp:
        assert (gp[n] - rp[n]).norm() <= 1e-10 * rp[n].norm() + 1e-300, n
    cs, bs = ck.state_dict(), bp.state_dict()
    for k in bs:  # the recomputation in backward updated no statistics a second time
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(cs[k], bs[k], rtol=1e-13, atol=1e-15, msg=k)
    assert any(k.endswith("num_batches_tracked_t1") and int(v) == 1 for k, v in cs.items())


def linear_block(grad="checkpoint", slope=2.0, seed=0):
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), TimeBatchNorm2d(4), nn.Tanh())
    block = anodev2.ODEBlock(f, steps=3, method="euler", grad=grad, evolution="linear").double()
    with torch.no_grad():
        for p in block.evolution.parameters():
            p.copy_(slope * torch.randn_like(p))
    return block


def test_slot_statistics_equal_a_batchnorm_per_time():
    block = linear_block()
    bn = block.f[1]
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append((m.current_time, inp[0].detach().clone())))
    refs = {k: nn.BatchNorm2d(4).double() for k in range(3)}
    opt = torch.optim.SGD(block.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(5)
    for step in range(3):
        x = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
        seen.clear()
        out = block(x)
        forward = list(seen)
        assert [t for t, _ in forward] == pytest.approx([0.0, 1 / 3, 2 / 3])
        for k, (_, inp) in enumerate(forward):
            refs[k](inp)  # a BatchNorm that only ever sees f's normalised input at t_k
        out.square().mean().backward()  # Checkpoint recomputes f (hook fires again) without updating
        assert len(seen) > len(forward)
        again = sorted({round(t, 12) for t, _ in seen[len(forward):]})
        assert again == pytest.approx([0.0, 1 / 3, 2 / 3])  # recomputed at the forward's times: the same slots
        opt.step()
        opt.zero_grad()
    hook.remove()
    for k in range(3):
        torch.testing.assert_close(getattr(bn, f"running_mean_t{k}"), refs[k].running_mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(getattr(bn, f"running_var_t{k}"), refs[k].running_var, rtol=1e-12, atol=1e-14)
        assert int(getattr(bn, f"num_batches_tracked_t{k}")) == 3
    assert int(bn.num_batches_tracked_t3) == 0 and int(bn.num_batches_tracked) == 0  # t1 never evaluated (euler)
    assert torch.equal(bn.running_mean, torch.zeros(4, dtype=torch.float64))


def test_eval_uses_the_slot_of_t():
    block = linear_block(slope=3.0, seed=2)
    bn = block.f[1]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(4):
            block(torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64))
    means = torch.stack([getattr(bn, f"running_var_t{k}") for k in range(3)])
    assert (means[2] - means[0]).abs().max() > 0.1 * means[0].abs().max()  # statistics do depend on t
    block.eval()
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        # by hand: explicit Euler with θ(t_k) = θ0 + t_k θ1 and f's norm in eval with slot k's statistics
        conv = block.f[0]
        slope, = block.evolution.parameters()
        z, h = x, 1 / 3
        for k in range(3):
            w = conv.weight + (k * h) * slope
            a = F.conv2d(z, w, conv.bias, padding=1)
            a = F.batch_norm(a, getattr(bn, f"running_mean_t{k}"), getattr(bn, f"running_var_t{k}"), bn.weight, bn.bias,
                             False, 0.0, bn.eps)
            z = z + h * torch.tanh(a)
    torch.testing.assert_close(out, z, rtol=1e-12, atol=1e-12)
    assert bn.current_time is None  # reset after the solve


def test_state_dict_round_trip():
    torch.manual_seed(3)
    a = net("batch_t")
    randomise_evolution(a)
    x, y = batch(seed=4)
    grads(a, x, y)
    grads(a, x + 1, y)
    b = net("batch_t")
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == set(b.state_dict())


def test_config_accepts_batch_t():
    from anodev2.training import cli
    from anodev2.training.config import load_config
    from anodev2.training.runs import build_model

    cfg = load_config("aconnect", ["model.name=resnet4", "model.width=0.25", "data.name=synthetic", "model.norm=batch_t"])
    assert cfg.model.norm == "batch_t"
    assert any(isinstance(m, TimeBatchNorm2d) for m in build_model(cfg).modules())
    assert "batch_t" in cli.build_parser().format_help()


@pytest.mark.parametrize("grad", ["backprop", "checkpoint"])
def test_the_slot_is_found_without_reading_t_from_the_device(monkeypatch, grad):
    """The block tells the layers each evaluation's time from the float the solver's stage-time
    tensor was made from (``time_value``), never ``float(t)``: on a GPU that would be a
    device-to-host copy, waiting for the queued work, at every evaluation of f."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), TimeBatchNorm2d(2), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1))
    blk = anodev2.ODEBlock(f, steps=3, method="rk4", grad=grad, evolution={"kind": "rda", "init_scale": 0.1})
    x = torch.randn(4, 2, 5, 5)

    def no_float(self):
        raise AssertionError("float(t) of a tensor was read inside the solve")

    monkeypatch.setattr(torch.Tensor, "__float__", no_float)
    blk(x).square().mean().backward()
    monkeypatch.undo()
    bn = f[1]
    counts = [int(bn.get_buffer(f"num_batches_tracked_t{k}")) for k in range(len(bn.times))]
    evaluated = [(n + c) / 3 for n in range(3) for c in (0.0, 0.5, 0.5, 1.0)]  # rk4's stage times, forward only
    assert counts == [sum(abs(t - e) < 1e-9 for e in evaluated) for t in bn.times] == [1, 2, 2, 2, 2, 2, 1]
