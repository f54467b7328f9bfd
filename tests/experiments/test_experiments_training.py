"""experiments/ablate.py and experiments/evolution_pictures.py in quick mode (tests the scripts,
not the science): the grid runs through the real CLI, is skipped when re-run, aggregates into
the papers' table layout, and the evolution pictures come from a checkpoint."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, metrics, ok, run_cli

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args, check=True):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate")
    run("experiments/ablate.py", "--grid", "quick", "--out", str(out), "--jobs", "2")  # 2 one-thread runs at once
    return out


def test_grid_runs_aggregates_and_skips_finished_runs(grid_dir):
    rows = list(csv.DictReader(open(grid_dir / "runs.csv")))
    assert len(rows) == 9  # 4 variants x 2 seeds + the diffusion sweep run (static is the ANODE run)
    assert all(r["finished"] == "True" for r in rows)
    accs = {r["run"]: float(r["final_test_acc"]) for r in rows}
    assert all(0.0 <= a <= 1.0 for a in accs.values())
    summary = (grid_dir / "summary.md").read_text()
    assert "| model | runs | Baseline min / max | avg | Neural ODE min / max | avg |" in summary
    lo, hi = sorted(100 * accs[f"resnet4-anode-s{s}"] for s in (0, 1))
    assert f"| {lo:.2f} / {hi:.2f} | {(lo + hi) / 2:.2f} (n=2) |" in summary
    # the static cell of the evolution sweep reads the ANODE seed-0 run
    cells = [c.strip() for c in summary.strip().splitlines()[-1].strip("|").split("|")]
    a = 100 * accs["resnet4-anode-s0"]
    assert cells[:2] == ["test acc avg (min–max, n)", f"{a:.2f} ({a:.2f}–{a:.2f}, n=1)"]
    assert (grid_dir / "curves.png").stat().st_size > 1000
    again = run("experiments/ablate.py", "--grid", "quick", "--out", str(grid_dir))
    assert again.stdout.count("done, skipped") == 9


def test_partial_run_is_resumed(grid_dir, tmp_path):
    dry = run("experiments/ablate.py", "--grid", "quick", "--out", str(grid_dir), "--dry-run").stdout
    assert dry.count("done ") == 9
    # a run whose metrics lack the last epoch but which has last.pt is 'partial' (resumable)
    d = grid_dir / "resnet4-anode-s1"
    (d / "metrics.jsonl").write_text("")
    dry = run("experiments/ablate.py", "--grid", "quick", "--out", str(grid_dir), "--dry-run").stdout
    assert "partial  resnet4-anode-s1" in dry


def test_evolution_pictures_from_checkpoint(grid_dir, tmp_path):
    out = tmp_path / "pics"
    r = run("experiments/evolution_pictures.py", "--checkpoint", str(grid_dir / "resnet4-anodev2-s0" / "last.pt"),
            "--out", str(out))
    assert "||θ(1) - θ(0)|| / ||θ(0)||" in r.stdout
    pngs = sorted(p.name for p in out.glob("kernels_*.png"))
    assert pngs == ["kernels_layer1.0_conv1.weight.png", "kernels_layer1.0_conv2.weight.png"]
    rows = list(csv.DictReader(open(out / "rel_change.csv")))
    assert {float(r["rel_change"]) for r in rows if r["n"] == "0"} == {0.0}
    assert all(float(r["rel_change"]) > 0 for r in rows if r["n"] != "0")
    bad = run("experiments/evolution_pictures.py", "--checkpoint", str(grid_dir / "resnet4-anode-s0" / "last.pt"),
              "--out", str(out), check=False)
    assert bad.returncode == 2 and "no ODE block has evolving weights" in bad.stderr
    missing = run("experiments/evolution_pictures.py", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out),
                  check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_ablate_help_and_bad_arguments(tmp_path):
    assert "CPU-budget grid" in run("experiments/ablate.py", "--help").stdout
    bad = run("experiments/ablate.py", "--grid", "cpu", "--out", str(tmp_path), "--models", "vgg", check=False)
    assert bad.returncode == 2 and "select no run of grid 'cpu'; allowed: models ['resnet4']" in bad.stderr


def test_checkpoint_budget_does_not_change_training(tmp_path):
    """The checkpointed adjoint is exact: a budget of 1 checkpoint (recompute from it) and one of
    every step state give bitwise-equal losses and accuracies, so the papers' grid needs no
    checkpoint-budget sweep."""
    recs = []
    for budget in ("1", "null"):
        out = tmp_path / budget
        ok(run_cli(*TINY, "train.epochs=2", "model.variant=anodev2", f"model.checkpoints={budget}", f"out_dir={out}",
                   "log.progress=false", "log.evolution_every=0"))
        recs.append([{k: r[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")} for r in metrics(out)])
    assert len(recs[0]) == 2 and recs[0] == recs[1]


def test_grad_accuracy_uses_the_trained_f_of_a_checkpoint(grid_dir, tmp_path):
    """grad_accuracy --weights takes the first ODE block's f, with its trained weights, from a run."""
    import importlib.util

    import torch

    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        spec = importlib.util.spec_from_file_location("_ga_under_test", ROOT / "experiments" / "grad_accuracy.py")
        ga = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ga)
        ckpt = grid_dir / "resnet4-anode-s0" / "last.pt"
        argv = ["--weights", str(ckpt), "--methods", "euler", "--steps", "1,2", "--seeds", "1", "--batch", "2",
                "--size", "8", "--no-plot", "--out", str(tmp_path)]
        args = ga.parse_args(argv)
        trained = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
        for name, value in args.model_f.state_dict().items():
            assert torch.equal(value, trained[f"layer1.0.f.{name}"]), name
        rows = ga.main(argv)
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    assert [(r["block"], r["steps"]) for r in rows] == [(f"trained:{ckpt}", 1), (f"trained:{ckpt}", 2)]
    assert all(r["ck_err_params"] < 1e-12 and r["bs_err_params"] > 1e-6 for r in rows)
