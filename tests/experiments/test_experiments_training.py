"""experiments/ablate.py and experiments/evolution_pictures.py in quick mode (tests the scripts,
not the science): the grid runs through the real CLI, is skipped when re-run, aggregates into
the papers' table layout, and the evolution pictures come from a checkpoint."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert len(rows) == 9  # 4 variants x 2 seeds + 1 sweep run
    assert all(r["finished"] == "True" for r in rows)
    accs = [float(r["final_test_acc"]) for r in rows]
    assert all(0.0 <= a <= 1.0 for a in accs)
    summary = (grid_dir / "summary.md").read_text()
    assert "| model | Baseline | Neural ODE | ANODE | ANODEV2 |" in summary
    assert "| resnet4 |" in summary and "n=2" in summary and "Sweep `evolution`" in summary
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
    assert bad.returncode == 2 and "selects no model" in bad.stderr
