"""Issue 18, bad input of a run (helper D2's slice): every case is one ``error:`` line and exit status 2, no
traceback; guarded resumes. In-process ``main([...])`` where the behaviour is not the process's own."""
import datetime
import re
import shutil

import pytest
import torch
import yaml
from helpers import metrics

from anodev2.training.cli import main
from anodev2.training.config import load_config
from anodev2.training.resume_guard import changes, settings_before
from anodev2.training.run_files import atomic_save, checksum_path, load_checkpoint


def test_an_uppercase_hex_sidecar_is_the_same_checksum(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.arange(8.0)}, path)
    side = checksum_path(path)
    digest, name = side.read_text().split()
    side.write_text(f"{digest.upper()}  {name}\n")
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(8.0))


# ----------------------------------------------------------------------------- guarded resume (W3)

def _copy(run, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _one_error_line(err):
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_resume_cannot_change_the_model_the_data_or_the_randomness(one_epoch_run, tmp_path, capsys):
    run = _copy(one_epoch_run, tmp_path)
    before = {n: (run / n).read_bytes() for n in ("config.yaml", "last.pt", "metrics.jsonl")}
    status = main(["--resume", str(run), "train.epochs=2", "model.steps=6", "model.method=rk4", "train.seed=7",
                   "data.name=cifar10", "optim.lr=0.05", "log.progress_interval=5"])
    err = _one_error_line(capsys.readouterr().err)
    assert status == 2
    for words in ("model.steps: 3 -> 6", "model.method: null -> 'rk4'", "train.seed: 0 -> 7",
                  "data.name: 'synthetic' -> 'cifar10'", "allowed on a resume: train.epochs",
                  "optim.*, log.* (see --help)",
                  "add --allow-change data.name --allow-change model.method --allow-change model.steps "
                  "--allow-change train.seed"):
        assert words in err, (words, err)
    assert "optim.lr" not in err and "log.progress_interval" not in err and "train.epochs:" not in err  # free keys
    assert {n: (run / n).read_bytes() for n in before} == before  # nothing changed


def test_an_allowed_change_is_recorded_in_config_yaml(one_epoch_run, tmp_path, capsys):
    run = _copy(one_epoch_run, tmp_path)
    first = yaml.safe_load((run / "config.yaml").read_text())
    assert "resumes" not in first and first["model"]["steps"] == 3
    assert main(["--resume", str(run), "train.epochs=2", "model.steps=4", "--allow-change", "model.steps",
                 "log.progress_interval=5", "log.tensorboard=false"]) == 0
    out = capsys.readouterr().out  # (plain progress lines carry the whole run's ETA too)
    assert re.search(r"epoch 2/2 train 4/4 \(100%\) .* ETA 0:00:00 run ETA 0:00:00\n", out), out
    rec = yaml.safe_load((run / "config.yaml").read_text())
    assert rec["model"]["steps"] == 4 and rec["train"]["epochs"] == 2  # what epoch 2 used
    (r,) = rec["resumes"]
    assert r["after_epoch"] == 1 and r["allowed"] == ["model.steps"]
    assert r["changed"] == {"log.progress_interval": {"old": 30.0, "new": 5.0}, "log.tensorboard": {"old": True, "new": False},
                            "model.steps": {"old": 3, "new": 4}, "train.epochs": {"old": 1, "new": 2}}
    assert datetime.datetime.fromisoformat(r["time"]).tzinfo is not None
    # what epoch 1 used is still recorded: undo the resume's changes
    assert settings_before(rec, rec["resumes"], 0) == {**first, "out_dir": str(run)}  # (the copy's own out_dir)
    assert load_config(str(run / "config.yaml")).model.steps == 4  # the record is still a loadable config
    # a second resume appends; nothing changed is recorded as such
    assert main(["--resume", str(run), "train.epochs=3", "log.tensorboard=false"]) == 0
    capsys.readouterr()
    rec2 = yaml.safe_load((run / "config.yaml").read_text())
    assert rec2["resumes"][0] == r and rec2["resumes"][1]["after_epoch"] == 2
    assert rec2["resumes"][1]["changed"] == {"train.epochs": {"old": 2, "new": 3}}
    assert [m["epoch"] for m in metrics(run)] == [1, 2, 3]


def test_allow_change_names_a_key_and_needs_resume(one_epoch_run, tmp_path, capsys):
    assert main(["--resume", str(one_epoch_run), "--allow-change", "model.stepz", "train.epochs=1"]) == 2
    assert "--allow-change model.stepz: not a config key" in _one_error_line(capsys.readouterr().err)
    assert main(["--config", "smoke", "--allow-change", "model.steps", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "--allow-change model.steps is allowed only with --resume" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--allow-change KEY" in out and "Overrides may change only" in out
    assert "train.epochs" in out.split("Overrides may change only")[1].split("any other key")[0]
    free = out.split("Overrides may change only")[1].split("any other key")[0]
    assert "model.steps" not in free and "optim.name" not in free and "optim.lr" in free


# ----------------------------------------------------------------------------- configs, seeds, sizes, checkpoints

@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00\x01binary\x80\x81", ["is not UTF-8 text", "allowed: a UTF-8 YAML text file"]),
    (b"[" * 20000, ["nests too deeply", "allowed: a config of sections and values"]),
])
def test_undecodable_and_pathological_yaml(tmp_path, capsys, content, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["--config", str(path), f"out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert str(path) in err and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


def test_pathological_override(tmp_path, capsys):
    assert main(["--config", "smoke", "model.options=" + "[" * 20000, f"out_dir={tmp_path / 'run'}"]) == 2
    assert "override 'model.options=...' nests too deeply" in _one_error_line(capsys.readouterr().err)


def test_seed_range(tmp_path, capsys):
    assert main(["--config", "smoke", f"train.seed={2**64}", f"out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert f"train.seed={2**64} is not allowed; allowed: integer, >= 0 and <= {2**63 - 1}" in err, err
    cfg = load_config("smoke", [f"train.seed={2**63 - 1}"])
    from anodev2.training.trainer import _seed_everything
    _seed_everything(cfg.train.seed)  # the largest allowed seed seeds every generator
    assert torch.initial_seed() == 2**63 - 1
    torch.manual_seed(0)


def test_absurd_width_is_refused_before_allocating(tmp_path, capsys):
    from anodev2.training.config import ConfigError
    from anodev2.training.limits import check_model_memory
    assert main(["--config", "smoke", "data.name=synthetic", "model.width=100000",
                 f"out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "model.width=100000 gives a resnet4 of about" in err and "allowed: a network that fits, here model.width <=" in err
    # the bound: resnet4/anodev2 has P1 parameters at width 1; width w needs P1 * w^2 * 4 bytes * 4 copies
    cfg = load_config("smoke", ["data.name=synthetic", "model.width=2"])
    with torch.device("meta"):
        from anodev2 import models
        p1 = sum(p.numel() for p in models.build("resnet4", "anodev2", width=1.0).parameters())
    cpu = torch.device("cpu")
    check_model_memory(cfg, cpu, memory=p1 * 4 * 16)  # exactly fits
    with pytest.raises(ConfigError, match=r"model.width=2 gives .* allowed: a network that fits, here model.width <= 1"):
        check_model_memory(cfg, cpu, memory=p1 * 4 * 16 - 1)


@pytest.mark.parametrize("key", ["rng", "config", "history", "epoch"])
def test_a_hand_made_checkpoint_names_the_missing_key(one_epoch_run, tmp_path, capsys, key):
    run = _copy(one_epoch_run, tmp_path)
    ck = torch.load(run / "last.pt", weights_only=True)
    del ck[key]
    atomic_save(ck, run / "last.pt")  # with a matching sidecar: it verifies
    assert main(["--resume", str(run), "train.epochs=2", "log.tensorboard=false"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert f"{run / 'last.pt'} lacks the key {key}; allowed: a checkpoint written by train_coupled.py" in err, err
    assert [r["epoch"] for r in metrics(run)] == [1]


def test_an_anodev2_network_that_evolves_nothing_is_refused(tmp_path, capsys):
    key = "model.evolution.targets"
    assert main(["--config", "smoke", "data.name=synthetic", "model.width=0.25", f"{key}=[]",
                 f"out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert f"{key}=[] selects no weight of any ODE block: this anodev2 network would evolve nothing" in err, err


def test_changes_compare_mappings_key_by_key_and_report_a_replaced_mapping_whole():
    import dataclasses
    from anodev2.training.config import Config
    old = Config()
    new = dataclasses.replace(old, model=dataclasses.replace(old.model, options={"a": {"b": 1}}),
                              train=dataclasses.replace(old.train, seed=3))
    assert changes(old, new) == {"model.options.a": ("<unset>", {"b": 1}), "train.seed": (0, 3)}
    newer = dataclasses.replace(new, model=dataclasses.replace(new.model, options={"a": {"b": 2}, "c": 1}))
    assert changes(new, newer) == {"model.options.a.b": (1, 2), "model.options.c": ("<unset>", 1)}
    mixed = dataclasses.replace(new, model=dataclasses.replace(new.model, options={"a": 5}))
    assert changes(new, mixed) == {"model.options.a": ({"b": 1}, 5)}  # a mapping replaced by a value: whole
    # undoing recorded changes restores the nested settings, '<unset>' keys removed
    rec = [{"changed": {k: {"old": o, "new": n} for k, (o, n) in changes(new, newer).items()}}]
    from anodev2.training.config import config_to_dict
    assert settings_before(config_to_dict(newer), rec, 0) == config_to_dict(new)


@pytest.mark.parametrize("error, words", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 400000000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory (you tried to allocate 400000000000000 bytes); no checkpoint was written; allowed: sizes"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
     "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)"),
    (MemoryError(), "out of memory (MemoryError)"),
])
def test_an_allocation_that_cannot_be_met_is_one_error_line(tmp_path, capsys, monkeypatch, error, words):
    """e.g. train.batch_size=1000000: the allocator's failure is a size the user chose, exit 2, no traceback."""
    import anodev2.training.cli as cli

    def fit(*a, **k):
        raise error
    monkeypatch.setattr(cli, "fit", fit)
    assert main(["--config", "smoke", f"out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert words in err and "train.batch_size" in err, err
    monkeypatch.setattr(cli, "fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("some other bug")))
    with pytest.raises(RuntimeError, match="some other bug"):  # not every RuntimeError is a memory error
        main(["--config", "smoke", f"out_dir={tmp_path / 'run'}"])
