"""experiments/ablate.py and experiments/evolution_pictures.py in quick mode (tests the scripts,
not the science): the grid runs through the real CLI, is skipped when re-run, aggregates into
the papers' table layout, and the evolution pictures come from a checkpoint.

One grid is trained per module (``grid_dir``); everything after it calls the scripts' ``main`` in
this process (no further torch start-ups), except the argument errors of the real ablate CLI."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import experiments.ablate as ablate
import experiments.evolution_pictures as ep
import experiments.grad_accuracy as ga

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# two of the quick grid's four variants (given out of table order) keep it at 5 runs: ANODE (the static
# cell of the evolution sweep), ANODEV2 (evolving weights; the sweep's variant) x 2 seeds, the diffusion run
SELECTION = ("--variants", "anodev2", "anode")


def run(*args, check=True):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def exits(main, argv, capsys) -> tuple[object, str]:
    """(SystemExit code, stderr) of ``main(argv)``, which must exit."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate")
    run("experiments/ablate.py", "--grid", "quick", "--out", str(out), *SELECTION, "--jobs", "2")  # 2 runs at once
    return out


def test_grid_runs_aggregates_and_skips_finished_runs(grid_dir, capsys):
    rows = list(csv.DictReader(open(grid_dir / "runs.csv")))
    assert len(rows) == 5  # 2 variants x 2 seeds + the diffusion sweep run (static is the ANODE run)
    assert all(r["finished"] == "True" for r in rows)
    accs = {r["run"]: float(r["final_test_acc"]) for r in rows}
    assert all(0.0 <= a <= 1.0 for a in accs.values())
    summary = (grid_dir / "summary.md").read_text()
    assert "| model | runs | ANODE min / max | avg | ANODEV2 min / max | avg |\n" in summary  # the table's order
    lo, hi = sorted(100 * accs[f"resnet4-anode-s{s}"] for s in (0, 1))
    assert f"| {lo:.2f} / {hi:.2f} | {(lo + hi) / 2:.2f} (n=2) |" in summary
    # per-seed table with the paired ANODEV2 - ANODE difference and its mean
    pct = {k: 100 * v for k, v in accs.items()}
    diffs = [pct[f"resnet4-anodev2-s{s}"] - pct[f"resnet4-anode-s{s}"] for s in (0, 1)]
    assert "| seed | ANODE | ANODEV2 | ANODEV2 − ANODE |\n" in summary
    for s, d in zip((0, 1), diffs):
        assert f"| {s} | {pct[f'resnet4-anode-s{s}']:.2f} | {pct[f'resnet4-anodev2-s{s}']:.2f} | {d:+.2f} |" in summary
    assert f"| mean |  |  | {sum(diffs) / 2:+.2f} (n=2, {sum(d < 0 for d in diffs)} negative) |" in summary
    # the static cell of the evolution sweep reads the ANODE seed-0 run
    cells = [c.strip() for c in summary.strip().splitlines()[-1].strip("|").split("|")]
    a = 100 * accs["resnet4-anode-s0"]
    assert cells[:2] == ["test acc avg (min–max, n)", f"{a:.2f} ({a:.2f}–{a:.2f}, n=1)"]
    assert (grid_dir / "curves.png").stat().st_size > 1000
    assert ablate.main(["--grid", "quick", "--out", str(grid_dir), *SELECTION]) == 0
    assert capsys.readouterr().out.count("done, skipped") == 5


def test_partial_run_is_resumed(grid_dir, capsys):
    dry = ["--grid", "quick", "--out", str(grid_dir), *SELECTION, "--dry-run"]
    assert ablate.main(dry) == 0
    assert capsys.readouterr().out.count("done ") == 5
    # a run whose metrics lack the last epoch but which has last.pt is 'partial' (resumable)
    (grid_dir / "resnet4-anode-s1" / "metrics.jsonl").write_text("")
    assert ablate.main(dry) == 0
    assert "partial  resnet4-anode-s1" in capsys.readouterr().out


def test_evolution_pictures_from_checkpoint(grid_dir, tmp_path, capsys):
    out = tmp_path / "pics"
    assert ep.main(["--checkpoint", str(grid_dir / "resnet4-anodev2-s0" / "last.pt"), "--out", str(out)]) == 0
    assert "at t = 0.6667, the last time f uses θ (euler x 3 on [0, 1])" in capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("kernels_*.png"))
    assert pngs == ["kernels_layer1.0_conv1.weight.png", "kernels_layer1.0_conv2.weight.png"]
    rows = list(csv.DictReader(open(out / "rel_change.csv")))
    assert {float(r["rel_change"]) for r in rows if r["n"] == "0"} == {0.0}
    assert all(float(r["rel_change"]) > 0 for r in rows if r["n"] != "0")
    code, err = exits(ep.main, ["--checkpoint", str(grid_dir / "resnet4-anode-s0" / "last.pt"),
                                "--out", str(out)], capsys)
    assert code == 2 and "no ODE block has evolving weights" in err
    code, _ = exits(ep.main, ["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)], capsys)
    assert isinstance(code, str) and "does not exist" in code  # SystemExit(message): status 1, message on stderr


def test_ablate_help_and_bad_arguments(tmp_path):
    # by path and as a module (the two documented ways; both import the package experiments)
    assert "CPU-budget grid" in run("experiments/ablate.py", "--help").stdout
    assert "CPU-budget grid" in run("-m", "experiments.ablate", "--help").stdout
    bad = run("experiments/ablate.py", "--grid", "cpu", "--out", str(tmp_path), "--models", "vgg", check=False)
    assert bad.returncode == 2 and "select no run of grid 'cpu'; allowed: models ['resnet4']" in bad.stderr


def test_grad_accuracy_uses_the_trained_f_of_a_checkpoint(grid_dir, tmp_path):
    """grad_accuracy --weights takes the first ODE block's f, with its trained weights, from a run."""
    ckpt = grid_dir / "resnet4-anode-s0" / "last.pt"
    argv = ["--weights", str(ckpt), "--methods", "euler", "--steps", "1,2", "--seeds", "1", "--batch", "2",
            "--size", "8", "--no-plot", "--out", str(tmp_path)]
    args = ga.parse_args(argv)
    trained = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    for name, value in args.model_f.state_dict().items():
        assert torch.equal(value, trained[f"layer1.0.f.{name}"]), name
    rows = ga.main(argv)
    assert [(r["block"], r["steps"]) for r in rows] == [(f"trained:{ckpt}", 1), (f"trained:{ckpt}", 2)]
    assert all(r["ck_err_params"] < 1e-12 and r["bs_err_params"] > 1e-6 for r in rows)
