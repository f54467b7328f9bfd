"""Tests for anodev2.models: every (name, variant) builds, runs, trains; the exact adjoint of the
ODE variants matches autograd; inspection helpers; option validation. Tiny widths, small inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anodev2
from anodev2.models import (
    MODELS,
    VARIANTS,
    build,
    describe,
    format_description,
    ode_blocks,
    param_counts,
)

NAMES = tuple(MODELS)
ODE_VARIANTS = ("neuralode", "anode", "anodev2")
#: channel multipliers giving 2-32 channel networks
TINY = {"resnet4": 0.25, "resnet10": 0.25, "resnet18": 1 / 16, "alexnet": 1 / 16, "sqnxt23": 0.125}
#: the ODE blocks each network must have (module paths)
EXPECTED_BLOCKS = {
    "resnet4": ["layer1.0"],
    "resnet10": ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"],
    "resnet18": ["layer1.1", "layer2.1", "layer3.1", "layer4.1"],
    "alexnet": ["features.conv4"],
    "sqnxt23": ["stage1.1", "stage2.1", "stage3.1", "stage4.1"],
}
EXPECTED_GRAD = {"neuralode": "backsolve", "anode": "checkpoint", "anodev2": "checkpoint"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared machine the thread
    barriers make them erratic; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, variant: str, **options) -> nn.Module:
    return build(name, variant, width=TINY[name], **options)


def batch(n: int = 4, size: int = 16, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def same_f_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy src's weights into dst: ODEBlock and discrete residual blocks both keep f under
    ``.f.``, so keys match across variants; dst's extra entries (evolution coefficients) are
    left alone."""
    src_sd = src.state_dict()
    dst_sd = dst.state_dict()
    missing = [k for k in dst_sd if k not in src_sd and ".evolution." not in k]
    assert not missing, missing
    dst.load_state_dict({k: src_sd.get(k, v) for k, v in dst_sd.items()})


def run(model: nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)  # same dropout masks (alexnet) in every compared run
    return model(x)


# --- every (name, variant) ---------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_cifar_batch(name, variant):
    torch.manual_seed(0)
    model = tiny(name, variant)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_and_in_channels(name):
    """MNIST-shaped input (1 channel, 28x28) and another class count."""
    model = tiny(name, "anode", num_classes=7, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_sgd_steps_lower_loss_on_fixed_batch(name, variant):
    torch.manual_seed(0)
    model = tiny(name, variant)
    x, y = batch(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(run(model, x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = F.cross_entropy(run(model, x), y).item()
    assert all(map(lambda v: v == v, losses))
    assert final < losses[0], (losses, final)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_describe_lists_the_ode_blocks(name, variant):
    model = tiny(name, variant)
    rows = describe(model)
    if variant == "baseline":
        assert rows == [] and ode_blocks(model) == []
        return
    assert [r["name"] for r in rows] == EXPECTED_BLOCKS[name]
    assert [n for n, _ in ode_blocks(model)] == EXPECTED_BLOCKS[name]
    for r, (_, block) in zip(rows, ode_blocks(model)):
        assert isinstance(block, anodev2.ODEBlock)
        assert (r["steps"], r["method"], r["grad"], r["grad_options"]) == (
            3, "euler", EXPECTED_GRAD[variant], block.grad_mode.options())
        assert block.grad_mode == anodev2.adjoint.get_grad_mode(EXPECTED_GRAD[variant])
        if variant == "anodev2":
            assert r["evolution"] == "rda"
            convs = {f"{n}.weight": tuple(m.weight.shape) for n, m in block.f.named_modules()
                     if isinstance(m, nn.Conv2d) and m.weight.shape[-1] * m.weight.shape[-2] > 1}
            assert convs and r["evolving"] == convs
        else:
            assert r["evolution"] is None and r["evolving"] == {}
    text = format_description(model)
    assert all(n in text for n in EXPECTED_BLOCKS[name])


@pytest.mark.parametrize("variant", VARIANTS)
def test_ode_functions_have_no_inplace_ops(variant):
    for name in NAMES:
        for _, block in ode_blocks(tiny(name, variant)):
            assert not any(getattr(m, "inplace", False) for m in block.f.modules())


# --- exactness of the adjoint, variant consistency -----------------------------------------

def _grads(model, x, w):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    (run(model, x) * w).sum().backward()
    return x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", ["anode", "anodev2"])
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_gradients_equal_backprop(name, variant):
    """grad="checkpoint" is the exact derivative of the computed forward map (float64)."""
    torch.manual_seed(1)
    exact = tiny(name, variant).double()
    ref = tiny(name, variant, grad="backprop").double()
    ref.load_state_dict(exact.state_dict())
    x, _ = batch(3, dtype=torch.float64)
    w = torch.randn(3, 10, dtype=torch.float64)
    gx, gp = _grads(exact, x, w)
    rx, rp = _grads(ref, x, w)
    assert (gx - rx).norm() <= 1e-10 * rx.norm()
    assert gp.keys() == rp.keys()
    for n in rp:
        assert rp[n] is not None, n
        assert (gp[n] - rp[n]).norm() <= 1e-10 * rp[n].norm() + 1e-300, n
    # the adjoint really recomputed steps (it is not autograd in disguise) ...
    for _, block in ode_blocks(exact):
        assert block.last_stats.grad == "checkpoint" and block.last_stats.recomputed_steps >= 1
    # ... and BatchNorm running statistics were updated exactly as under backprop
    for (n, b), (_, rb) in zip(exact.named_buffers(), ref.named_buffers()):
        assert torch.allclose(b, rb, rtol=1e-12, atol=1e-14), n


@pytest.mark.parametrize("name", NAMES)
def test_anodev2_static_evolution_is_anode(name):
    torch.manual_seed(2)
    anode = tiny(name, "anode")
    static = tiny(name, "anodev2", evolution="static")
    static.load_state_dict(anode.state_dict())
    assert param_counts(static) == param_counts(anode)
    x, _ = batch(2)
    ya, ys = run(anode, x), run(static, x)
    assert torch.equal(ya, ys)
    ya.sum().backward()
    ys.sum().backward()
    for (n, p), (_, q) in zip(anode.named_parameters(), static.named_parameters()):
        assert torch.equal(p.grad, q.grad), n


@pytest.mark.parametrize("name", NAMES)
def test_baseline_is_one_euler_step_of_the_ode(name):
    torch.manual_seed(3)
    base = tiny(name, "baseline").double()
    ode = tiny(name, "anode", steps=1, grad="backprop").double()
    same_f_weights(base, ode)
    x, _ = batch(2, dtype=torch.float64)
    torch.testing.assert_close(run(ode, x), run(base, x), rtol=1e-12, atol=1e-12)
    # and the default 2-step ODE is a different map
    two = tiny(name, "anode").double()
    same_f_weights(base, two)
    assert not torch.allclose(run(two, x), run(base, x), rtol=1e-6, atol=1e-6)


def test_group_norm_option():
    torch.manual_seed(4)
    exact = tiny("resnet10", "anodev2", norm="group").double()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in exact.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in exact.modules())
    ref = tiny("resnet10", "anodev2", norm="group", grad="backprop").double()
    ref.load_state_dict(exact.state_dict())
    x, _ = batch(2, dtype=torch.float64)
    _, gp = _grads(exact, x, 1.0)
    _, rp = _grads(ref, x, 1.0)
    for n in rp:
        assert (gp[n] - rp[n]).norm() <= 1e-10 * rp[n].norm(), n


# --- options --------------------------------------------------------------------------------

def test_options_override_variant_defaults():
    model = build("resnet4", "anode", grad="backprop", width=0.25)
    assert [r["grad"] for r in describe(model)] == ["backprop"]
    model = build("resnet10", "neuralode", steps=3, method="rk4", width=0.25)
    assert {(r["steps"], r["method"], r["grad"]) for r in describe(model)} == {(3, "rk4", "backsolve")}
    model = build("resnet10", "anodev2", grad={"checkpoints": 1}, evolution={"kind": "diffusion", "d_max": 0.1,
                                                                             "targets": ["conv1.weight"]}, width=0.25)
    rows = describe(model)
    assert {(r["grad_options"]["checkpoints"], r["evolution"]) for r in rows} == {(1, "diffusion")}
    assert all(list(r["evolving"]) == ["conv1.weight"] for r in rows)
    assert {b.evolution.bounds()["diffusion"] for _, b in ode_blocks(model)} == {(0.0, 0.1)}
    # targets left out or None: the spatial conv weights (sqnxt23: 2 of its 5 convs); patterns select others
    assert len(describe(build("sqnxt23", "anodev2", width=0.125))[0]["evolving"]) == 2
    assert len(describe(build("sqnxt23", "anodev2", evolution={"targets": None}, width=0.125))[0]["evolving"]) == 2
    model = build("sqnxt23", "anodev2", evolution={"targets": ["*conv*.weight"]}, width=0.125)
    evolving = describe(model)[0]["evolving"]
    assert len(evolving) == sum(1 for n, p in ode_blocks(model)[0][1].f.named_parameters()
                                if p.dim() == 4 and "conv" in n) and len(evolving) > 2
    # an evolution on the anode variant
    assert {r["evolution"] for r in describe(build("resnet4", "anode", evolution="reaction", width=0.25))} == {"reaction"}


@pytest.mark.parametrize(
    "args, options, match",
    [
        (("resnet5", "anode"), {}, r"unknown model name 'resnet5'.*resnet4.*sqnxt23"),
        ((3, "anode"), {}, "unknown model name"),
        (("resnet4", "ode"), {}, r"unknown variant 'ode'.*baseline.*anodev2"),
        (("resnet4", "anode"), {"stepz": 2}, r"unknown option.*stepz.*allowed.*steps"),
        (("resnet4", "baseline"), {"steps": 2}, r"make no sense for variant 'baseline'"),
        (("resnet4", "baseline"), {"evolution": "rda"}, r"make no sense for variant 'baseline'"),
        (("resnet4", "anode"), {"evolution_targets": ["conv1.weight"]}, r"option evolution_targets=\['conv1.weight'\] "
                                                                        r"has moved: write evolution="),
        (("resnet4", "anode"), {"evolution": {"targets": ["conv1.weight"]}}, r"evolution=.* needs 'kind'"),
        (("resnet4", "neuralode"), {"checkpoints": 2}, r"option checkpoints=2 has moved: write grad="),
        (("resnet4", "neuralode"), {"grad": {"checkpoints": 2}}, r"grad.checkpoints is not an option of grad mode "
                                                                 r"'backsolve'"),
        (("resnet4", "anode"), {"norm": "layer"}, r"norm must be one of \('batch', 'group', 'batch_t'\)"),
        (("resnet4", "anode"), {"width": 0}, "width must be a positive"),
        (("resnet4", "anode"), {"method": "rk45"}, "rk45"),
        (("resnet4", "anode"), {"grad": "adjoint"}, "adjoint"),
        (("resnet4", "anode"), {"steps": 0}, "steps"),
        (("resnet4", "anodev2"), {"evolution": "wave"}, r"evolution='wave' is not allowed; allowed: static \| .*rda"),
        (("resnet4", "anodev2"), {"evolution": object()}, "evolution must be None, a kind name or a mapping"),
        (("resnet4", "anodev2"), {"evolution": {"targets": ["nope.weight"]}}, "nope"),
        (("resnet4", "anodev2"), {"evolution": {"a_max": 2.0}}, r"evolution.a_max=2.0 is not allowed"),
        (("resnet4", "anode", 0), {}, "num_classes"),
    ],
)
def test_bad_arguments_raise_value_error(args, options, match):
    with pytest.raises(ValueError, match=match):
        build(*args, **options)


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="width"):
        build("resnet4", "anode", width="wide")
    with pytest.raises(TypeError, match="in_channels"):
        build("resnet4", "anode", in_channels=3.0)
    with pytest.raises(TypeError, match="nn.Module"):
        describe("resnet4")


# --- parameter counts -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_evolution_parameters_below_three_percent(name):
    """Full-size networks: ANODEV2's coefficients p add < 3% to the ANODE network (rda: per
    target conv O·(5 + kH·kW): diffusion, four advection speeds per output channel, reaction per
    output channel and kernel entry; resnet10 2.47%, resnet18 0.24%)."""
    base = param_counts(build(name, "anode"))
    v2 = param_counts(build(name, "anodev2"))
    assert v2["evolution"] > 0
    assert v2["total"] == base["total"] + v2["evolution"]
    assert v2["evolution"] < 0.03 * base["total"], (v2, base)


def test_param_counts_consistent():
    counts = {v: param_counts(tiny("resnet10", v)) for v in VARIANTS}
    model = tiny("resnet10", "anodev2")
    assert counts["anodev2"]["total"] == sum(p.numel() for p in model.parameters())
    assert counts["baseline"]["total"] == counts["neuralode"]["total"] == counts["anode"]["total"]
    assert counts["baseline"]["ode_f"] == 0 and counts["anode"]["ode_f"] > 0
    assert all(counts[v]["evolution"] == 0 for v in ("baseline", "neuralode", "anode"))


# --- scripts ----------------------------------------------------------------------------

def test_param_table_script(capsys):
    from anodev2.models.__main__ import main, param_table

    rows = param_table(width=0.125)
    assert len(rows) == len(NAMES) * len(VARIANTS)
    main(["--width", "0.125"])
    out = capsys.readouterr().out
    assert all(f"| {n} | {v} |" in out for n in NAMES for v in VARIANTS)


def test_bench_workers_measure_training_steps():
    import experiments.bench_models as bench

    assert bench.row_build_args("ode-backprop") == ("anode", {"grad": "backprop"})
    args = bench.parse_args(["--model", "resnet4", "--row", "anodev2", "--quick",
                             "--variants", "baseline,anodev2"])
    memory = bench.memory_worker(args)
    assert memory["peak_rss_mb"] >= memory["fwd_rss_mb"] > 0
    rows = bench.time_worker(args)
    assert [r["row"] for r in rows] == ["baseline", "anodev2"]
    assert all(r["img_per_s"] > 0 and r["step_s"] <= r["step_median_s"] for r in rows)
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "vgg"])
