"""Scaled-down runs of the weight-evolution experiments: coefficient recovery, the capability
task, and the report on a trained run (tests the scripts and the claims at toy scale)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, cli_env, run_cli

from anodev2.training.run_files import load_checkpoint
from experiments import evolution_capability, recover_evolution

ROOT = Path(__file__).resolve().parents[2]


SMALL = dict(channels=2, size=5, batch=4, iters=60)  # the experiment at toy scale (~1-3 s per kind)


@pytest.mark.parametrize("kind", recover_evolution.RDA_KINDS)
def test_recovery_of_known_coefficients(kind):
    torch.set_num_threads(1)
    r = recover_evolution.recover(kind, **SMALL)
    assert r.passed, r
    assert r.coefficients == 2 * 2 * len(recover_evolution.build_evolution(kind, {"w": (2, 2, 3, 3)}).terms)
    assert r.max_abs_error < recover_evolution.ABS_TOL and r.final_loss <= recover_evolution.LOSS_TOL
    if kind == "advection":  # at this seed the fit passes only after leaving a wrong-sign branch
        assert r.reflections >= 1


def test_advection_recovery_needs_the_sign_reflection():
    """Without reflections the advection fit stops on the wrong side of the kink of |a| (a local
    minimum with a positive loss); with them it passes (test_recovery_of_known_coefficients)."""
    torch.set_num_threads(1)
    r = recover_evolution.recover("advection", flips=0, **SMALL)
    assert not r.passed and r.final_loss > recover_evolution.LOSS_TOL and r.reflections == 0


def test_recovery_detects_a_wrong_answer():
    """The criterion can fail: a student that cannot learn (one iteration, no reflections) does not pass."""
    r = recover_evolution.recover("reaction", channels=2, size=5, batch=4, iters=1, adam_steps=0, flips=0)
    assert not r.passed and r.max_abs_error > recover_evolution.ABS_TOL


def test_capability_task_needs_time_varying_weights():
    """The gap at toy scale: the teacher *is* an ANODEV2 student (MSE 0), every static-weight
    student is above a clearly positive floor, and a briefly trained static student stays there."""
    torch.set_num_threads(1)
    ec = evolution_capability
    x = 4 * torch.rand(64, 1, 1, 1, generator=torch.Generator().manual_seed(0)) - 2
    teacher = ec.teacher()
    with torch.no_grad():
        y = teacher(x)
    floor = ec.static_floor(x, y)
    assert floor > 1e-3
    # monotone targets have floor 0 (the floor is not positive by construction)
    assert ec.static_floor(x, torch.stack([x, x]) * torch.tensor([0.5, 0.25]).view(2, 1, 1, 1, 1)) == 0.0
    torch.manual_seed(0)
    static = ec.Student(ec.make_f(ec.static_hidden(2)), None)
    ec.fit(static, x, y, 60, 0.05)
    with torch.no_grad():
        assert (static(x) - y).pow(2).mean().item() > 0.9 * floor
    assert ec.count(static) >= ec.count(teacher)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evo_run") / "run"
    r = run_cli(*TINY, "train.epochs=2", f"out_dir={out}", "optim.evolution_lr_mult=10")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_report_on_a_tiny_trained_run(tiny_run, tmp_path):
    r = subprocess.run([sys.executable, "experiments/evolution_report.py", str(tiny_run), "--out", str(tmp_path),
                        "--pictures", "--max-kernels", "4"], cwd=ROOT, env=cli_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = json.loads((tmp_path / "evolution_report.json").read_text())
    assert 0 <= rec["test_acc"] <= 1 and 0 <= rec["test_acc_evolution_off"] <= 1
    block = next(iter(rec["coefficients"]))
    assert set(rec["coefficients"][block]) == {"diffusion", "advection_x", "advection_y", "reaction"}
    for term, init in rec["coefficients_init"][block].items():  # zero init; training moved every term
        assert init["min"] == init["max"] == 0.0, term
        assert rec["coefficients"][block][term]["std"] > 0, term
    assert all(v == 0.0 for v in rec["drift_untrained"].values())  # zero coefficients: θ(t) = θ(0)
    assert all(v > 0.0 for v in rec["drift"].values())
    assert all((tmp_path / f).is_file() for f in rec["pictures"]) and len(rec["pictures"]) >= 2
    assert "| run | seed | test acc | acc, evolution off | drop |" in r.stdout
    # history from the run's TensorBoard events: every weight x term plus the drift, every epoch
    history = rec["history"]
    terms = {k.rsplit("/", 1)[1] for k in history}
    assert terms == {"diffusion", "advection_x", "advection_y", "reaction", "drift"}
    assert all([e for e, _ in points] == [1, 2] for points in history.values())
    assert all(v > 0 for points in history.values() for _, v in points)  # moved from 0 by epoch 1
    assert any(points[0][1] != points[-1][1] for points in history.values())  # and kept moving
    assert "max abs coefficient (or drift) at the logged epochs" in r.stdout


def test_tensorboard_coefficient_histograms_move_across_epochs(tiny_run):
    event_acc = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_acc.EventAccumulator(str(tiny_run), size_guidance={event_acc.HISTOGRAMS: 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["histograms"] if "/coef/" in t]
    assert tags
    moved = 0
    for tag in tags:
        events = acc.Histograms(tag)
        assert len(events) >= 2, tag
        first, last = events[0].histogram_value, events[-1].histogram_value
        moved += (first.min, first.max, first.sum) != (last.min, last.max, last.sum)
    assert moved == len(tags)


def test_report_checkpoint_choice(tiny_run, tmp_path):
    """``--checkpoint last`` reads last.pt (the end of training) even where best.pt exists, and says
    so when there is none; the default falls back to last.pt when there is no best.pt."""
    import shutil

    from experiments import evolution_report

    only_best, only_last = tmp_path / "only_best", tmp_path / "only_last"
    for d, keep in ((only_best, "best.pt"), (only_last, "last.pt")):
        d.mkdir()
        for name in (keep, keep + ".sha256"):
            if (tiny_run / name).is_file():
                shutil.copy(tiny_run / name, d / name)
    with pytest.raises(SystemExit, match="has no last.pt"):
        evolution_report.load_run(only_best, "last")
    for run, checkpoint, source in ((tiny_run, "last", "last.pt"), (only_last, "best", "last.pt"),
                                    (tiny_run, "best", "best.pt")):
        trained, _, _ = evolution_report.load_run(run, checkpoint)
        saved = load_checkpoint(tiny_run / source)["model"]
        assert all(torch.equal(v, saved[k]) for k, v in trained.state_dict().items()), (run, checkpoint)
