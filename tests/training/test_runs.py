"""anodev2.training.runs: the one loader of trained runs (load_run) and builder of a config's
network (build_model), on the session's trained tiny run."""
import json

import pytest
import torch
import torch.nn.functional as F

from anodev2 import models
from anodev2.training.config import ConfigError, load_config
from anodev2.training.data import BatchLoader, load_datasets
from anodev2.training.datasets import DATASETS
from anodev2.training.run_files import CheckpointError, atomic_save
from anodev2.training.runs import build_model, load_run


def test_load_run_rebuilds_the_trained_network(full_run):
    """The loaded model reproduces the test loss and accuracy the trainer recorded for that epoch
    (same network, same weights, eval mode), and metrics are metrics.jsonl's records."""
    cfg, model, metrics = load_run(full_run)
    assert not model.training and cfg.out_dir == str(full_run)
    assert metrics == [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    ck = torch.load(full_run / "last.pt", weights_only=True)
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())
    d = cfg.data
    _, test_set = load_datasets(name=d.name, root=d.root, download=False, subset_train=d.subset_train,
                                subset_test=d.subset_test, seed=cfg.train.seed)
    loss = correct = n = 0
    with torch.no_grad():
        for x, y in BatchLoader(test_set, 2 * cfg.train.batch_size, shuffle=False, augment=False, seed=cfg.train.seed):
            logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").double().item()
            correct += int((logits.argmax(1) == y).sum())
            n += y.shape[0]
    assert correct / n == metrics[-1]["test_acc"]
    assert loss / n == pytest.approx(metrics[-1]["test_loss"], rel=1e-12)


def test_best_and_checkpoint_file(full_run, tmp_path):
    cfg, model, metrics = load_run(full_run, which="best")
    best = torch.load(full_run / "best.pt", weights_only=True)
    assert len(metrics) == best["epoch"] and metrics[-1].get("best") is True
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    cfg2, model2, _ = load_run(full_run / "best.pt")
    assert cfg2 == cfg and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                 model2.state_dict().values()))


def test_errors_name_what_is_wrong(full_run, tmp_path):
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'nope'} does not exist; allowed: a run directory"):
        load_run(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path} has no last.pt \(which='last'\)"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match=r"^which='first' is not allowed; allowed: last \| best$"):
        load_run(full_run, which="first")
    other = tmp_path / "other.pt"
    atomic_save({"epoch": 1}, other)  # verifies (SHA-256 sidecar) but is not a training checkpoint
    with pytest.raises(CheckpointError, match=r"is not a train_coupled.py checkpoint \(no config / model entry\)"):
        load_run(other)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_build_model_reads_channels_and_classes_from_the_data_table(name):
    cfg = load_config("aconnect", [f"data.name={name}", "model.name=resnet4", "model.width=0.25"])
    model = build_model(cfg)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert (first.in_channels, last.out_features) == (DATASETS[name].channels, DATASETS[name].classes)
    assert len(models.ode_blocks(model)) == 1


def test_build_model_errors_are_config_errors():
    cfg = load_config("aconnect", ["model.name=resnet4", "model.options={stepz: 2}"])
    with pytest.raises(ConfigError, match=r"^model section rejected by anodev2.models.build: unknown option\(s\) "
                                          r"\['stepz'\]"):
        build_model(cfg)
