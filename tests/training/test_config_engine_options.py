"""model.grad and model.evolution: structured options read by the engine's own registries, the
gradient-mode object travelling unchanged from the config to odeint, the old flat keys refused
with the new spelling, --help listing every nested key (issue 16 item 1)."""
import re

import pytest
import torch
import yaml

import anodev2
from anodev2 import models
from anodev2.adjoint import GRAD_MODES
from anodev2.evolution import EVOLUTIONS
from anodev2.training import cli
from anodev2.training.config import (ConfigError, config_from_dict, config_to_dict, describe_keys, dump_config,
                                     load_config)
from anodev2.training.runs import build_model

TINY = ["model.name=resnet4", "model.width=0.25", "data.name=synthetic"]


def write(tmp_path, model: dict, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"base": "aconnect", "model": {"name": "resnet4", "width": 0.25, **model}}))
    return str(p)


def blocks(cfg):
    return [b for _, b in models.ode_blocks(build_model(cfg))]


def test_grad_mapping_is_the_object_that_reaches_odeint(tmp_path):
    cfg = load_config(write(tmp_path, {"grad": {"mode": "checkpoint", "checkpoints": 1, "keep_forward": True}}))
    assert cfg.model.grad == anodev2.Checkpoint(checkpoints=1, keep_forward=True)
    assert cfg.model.build_options()["grad"] is cfg.model.grad
    model = build_model(cfg)
    (_, block), = models.ode_blocks(model)
    assert block.grad_mode is cfg.model.grad  # not rebuilt from flattened attributes on the way
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    st = block.last_stats
    assert (st.grad, st.checkpoints, st.steps) == ("checkpoint", 1, 3)
    assert st.checkpoints_held == 1


@pytest.mark.parametrize("spelling, expected", [
    ("backprop", anodev2.Backprop()),
    ({"mode": "backsolve"}, anodev2.Backsolve()),
    ({"checkpoints": 2}, anodev2.Checkpoint(2)),  # mode left out: the variant's (anodev2: checkpoint)
    (None, None),                                  # the variant's default, chosen by models.build
])
def test_grad_spellings(tmp_path, spelling, expected):
    cfg = load_config(write(tmp_path, {"grad": spelling}))
    assert cfg.model.grad == expected
    assert {b.grad_mode for b in blocks(cfg)} == {expected or anodev2.Checkpoint()}


def test_evolution_mapping_reaches_the_evolution(tmp_path):
    cfg = load_config(write(tmp_path, {"evolution": {"kind": "diffusion", "d_max": 0.1, "targets": ["conv1.weight"]}}))
    assert cfg.model.evolution == {"kind": "diffusion", "d_max": 0.1, "targets": ("conv1.weight",)}
    (block,) = blocks(cfg)
    assert (block.evolution.kind, block.evolving_names) == ("diffusion", ("conv1.weight",))
    assert block.evolution.bounds()["diffusion"] == (0.0, 0.1)
    # kind left out: the variant's (anodev2: rda); a plain name; null = the variant's default
    assert load_config(write(tmp_path, {"evolution": {"a_max": 0.1}})).model.evolution == {"kind": "rda", "a_max": 0.1}
    assert load_config(write(tmp_path, {"evolution": "reaction"})).model.evolution == {"kind": "reaction"}
    (block,) = blocks(load_config(write(tmp_path, {"evolution": None})))
    assert block.evolution.kind == "rda" and block.evolving_names == ("conv1.weight", "conv2.weight")


def test_dotted_overrides_reach_nested_keys(tmp_path):
    base = load_config("aconnect", TINY)
    assert base.model.grad is None and base.model.evolution is None
    cfg = load_config("aconnect", [*TINY, "model.grad.checkpoints=2", "model.evolution.kind=linear"])
    assert cfg.model.grad == anodev2.Checkpoint(2) and cfg.model.evolution == {"kind": "linear"}
    assert load_config("aconnect", ["model.grad.mode=backprop"]).model.grad == anodev2.Backprop()
    assert load_config("aconnect", ["model.grad={mode: checkpoint, keep_forward: true}"]).model.grad == \
        anodev2.Checkpoint(keep_forward=True)
    # a name given in a file is refined by a dotted override (grad: checkpoint = {mode: checkpoint})
    path = write(tmp_path, {"grad": "checkpoint", "evolution": "diffusion"})
    cfg = load_config(path, ["model.grad.checkpoints=3", "model.evolution.d_max=0.2"])
    assert cfg.model.grad == anodev2.Checkpoint(3) and cfg.model.evolution == {"kind": "diffusion", "d_max": 0.2}
    # a name on the command line replaces a mapping from the file
    path = write(tmp_path, {"grad": {"mode": "checkpoint", "checkpoints": 2}})
    assert load_config(path, ["model.grad=backprop"]).model.grad == anodev2.Backprop()


def test_round_trip_writes_the_mapping_spelling(tmp_path):
    cfg = load_config("aconnect", ["model.grad.keep_forward=true", "model.evolution={kind: rda, a_max: 0.1, "
                                   "targets: [conv1.weight]}"])
    d = config_to_dict(cfg)
    assert d["model"]["grad"] == {"mode": "checkpoint", "checkpoints": None, "keep_forward": True, "preserve_rng": True}
    assert d["model"]["evolution"] == {"kind": "rda", "a_max": 0.1, "targets": ["conv1.weight"]}
    assert config_from_dict(d) == cfg
    p = tmp_path / "dumped.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(str(p)) == cfg


@pytest.mark.parametrize("old, value, new", [
    ("model.checkpoints", 2, "model.grad.checkpoints"),
    ("model.keep_forward", True, "model.grad.keep_forward"),
    ("model.evolution_targets", ["conv1.weight"], "model.evolution.targets"),
])
def test_old_flat_keys_name_the_new_spelling(tmp_path, capsys, old, value, new):
    leaf = old.split(".")[1]
    message = f"error: {old} has moved: write {new} (in YAML: model: {{{new.split('.')[1]}: {{{new.split('.')[2]}: ...}}}}); " \
              "the old flat key is no longer read\n"
    with pytest.raises(ConfigError, match=f"^{old} has moved: write {new} "):
        load_config(write(tmp_path, {leaf: value}))
    for argv in (["--config", write(tmp_path, {leaf: value}), "--print-config"],
                 ["--config", "aconnect", f"{old}={yaml.safe_dump(value, default_flow_style=True).strip()}",
                  "--print-config"]):
        assert cli.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err == message and captured.out == ""


@pytest.mark.parametrize("override, message", [
    ("model.grad=adjoint", "model.grad='adjoint' is not allowed; allowed: backprop | checkpoint | backsolve, a mapping"),
    ("model.grad.mode=adjoint", "model.grad.mode='adjoint' is not allowed; allowed: backprop | checkpoint | backsolve"),
    ("model.grad.checkpoints=-1", "model.grad.checkpoints=-1 is not allowed for grad mode 'checkpoint'; "
                                  "allowed: null | integer >= 0"),
    ("model.grad.keep_forward=1", "model.grad.keep_forward=1 is not allowed for grad mode 'checkpoint'; "
                                  "allowed: true | false"),
    ("model.grad.slots=2", "unknown config key 'model.grad.slots'"),
    ("model.grad={mode: backprop, checkpoints: 2}", "model.grad.checkpoints is not an option of grad mode 'backprop'; "
                                                    "allowed: no options"),
    ("model.evolution=wave", "model.evolution='wave' is not allowed; allowed: static | diffusion"),
    ("model.evolution.kind=wave", "model.evolution.kind='wave' is not allowed; allowed: static | diffusion"),
    ("model.evolution.a_max=2", "model.evolution.a_max=2 is not allowed: option 'a_max' of evolution kind 'rda' "
                                "must be in [0.0, 1.0], got 2"),
    ("model.evolution={kind: linear, d_max: 0.1}", "model.evolution.d_max is not an option of evolution kind 'linear'"),
    ("model.evolution.targets=3", "model.evolution.targets=3 is not allowed; allowed: null"),
    ("model.variant=baseline model.grad=backprop", "model.grad makes no sense for variant 'baseline'"),
    ("model.variant=anode model.evolution.d_max=0.1", "model.evolution={'d_max': 0.1} needs 'kind'; allowed: static"),
])
def test_bad_values_name_key_value_and_allowed_with_exit_2(capsys, override, message):
    overrides = override.split(" ") if "{" not in override else [override]
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config("aconnect", overrides)
    assert cli.main(["--config", "aconnect", "--print-config", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1


def test_help_lists_every_nested_key_from_the_registries():
    text = describe_keys()
    assert cli.build_parser().format_help().count("model.grad.checkpoints = null  [null | integer >= 0]") == 1
    for name, cls in GRAD_MODES.items():
        for option, spec in cls.option_specs().items():
            assert f"    model.grad.{option} = {yaml.safe_dump(spec.default, default_flow_style=True).split()[0]}  " \
                   f"[{spec.allowed}]  ({name})" in text
    for kind, spec in EVOLUTIONS.items():
        assert f"        {kind}: {spec.summary}" in text
        for option, opt in spec.options.items():
            line = next(l for l in text.splitlines() if l.startswith(f"    model.evolution.{option} = "))
            assert f"({kind}" in line or f", {kind}" in line, (option, kind, line)
    assert "    model.evolution.d_max = 0.25 (diffusion)  [number >= 0.0 and <= 1.0]" in text
    for key in ("model.checkpoints", "model.keep_forward", "model.evolution_targets"):
        assert f"  {key} =" not in text


def test_model_options_cannot_shadow_a_model_key():
    """model.options is merged last into models.build's options: an ODE option there would
    silently win over the validated model.grad / model.evolution / model.steps / model.method."""
    for key, value in (("grad", "backprop"), ("evolution", "rda"), ("steps", 2)):
        with pytest.raises(ConfigError, match=rf"^model.options.{key} is not allowed; allowed: model.{key} "):
            load_config("aconnect", [f"model.options={{{key}: {value}}}"])
    assert load_config("aconnect", ["model.options={norm: group}"]).model.build_options()["norm"] == "group"


def test_switching_mode_over_a_mapping_says_how(tmp_path):
    """A dotted mode / kind merges key by key into the file's mapping, so the old mode's options stay:
    the error says to give the whole value."""
    path = write(tmp_path, {"grad": {"mode": "checkpoint", "checkpoints": 2}, "evolution": {"kind": "rda", "a_max": 0.1}})
    with pytest.raises(ConfigError, match=re.escape(
            "model.grad.checkpoints is not an option of grad mode 'backprop'; allowed: no options (mode 'backprop' "
            "has none) (to switch mode, give the whole value: model.grad=backprop or model.grad={mode: ..., ")):
        load_config(path, ["model.grad.mode=backprop"])
    with pytest.raises(ConfigError, match=re.escape("(to switch kind, give the whole value: model.evolution=linear ")):
        load_config(path, ["model.evolution.kind=linear"])
    cfg = load_config(path, ["model.grad=backprop", "model.evolution=linear"])
    assert (cfg.model.grad, cfg.model.evolution) == (anodev2.Backprop(), {"kind": "linear"})
