"""experiments/ablate.py: the grids hold every run once, every grid evaluates after every epoch,
the paper configs load and build, and the submitit launcher (its local executor here) runs the
jobs, gathers them into the same tables, skips finished runs and resumes partial ones."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

import experiments.ablate as ablate
from anodev2.models import build
from anodev2.training.config import load_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args, check=True):
    cmd = [sys.executable, "experiments/ablate.py", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.mark.parametrize("name", ["quick", "cpu", "paper"])
def test_every_run_once_and_evaluated_every_epoch(name):
    grid = ablate.grids("data")[name]
    runs = ablate.expand(grid)
    configs = [(r.config, tuple(sorted(grid.common + r.overrides))) for r in runs]
    assert len(set(configs)) == len(runs) == len({r.name for r in runs})
    assert not any("evolution=static" in r.name for r in runs)  # static evolution is the ANODE run
    for r in runs:
        assert load_config(r.config, [*grid.common, *r.overrides]).train.eval_every == 1
    # each sweep cell is a run of the grid: its own or a main-table one
    names = {r.name for r in runs}
    for cells in ablate.sweep_cells(grid).values():
        assert {r.name for _, r in cells} <= names


def test_paper_grid_size():
    runs = ablate.expand(ablate.grids(None)["paper"])
    # 3 models x 4 variants x 3 seeds; sweeps on resnet10 ANODEV2 x 3 seeds: steps 1/4/8, method rk2/rk4,
    # evolution diffusion/advection/reaction (steps 2, euler, rda and static are main-table runs)
    assert len(runs) == 36 + 3 * (3 + 2 + 3)


def test_selecting_a_variant_drops_sweep_cells_that_are_other_variants_runs():
    full = ablate.grids("data")["cpu"]
    grid = ablate.select(full, variants=["anodev2"], seeds=[0])
    names = [r.name for r in ablate.expand(grid)]
    assert names == ["resnet4-anodev2-s0"] + [f"resnet4-anodev2-evolution={k}-s0"
                                              for k in ("diffusion", "advection", "reaction")]
    assert "static" not in grid.sweeps["evolution"].values and "static" in full.sweeps["evolution"].values
    # with ANODE selected too, the static cell is back and reads the ANODE run
    grid = ablate.select(full, variants=["anode", "anodev2"], seeds=[0])
    cells = dict(ablate.sweep_cells(grid)["evolution"])
    assert cells["static"].name == "resnet4-anode-s0"


def test_no_sweeps_lists_the_main_table_only(tmp_path, capsys):
    args = ["--grid", "cpu", "--out", str(tmp_path), "--dry-run"]
    assert ablate.main(args) == 0
    every = capsys.readouterr().out.splitlines()
    assert ablate.main([*args, "--no-sweeps"]) == 0
    main_only = capsys.readouterr().out.splitlines()
    assert len(every) == 15 and len(main_only) == 12  # 4 variants x 3 seeds (+ 3 evolution-kind runs)
    assert main_only == [line for line in every if "evolution=" not in line.split(":")[0]]


def test_sweep_value_without_its_main_run_is_an_error():
    grid = ablate.select(ablate.grids(None)["quick"], variants=["anodev2"])
    grid.sweeps = {"evolution": ablate.Sweep("model.evolution", ("static",), "anodev2", (0,), {"static": "anode"})}
    with pytest.raises(ValueError, match=r"stands for main-table run resnet4-anode-s0, which the grid does not"):
        ablate.expand(grid)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_load_and_build(path):
    cfg = load_config(path)
    model, variant = path.stem.split("-")
    assert (cfg.model.name, cfg.model.variant, cfg.train.epochs, cfg.train.batch_size) == (model, variant, 350, 256)
    assert (cfg.optim.lr, list(cfg.optim.milestones), cfg.optim.weight_decay) == (0.1, [150, 250], 5e-4)
    build(cfg.model.name, cfg.model.variant, **cfg.model.build_options())


def test_paper_configs_cover_the_table():
    stems = {p.stem for p in (ROOT / "experiments" / "configs" / "paper").glob("*.yaml")}
    grid = ablate.grids(None)["paper"]
    assert stems == {f"{m}-{v}" for m in grid.models for v in grid.variants}


def test_submitit_local_jobs_gather_skip_and_resume(tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["--grid", "quick", "--out", str(out), "--variants", "baseline", "anode", "--seeds", "0",
            "--launcher", "submitit", "--cluster", "local", "--gpus-per-job", "0", "--cpus-per-job", "1",
            "--time-limit", "10", "--set", "data.subset_train=64", "data.subset_test=32"]
    first = run(*args)
    assert first.stdout.count("submitted as job") == 2 and first.stdout.count(": ok (job") == 2
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [r["run"] for r in rows] == ["resnet4-baseline-s0", "resnet4-anode-s0"]
    assert all(r["finished"] == "True" for r in rows)
    assert "| resnet4 | this grid |" in (out / "summary.md").read_text()
    assert list((out / "_submitit").glob("*_log.out"))  # submitit's own job logs
    # a finished grid submits nothing (in this process: nothing to start)
    assert ablate.main(args) == 0
    again = capsys.readouterr().out
    assert again.count("done, skipped") == 2 and "submitted" not in again
    # a partial run (metrics lost, last.pt kept) is resumed by its job
    (out / "resnet4-anode-s0" / "metrics.jsonl").write_text("")
    resumed = run(*args)
    assert resumed.stdout.count("submitted as job") == 1 and "resnet4-anode-s0: ok" in resumed.stdout
    log = (out / "_logs" / "resnet4-anode-s0.log").read_text().splitlines()
    assert [line for line in log if line.startswith("$ ")][-1].count("--resume") == 1


def test_submitit_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    with pytest.raises(SystemExit) as e:  # SystemExit(message): exit status 1, the message on stderr
        ablate.main(["--grid", "quick", "--out", str(tmp_path), "--seeds", "0", "--variants", "baseline",
                     "--launcher", "submitit"])
    assert "needs the submitit package: pip install submitit" in str(e.value.code)
    assert not (tmp_path / "resnet4-baseline-s0").exists()  # nothing was started
