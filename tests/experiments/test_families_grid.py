"""experiments/families.py (issue 20): the families are paired (same θ0, data and recipe per
seed), the summary's statistics are the right numbers (a hand-made grid with known per-example
predictions), every family has TensorBoard evolution views, and a tiny synthetic grid runs end
to end through the real CLI (training, predictions with the evolution on and off, skip, resume)."""
import json
import re
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anodev2 import models
from anodev2.training import trainer
from anodev2.training.config import config_to_dict, load_config
from anodev2.training.runs import build_model
from anodev2.training.tb_logging import log_evolution
from experiments import families, predictions

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _configs(grid, out):
    return {r.name: load_config(r.config, [*grid.common, *r.overrides]) for r in families.expand(grid, out)}


def test_families_share_theta0_data_and_recipe_per_seed(tmp_path):
    """The trainer's model build (train.seed, then build_model) gives every family of a seed the
    same initial weights in every parameter ANODE has (the families' own parameters start at 0),
    and the configs differ only in the model variant / evolution: same subset, order,
    augmentation (all functions of the seed) and recipe."""
    grid = families.grids(None)["quick"]
    cfgs = _configs(grid, tmp_path)
    assert len(cfgs) == len(families.FAMILIES) * len(grid.seeds) == 14
    for seed in grid.seeds:
        states = {}
        for fam in families.FAMILIES:
            cfg = cfgs[f"resnet4-{fam.name}-s{seed}"]
            assert (cfg.model.variant, cfg.train.seed) == (fam.variant, seed)
            trainer._seed_everything(cfg.train.seed)  # what trainer._build does before build_model
            states[fam.name] = build_model(cfg).state_dict()
            rest = config_to_dict(cfg)
            ref_rest = config_to_dict(cfgs[f"resnet4-anode-s{seed}"])
            rest.pop("model"), ref_rest.pop("model")
            assert rest == ref_rest, fam.name
        # per-time BatchNorm slots (running statistics per evaluation time, "..._t<k>") exist only in
        # ODE blocks, so the discrete baseline lacks them; they start as BatchNorm's defaults everywhere
        slots = re.compile(r"(running_mean|running_var|num_batches_tracked)_t\d+$")
        for sd in states.values():
            for k in [k for k in sd if slots.search(k)]:
                base = sd[slots.sub(lambda m: m.group(1), k)]
                assert torch.equal(sd.pop(k), base), k
        ref = states["anode"]
        for name, sd in states.items():
            assert set(ref) <= set(sd), name
            for key in ref:
                assert torch.equal(sd[key], ref[key]), (name, key)
            extra = [k for k in sd if k not in ref]
            assert (len(extra) > 0) == families.BY_NAME[name].evolving, name
            assert all(not sd[k].is_floating_point() or not sd[k].any() for k in extra), name
    # and the seeds differ
    trainer._seed_everything(0)
    a = build_model(cfgs["resnet4-anode-s0"]).state_dict()
    trainer._seed_everything(1)
    b = build_model(cfgs["resnet4-anode-s1"]).state_dict()
    assert not torch.equal(a["layer1.0.f.conv1.weight"], b["layer1.0.f.conv1.weight"])


class _Recorder:
    def __init__(self):
        self.tags = []

    def add_histogram(self, tag, *a, **k):
        self.tags.append(tag)

    add_scalar = add_image = add_histogram


@pytest.mark.parametrize("fam", [f for f in families.FAMILIES if f.evolving], ids=lambda f: f.name)
def test_every_evolving_family_has_tensorboard_evolution_views(fam):
    torch.manual_seed(0)
    net = models.build("resnet4", fam.variant, width=0.25, evolution=fam.evolution)
    with torch.no_grad():  # a nonzero family parameter, so θ(t) moves
        for n, p in net.named_parameters():
            if ".evolution." in n:
                p.uniform_(0.0, 0.01)
    w = _Recorder()
    log_evolution(w, net, models.ode_blocks(net), torch.randn(2, 3, 32, 32), 1)
    kernels = [t for t in w.tags if t.endswith("/kernels")]
    assert kernels and all(t.startswith("evolution/layer1.0/") for t in kernels), w.tags
    assert any("/rel_change/t" in t for t in w.tags)


# ----------------------------------------------------------------------------- statistics
def _fake_run(out, name, labels, correct, correct_off=None, epoch_time=2.0, params=1000):
    """A finished run directory: metrics.jsonl (final epoch 1, its test accuracy) and
    predictions.npz with the given per-example correctness."""
    d = out / name
    d.mkdir(parents=True)
    acc = float(np.mean(correct))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": acc, "epoch_time": epoch_time}) + "\n")
    pred = np.where(correct, labels, (labels + 1) % 10)
    rec = {"labels": labels, "pred": pred, "params": params, "trainer_test_acc": acc, "epoch": 1}
    if correct_off is not None:
        rec["pred_off"] = np.where(correct_off, labels, (labels + 1) % 10)
        rec["off_meaning"] = "θ(t) = θ0"
    np.savez(d / predictions.FILE, **{k: np.asarray(v) for k, v in rec.items()})


def test_summary_statistics_by_hand(tmp_path):
    """3 seeds x {baseline, ANODE, rda} on 40 shared test examples (2.5 % each). rda = ANODE's
    correct examples plus j = 1, 2, 3 more (only rda right: j, only ANODE right: 0), so
    Δ = +2.5, +5, +7.5: mean 5, sd 2.5, t = 2√3 on 2 df, p = 1 − √(12/14); McNemar exact
    p = 2 / 2^j = 1, 0.5, 0.25. Baseline: Δ = −5, −5, −12.5: t = −3, p = 1 − 3/√11. Holm over the
    two: both 2(1 − √(6/7)). rda with evolution off loses 1, 1, 4 examples: −2.5, −2.5, −10."""
    grid = families.FamilyGrid(base="smoke", common=(), model="resnet4", seeds=(0, 1, 2),
                               families=("baseline", "anode", "rda"))
    labels = np.arange(40) % 10
    first = lambda n: np.arange(40) < n  # noqa: E731
    for seed, (n_anode, j, n_base, lost) in enumerate([(20, 1, 18, 1), (22, 2, 20, 1), (24, 3, 19, 4)]):
        _fake_run(tmp_path, f"resnet4-anode-s{seed}", labels, first(n_anode), epoch_time=2.0)
        _fake_run(tmp_path, f"resnet4-baseline-s{seed}", labels, first(n_base), epoch_time=1.0, params=900)
        _fake_run(tmp_path, f"resnet4-rda-s{seed}", labels, first(n_anode + j), first(n_anode + j - lost),
                  epoch_time=(3.0, 3.0, 9.0)[seed], params=1100)  # one run on a loaded machine: median 3
    md = families.aggregate(grid, tmp_path, "test")
    st = json.loads((tmp_path / "stats.json").read_text())
    fam = st["families"]
    assert fam["anode"]["mean"] == pytest.approx(55.0) and fam["anode"]["sd"] == pytest.approx(5.0)
    assert (fam["anode"]["min"], fam["anode"]["max"]) == (50.0, 60.0)
    rda = fam["rda"]["vs_reference"]
    assert rda["diffs"] == pytest.approx([2.5, 5.0, 7.5])
    assert (rda["mean"], rda["sd"], rda["df"]) == (pytest.approx(5.0), pytest.approx(2.5), 2)
    assert rda["t"] == pytest.approx(2 * math.sqrt(3))
    assert rda["p"] == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-12)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * 2.5 / math.sqrt(3)  # t_{0.975,2} sd / √n
    assert (rda["ci_low"], rda["ci_high"]) == (pytest.approx(5 - half), pytest.approx(5 + half))
    base = fam["baseline"]["vs_reference"]
    assert base["t"] == pytest.approx(-3.0) and base["p"] == pytest.approx(1 - 3 / math.sqrt(11), rel=1e-12)
    assert rda["p_holm"] == base["p_holm"] == pytest.approx(2 * (1 - math.sqrt(6 / 7)), rel=1e-12)
    mc = st["mcnemar"]
    assert mc["best"] == "rda" and mc["reference"] == "anode"
    assert [(t["only_a"], t["only_b"], t["p"], t["method"]) for t in mc["per_seed"]] == [
        (0, 1, 1.0, "exact binomial"), (0, 2, 0.5, "exact binomial"), (0, 3, 0.25, "exact binomial")]
    off = fam["rda"]["off"]
    assert off["change"]["mean"] == pytest.approx(-5.0) and off["mean"] == pytest.approx(60.0 - 5.0)
    assert off["change"]["sd"] == pytest.approx(math.sqrt((2.5 ** 2 + 2.5 ** 2 + 5 ** 2) / 2))
    assert "off" not in fam["anode"] and "off" not in fam["baseline"]
    assert (fam["rda"]["params"], fam["rda"]["s_per_epoch"], fam["baseline"]["params"]) == (1100, 3.0, 900)
    # the markdown carries the same numbers
    assert f"| ANODEV2-rda | 3 | 60.00 ± 7.50 | 52.50 / 67.50 | +5.00 | [{5 - half:+.2f}, {5 + half:+.2f}] |" in md
    assert "| ANODE (static θ) | 3 | 55.00 ± 5.00 | 50.00 / 60.00 | reference |" in md
    assert "| 2 | 40 | 0 | 3 | exact binomial | 0.25 |" in md
    assert "| ANODEV2-rda | θ(t) = θ0 | 60.00 | 55.00 ± 4.33 | 50.00 / 57.50 | -5.00 |" in md
    assert "WARNING" not in md and "Not finished" not in md
    assert (tmp_path / "effects.png").stat().st_size > 0 and "`effects.png`" in md  # the paired effects, drawn
    rows = list(__import__("csv").DictReader(open(tmp_path / "runs.csv")))
    assert len(rows) == 9 and all(r["agrees_with_trainer"] == "True" for r in rows)


def test_batch_statistics_normalise_by_the_batch_and_keep_the_running_averages():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.GroupNorm(1, 3))
    net[1].running_mean.fill_(5.0)
    net.eval()
    x = torch.randn(4, 2, 6, 6)
    z = net[0](x)
    by_batch = (z - z.mean((0, 2, 3), keepdim=True)) / (z.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    with predictions.batch_statistics(net) as n:
        got = net(x)
    assert n == 1
    torch.testing.assert_close(got, net[2](by_batch * net[1].weight.view(1, -1, 1, 1) + net[1].bias.view(1, -1, 1, 1)))
    assert not net.training and not net[1].training and torch.equal(net[1].running_mean, torch.full((3,), 5.0))
    assert not torch.allclose(net(x), got)  # eval mode again: the running averages are used


def test_mcnemar_refuses_different_test_sets(tmp_path):
    grid = families.FamilyGrid(base="smoke", common=(), model="resnet4", seeds=(0,), families=("anode", "rda"))
    _fake_run(tmp_path, "resnet4-anode-s0", np.arange(40) % 10, np.arange(40) < 20)
    _fake_run(tmp_path, "resnet4-rda-s0", np.arange(40) % 7, np.arange(40) < 21, np.arange(40) < 21)
    with pytest.raises(ValueError, match="different examples"):
        families.aggregate(grid, tmp_path, "test")


# ----------------------------------------------------------------------------- end to end
def test_quick_grid_end_to_end_skip_and_resume(tmp_path, capsys):
    out = tmp_path / "grid"
    sel = ["--grid", "quick", "--out", str(out), "--families", "anode", "rda", "--seeds", "0"]
    r = subprocess.run([sys.executable, "experiments/families.py", *sel, "--jobs", "2"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("resnet4-anode-s0", "resnet4-rda-s0"):
        d = out / name
        pred = predictions.load(d)
        hist = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        # the re-evaluation of last.pt is the trainer's final evaluation, example for example
        assert int((pred["pred"] == pred["labels"]).sum()) == round(hist[-1]["test_acc"] * 32)
        assert pred["labels"].shape == (32,) and ("pred_off" in pred) == (name == "resnet4-rda-s0")
        assert pred["pred_batch_stats"].shape == (32,)  # the grid's per-time BatchNorm (batch_t) has running statistics
        assert list(d.glob("events.out.tfevents.*"))  # one TensorBoard run per family under OUT
    rows = {row["run"]: row for row in __import__("csv").DictReader(open(out / "runs.csv"))}
    assert all(row["agrees_with_trainer"] == "True" for row in rows.values())
    summary = (out / "summary.md").read_text()
    assert "| ANODEV2-rda | 1 |" in summary and "McNemar" in summary and "Evolution off" in summary
    # a finished grid starts nothing; a lost predictions file is recomputed without training;
    # a run whose metrics lost the last epoch resumes from last.pt
    assert families.main(sel) == 0
    assert capsys.readouterr().out.count("done, skipped") == 2
    (out / "resnet4-rda-s0" / predictions.FILE).unlink()
    (out / "resnet4-anode-s0" / "metrics.jsonl").write_text("")
    assert families.main([*sel, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "post     resnet4-rda-s0" in listing and "partial  resnet4-anode-s0" in listing


def test_measure_times_the_networks_the_grid_trains(monkeypatch):
    """--measure builds every family with the grid's normalisation (the cpu grid's batch_t)."""
    import anodev2.models

    seen = []
    real = anodev2.models.build
    monkeypatch.setattr(anodev2.models, "build", lambda *a, **k: seen.append(k["norm"]) or real(*a, **k))
    grid = families.grids(None)["quick"]
    rows = families.measure(grid, steps=1, batch=2)
    assert [r["family"] for r in rows] == list(grid.families)
    assert seen == ["batch_t"] * len(grid.families) and "model.norm=batch_t" in families.grids(None)["cpu"].common
