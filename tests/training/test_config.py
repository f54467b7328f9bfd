"""Config loading, overrides, validation messages and the shipped experiment configs."""
import math
import re

import pytest

from anodev2 import models
from anodev2.training.config import (CONFIG_DIR, ConfigError, available_configs, config_from_dict, config_to_dict,
                            dump_config, find_config, load_config, parse_overrides)
from anodev2.training.optim import lr_at
from anodev2.training.runs import build_model

SHIPPED = ["aconnect", "baseline", "neuralode", "anode", "smoke", "mnist_smoke"]


def test_shipped_configs_exist_and_build():
    assert set(SHIPPED) <= set(available_configs())
    for name in SHIPPED:
        cfg = load_config(name)
        assert cfg.out_dir == f"runs/{name}"
        net = build_model(cfg)  # channels and classes from the data-set table
        assert cfg.model.variant == "baseline" or models.ode_blocks(net)


def test_aconnect_is_the_anode_recipe_and_every_key_is_commented():
    cfg = load_config("aconnect")
    assert (cfg.data.name, cfg.data.augment) == ("cifar10", True)
    assert (cfg.model.name, cfg.model.variant) == ("resnet10", "anodev2")
    blocks = models.describe(models.build(cfg.model.name, cfg.model.variant, **cfg.model.build_options()))
    assert len(blocks) == 7 and all(b["evolving"] for b in blocks)
    assert {(b["steps"], b["method"], b["grad"], b["evolution"]) for b in blocks} == {(3, "euler", "checkpoint", "rda")}
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.milestones, o.gamma) == \
        ("sgd", 0.1, 0.9, 5e-4, (150, 250), 0.1)
    assert (cfg.train.epochs, cfg.train.batch_size) == (350, 128)
    for line in (CONFIG_DIR / "aconnect.yaml").read_text().splitlines():
        if re.match(r"^\s*[a-z_]+:", line):
            assert "#" in line, f"key without a comment: {line!r}"


def test_variant_configs_differ_from_aconnect_only_in_the_model():
    a = config_to_dict(load_config("aconnect"))
    for name, variant in [("baseline", "baseline"), ("neuralode", "neuralode"), ("anode", "anode")]:
        d = config_to_dict(load_config(name))
        assert {**d["model"], "variant": "anodev2"} == a["model"] and d["model"]["variant"] == variant
        assert {k: v for k, v in d.items() if k not in ("model", "out_dir")} == \
            {k: v for k, v in a.items() if k not in ("model", "out_dir")}
        # switching the variant on the command line gives the same network as the variant's config
        over = load_config("aconnect", [f"model.variant={variant}"])
        assert over.model == load_config(name).model
    m = load_config("neuralode").model
    assert {b["grad"] for b in models.describe(models.build(m.name, m.variant, **m.build_options()))} == {"backsolve"}


def test_overrides_are_typed():
    cfg = load_config("aconnect", ["train.epochs=1", "data.subset_train=512", "model.variant=anode",
                                   "model.evolution=null", "optim.lr=1e-3", "optim.milestones=[3, 5]",
                                   "data.augment=false", "model.width=0.5", "model.options.norm=group",
                                   "out_dir=/tmp/x"])
    assert cfg.train.epochs == 1 and isinstance(cfg.train.epochs, int)
    assert cfg.data.subset_train == 512 and cfg.model.variant == "anode" and cfg.model.evolution is None
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.milestones == (3, 5) and cfg.data.augment is False and cfg.model.width == 0.5
    assert cfg.model.build_options()["norm"] == "group" and cfg.out_dir == "/tmp/x"
    assert load_config("aconnect", ["optim.lr=1"]).optim.lr == 1.0  # int accepted for a float


def test_round_trip_and_frozen(tmp_path):
    cfg = load_config("smoke", ["train.seed=3"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(str(p)) == cfg
    with pytest.raises(Exception):
        cfg.train.epochs = 5


@pytest.mark.parametrize("override, words", [
    ("trian.epochs=1", ["unknown config key 'trian.epochs'", "did you mean 'train.epochs'"]),
    ("model.varaint=anode", ["'model.varaint'", "did you mean 'model.variant'"]),
    ("train.epochs=abc", ["train.epochs='abc'", "allowed: integer, >= 1"]),
    ("train.epochs=1.5", ["train.epochs=1.5", "integer"]),
    ("train.batch_size=0", ["train.batch_size=0", ">= 1"]),
    ("optim.momentum=1.0", ["optim.momentum=1.0", "< 1.0"]),
    ("optim.lr=0", ["optim.lr=0", "> 0.0"]),
    ("optim.lr=nan", ["optim.lr", "number"]),
    ("data.name=imagenet", ["data.name='imagenet'", "cifar10 | cifar100 | mnist | synthetic"]),
    ("model.name=resnet99", ["model.name='resnet99'", "resnet4"]),
    ("model.method=rk45", ["model.method='rk45'", "rk4"]),
    ("data.augment=1", ["data.augment=1", "true/false"]),
    ("optim.milestones=5", ["optim.milestones=5", "list of integer"]),
    ("optim.milestones=[5, 3]", ["optim.milestones=[5, 3]", "strictly increasing"]),
    ("train.device=tpu", ["train.device='tpu'", "auto | cpu | cuda"]),
    ("epochs", ["override 'epochs'", "KEY=VALUE"]),
])
def test_bad_overrides_name_key_value_and_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_unknown_key_in_file_and_sections(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lerning_rate'"):
        load_config(str(p))
    p.write_text("trainn:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"did you mean 'train'"):
        load_config(str(p))
    p.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(str(p))
    p.write_text("train: {epochs: 1\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(str(p))


def test_missing_config_lists_available():
    with pytest.raises(ConfigError) as e:
        find_config("no_such_config")
    assert "not found" in str(e.value) and "aconnect" in str(e.value) and "smoke" in str(e.value)
    assert find_config("smoke") == find_config("smoke.yaml") == CONFIG_DIR / "smoke.yaml"


def test_base_inheritance_and_cycles(tmp_path):
    (tmp_path / "child.yaml").write_text("base: smoke\ntrain:\n  epochs: 7\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert cfg.train.epochs == 7 and cfg.model.name == "resnet4" and cfg.out_dir == "runs/child"
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_parse_overrides_nests():
    assert parse_overrides(["train.epochs=2", "model.options.width=0.5"]) == \
        {"train": {"epochs": 2}, "model": {"options": {"width": 0.5}}}


def test_lr_schedules():
    o = load_config("aconnect").optim
    assert [lr_at(o, e, 350) for e in (0, 149, 150, 249, 250, 349)] == \
        pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    c = load_config("aconnect", ["optim.schedule=cosine", "optim.warmup_epochs=2"]).optim
    assert lr_at(c, 0, 10) == pytest.approx(0.1 / 3) and lr_at(c, 1, 10) == pytest.approx(0.2 / 3)
    assert lr_at(c, 2, 10) == pytest.approx(0.1)
    assert lr_at(c, 6, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(lr_at(c, e + 1, 10) < lr_at(c, e, 10) for e in range(2, 9))


def test_config_names_work_with_and_without_yaml_suffix():
    assert find_config("aconnect") == find_config("aconnect.yaml") == CONFIG_DIR / "aconnect.yaml"
    assert load_config("aconnect.yaml") == load_config("aconnect")


def test_empty_and_duplicate_key_yaml_are_errors(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match=r"empty.yaml is an empty config; allowed: a mapping of sections"):
        load_config(str(tmp_path / "empty.yaml"))
    (tmp_path / "dup.yaml").write_text("base: smoke\ntrain:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'epochs' \(line 4\); allowed: each key once"):
        load_config(str(tmp_path / "dup.yaml"))


@pytest.mark.parametrize("override, shown", [
    ("train.epochs=true", "train.epochs=true is not allowed"),
    ("log.progress=null", "log.progress=null is not allowed"),
    ("optim.lr=[1, 2]", "optim.lr=[1, 2] is not allowed"),
    ("optim.milestones=[5, 3]", "optim.milestones=[5, 3] is not allowed"),
])
def test_error_lines_spell_values_as_yaml(override, shown):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    assert shown in str(e.value) and "True" not in str(e.value) and "None" not in str(e.value)
