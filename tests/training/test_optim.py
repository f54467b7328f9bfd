"""Optimiser parameter groups: evolution coefficients get their own lr multiplier and weight decay."""
import pytest
import torch

from anodev2 import models
from anodev2.evolution import WeightEvolution
from anodev2.training.config import ConfigError, OptimConfig, load_config
from anodev2.training.optim import apply_group_settings, build_optimizer, evolution_parameters, lr_at, set_lr


def _net(variant="anodev2"):
    torch.manual_seed(0)
    return models.build("resnet4", variant, width=0.25)


def _groups(opt):
    return {g["name"]: g for g in opt.param_groups}


def test_groups_are_disjoint_cover_every_parameter_and_hold_exactly_the_evolution_modules():
    model = _net()
    opt = build_optimizer(OptimConfig(), model)
    groups = _groups(opt)
    assert set(groups) == {"network", "evolution"}
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    expected = {id(p) for m in model.modules() if isinstance(m, WeightEvolution) for p in m.parameters()}
    assert expected and {id(p) for p in groups["evolution"]["params"]} == expected
    assert {id(p) for p in evolution_parameters(model)} == expected


def test_static_network_has_no_evolution_group():
    opt = build_optimizer(OptimConfig(), _net("anode"))
    assert [g["name"] for g in opt.param_groups] == ["network"]


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_evolution_group_gets_its_multiplier_after_a_scheduler_step_and_no_decay_by_default(name):
    cfg = OptimConfig(name=name, lr=0.2, milestones=[1], gamma=0.5, evolution_lr_mult=3.0, weight_decay=1e-3)
    opt = build_optimizer(cfg, _net())
    groups = _groups(opt)
    assert groups["evolution"]["weight_decay"] == 0.0 and groups["network"]["weight_decay"] == 1e-3
    for epoch, expected in ((0, 0.2), (1, 0.1)):
        set_lr(opt, lr_at(cfg, epoch, 10))
        assert groups["network"]["lr"] == pytest.approx(expected)
        assert groups["evolution"]["lr"] == pytest.approx(3.0 * expected)


def test_evolution_lr_multiplier_changes_the_evolution_update_only():
    """One SGD step: the evolution coefficients move lr_mult times as far, the network alike."""
    steps = {}
    for mult in (1.0, 4.0):
        model = _net().double()  # float64: the step is not lost in rounding of p - p_before
        opt = build_optimizer(OptimConfig(momentum=0.0, weight_decay=0.0, evolution_lr_mult=mult), model)
        before = [p.detach().clone() for p in model.parameters()]
        model(torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        set_lr(opt, 0.1)
        opt.step()
        steps[mult] = [p.detach() - b for p, b in zip(model.parameters(), before)]
    model = _net()
    evo = {id(p) for p in evolution_parameters(model)}
    is_evo = [id(p) in evo for p in model.parameters()]
    assert any(is_evo) and not all(is_evo)
    for i, e in enumerate(is_evo):
        assert steps[1.0][i].abs().max() > 0
        torch.testing.assert_close(steps[4.0][i], (4.0 if e else 1.0) * steps[1.0][i], rtol=1e-9, atol=1e-15)


def test_resume_reapplies_the_configs_group_settings():
    model = _net()
    old = build_optimizer(OptimConfig(evolution_weight_decay=0.1, evolution_lr_mult=2.0), model)
    new = build_optimizer(OptimConfig(), model)
    new.load_state_dict(old.state_dict())
    assert _groups(new)["evolution"]["weight_decay"] == 0.1  # torch restores the stored settings...
    apply_group_settings(new, OptimConfig())
    assert _groups(new)["evolution"]["weight_decay"] == 0.0 and _groups(new)["evolution"]["lr_mult"] == 1.0


@pytest.mark.parametrize("override, allowed", [
    ("optim.evolution_lr_mult=0", "allowed: number, > 0.0"),
    ("optim.evolution_lr_mult=-1", "allowed: number, > 0.0"),
    ("optim.evolution_weight_decay=-0.1", "allowed: number, >= 0.0"),
    ("optim.evolution_weight_decay=yes", "allowed: number, >= 0.0"),
])
def test_evolution_optim_keys_are_validated(override, allowed):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}=.* is not allowed; {allowed}"):
        load_config("smoke", [override])


def test_optim_does_not_import_the_config_module():
    """config -> optim is the one direction (issue 16): optim names OptimConfig in annotations only,
    and its registries are what the config offers as optim.name / optim.schedule."""
    import ast
    import inspect

    from anodev2.training import config, optim
    tree = ast.parse(inspect.getsource(optim))
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    runtime = [ast.unparse(n) for n in ast.walk(tree)
               if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in guarded]
    assert not [line for line in runtime if "config" in line], runtime
    fields = {f.name: f for f in config.dataclasses.fields(OptimConfig)}
    assert config._choices(fields["name"].metadata["choices"]) == tuple(optim.OPTIMIZERS) == ("sgd", "adam")
    assert config._choices(fields["schedule"].metadata["choices"]) == tuple(optim.SCHEDULES) == ("multistep", "cosine")
