"""train_coupled.py end to end (subprocess) on tiny synthetic data, plus the shared real data when present.

Covers: a finished run's metrics.jsonl / config.yaml / weights_only checkpoints, TensorBoard
weight-evolution tags for every evolving weight and step, exact kill-and-resume, a checkpoint
budget of 1 training bitwise like keeping every step state, the
non-finite-loss stop (exit 1, checkpoint intact), every kind of bad input (exit 2, one
'error:' line), and a 2-process torchrun (gloo) run.
"""
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TINY, metrics, ok, run_cli

from anodev2 import models
from anodev2.training import tb_logging as tb
from anodev2.training.cli import main
from anodev2.training.config import load_config

SHARED = REPO.parent / "shared" / "data"
TIME_KEYS = {"epoch_time", "images_per_sec"}


def strip_time(recs):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in recs]


def test_output_that_is_not_a_terminal_gets_plain_progress_lines_for_training_and_evaluation(full_run):
    out = (full_run.parent / "stdout.txt").read_text().splitlines()
    # 4 training steps and 1 test batch per epoch: every step is >= 10 % of its pass
    for epoch in (1, 2):
        train = [line for line in out if line.startswith(f"epoch {epoch}/2 train ")]
        test = [line for line in out if line.startswith(f"epoch {epoch}/2 test ")]
        assert [line.split()[3] for line in train] == ["1/4", "2/4", "3/4", "4/4"]
        assert [line.split()[3] for line in test] == ["1/1"]
        for line in train + test:
            assert re.fullmatch(r"epoch \d/2 (train|test) \d/\d \(\d+%\) loss \d+\.\d{4} \d+ img/s "
                                r"elapsed \d:\d\d:\d\d ETA \d:\d\d:\d\d run ETA \d:\d\d:\d\d", line), line
    assert "\r" not in "".join(out)  # no tqdm bar in a log file


def test_run_writes_metrics_config_and_weights_only_checkpoints(full_run):
    recs = metrics(full_run)
    assert [r["epoch"] for r in recs] == [1, 2]
    assert [r["optimizer_steps"] for r in recs] == [4, 8] and all(r["steps"] == 4 for r in recs)
    assert all(r["train_images"] == 64 and r["test_images"] == 32 for r in recs)
    for r in recs:
        for k in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time", "images_per_sec"):
            assert isinstance(r[k], float) and r[k] == r[k], k
    cfg = load_config(str(full_run / "config.yaml"))
    assert cfg.train.epochs == 2 and cfg.model.steps == 3 and cfg.out_dir == str(full_run)
    last = torch.load(full_run / "last.pt", weights_only=True)
    best = torch.load(full_run / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and last["optimizer_steps"] == 8 and len(last["history"]) == 2
    assert best["best_test_acc"] == max(r["test_acc"] for r in recs)
    net = models.build("resnet4", "anodev2", width=0.25, steps=3)
    net.load_state_dict(last["model"])
    assert not list(full_run.glob(".*.tmp"))


def test_tensorboard_has_evolution_views_for_every_weight_and_step(full_run):
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(str(full_run), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0}).Reload()
    tags = acc.Tags()
    have = set(tags["scalars"]) | set(tags["histograms"]) | set(tags["images"])
    for t in tb.SCALAR_TAGS.values():
        assert [e.step for e in acc.Scalars(t)] == [1, 2], t
    net = models.build("resnet4", "anodev2", width=0.25, steps=3)
    blocks = models.ode_blocks(net)
    assert blocks
    n_weights = 0
    for name, block in blocks:
        for weight in block.evolving_names:
            n_weights += 1
            expected = tb.evolution_tags(name, weight, times=3)  # euler x 3: f uses θ at 0, 1/3, 2/3
            assert len(expected) == 2 * 3 + 2
            missing = [t for t in expected if t not in have]
            assert not missing, missing
            assert f"evolution/{name}/{weight}/rel_change/t3" not in have  # θ(1): never used by f
            assert [round(acc.Scalars(f"evolution/{name}/time/t{n}")[-1].value, 6) for n in range(3)] == \
                [0.0, round(1 / 3, 6), round(2 / 3, 6)]
            assert acc.Scalars(f"evolution/{name}/{weight}/rel_change/t0")[0].value == 0.0
            assert acc.Scalars(f"evolution/{name}/{weight}/rel_change/t2")[-1].value > 0.0
            assert [e.step for e in acc.Images(f"evolution/{name}/{weight}/kernels")] == [1, 2]
            assert any(t.startswith(f"evolution/{name}/{weight}/coef/") for t in tags["scalars"])
    assert n_weights >= 2


def test_resume_after_kill_equals_uninterrupted_run(full_run, one_epoch_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    (run / "metrics.jsonl").write_text("")  # as if killed between checkpoint and metrics line
    ok(run_cli("--resume", run, "train.epochs=2"))
    assert strip_time(metrics(run)) == strip_time(metrics(full_run))
    a = torch.load(run / "last.pt", weights_only=True)["model"]
    b = torch.load(full_run / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # (a finished run has nothing left to do: test_run_safety.py's lock test resumes one)


def test_checkpoint_budget_does_not_change_training(full_run, tmp_path):
    """The checkpointed adjoint is exact: a budget of 1 checkpoint (recompute from it) gives the
    metrics and trained weights of full_run (ANODEV2, Nt=3, every step state kept; the same
    command otherwise) bitwise, so the papers' grid (experiments/ablate.py) needs no
    checkpoint-budget sweep."""
    run = tmp_path / "run"
    ok(run_cli(*TINY, "train.epochs=2", "model.grad.checkpoints=1", f"out_dir={run}"))
    assert "grad=checkpoint(checkpoints=1, " in (run / "model.txt").read_text()
    assert "grad=checkpoint(checkpoints=all, " in (full_run / "model.txt").read_text()
    assert strip_time(metrics(run)) == strip_time(metrics(full_run))
    a = torch.load(run / "last.pt", weights_only=True)["model"]
    b = torch.load(full_run / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_status_1_and_keeps_checkpoint(one_epoch_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    before = (run / "last.pt").read_bytes()
    proc = run_cli("--resume", run, "train.epochs=3", "optim.lr=1e30")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: non-finite training loss") and "epoch 2" in err and "step" in err
    assert str(run / "last.pt") in err and "Traceback" not in proc.stderr
    assert (run / "last.pt").read_bytes() == before
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1


def _bad_cases(tmp):
    (tmp / "typo.yaml").write_text("base: smoke\ntrain:\n  epohcs: 3\n")
    occupied = tmp / "occupied"
    occupied.mkdir()
    (occupied / "last.pt").write_bytes(b"")
    empty = tmp / "nodata"
    empty.mkdir()
    return [
        (["--config", "nonexistent_cfg"], ["config 'nonexistent_cfg' not found", "aconnect", "smoke"]),
        (["--config", tmp / "typo.yaml"], ["unknown config key 'train.epohcs'", "train.epochs"]),
        (["--config", "smoke", "train.epoch=2"], ["'train.epoch'", "did you mean 'train.epochs'"]),
        (["--config", "smoke", "train.epochs=two"], ["train.epochs='two'", "integer"]),
        (["--config", "smoke", "optim.momentum=-1"], ["optim.momentum=-1", ">= 0.0"]),
        (["--config", "smoke", "model.variant=resnet"], ["model.variant='resnet'", "anodev2"]),
        (["--config", "smoke", "epochs"], ["KEY=VALUE"]),
        (["--config", "smoke", "train.amp=true", "train.device=cpu"], ["train.amp=true needs CUDA"]),
        (["--config", "smoke", "model.variant=baseline", "model.steps=3"], ["model section rejected", "baseline"]),
        (["--config", "smoke", "model.options.depth=3"], ["model section rejected", "depth"]),
        (["--resume", tmp / "nowhere"], ["--resume", "last.pt"]),
        (["--config", "smoke", f"out_dir={occupied}"], ["already holds a run", "--resume"]),
        (["--config", "smoke", f"data.root={empty}", "data.download=false"],
         ["cifar10 data not found", str(empty), "make_cifar10_npz.py", "internet"]),
        ([], ["--config NAME_OR_PATH is required"]),
        (["--config", "smoke", "--bogus"], ["unrecognized arguments"]),
    ]


def test_every_bad_input_gives_one_error_line_and_status_2(tmp_path, capsys, one_epoch_run):
    before = (one_epoch_run / "last.pt").read_bytes()
    resume_cases = [
        (["--resume", one_epoch_run, "train.epochs=2", "model.width=0.5"],
         ["model.width: 0.25 -> 0.5", "--allow-change model.width"]),  # the resume guard (tests/training/test_inputs.py)
        (["--resume", one_epoch_run, "train.epochs=2", "model.width=0.5", "--allow-change", "model.width"],
         ["does not match", "model"]),  # allowed, but the checkpoint cannot hold that model
        (["--resume", one_epoch_run, "train.epochs=2", "optim.name=adam"], ["optim.name=sgd"]),
        (["--resume", one_epoch_run, f"out_dir={tmp_path}"], ["conflicts with --resume"]),
    ]
    for argv, words in _bad_cases(tmp_path) + resume_cases:
        if "smoke" in argv and not any(str(a).startswith("out_dir=") for a in argv):
            argv = argv + [f"out_dir={tmp_path / 'unused'}"]  # never the repo's runs/smoke
        with pytest.raises(SystemExit) if "--bogus" in argv else _nullcontext() as exc:
            status = main([str(a) for a in argv])
        if "--bogus" in argv:
            status = exc.value.code
        err = capsys.readouterr().err
        assert status == 2, (argv, err)
        assert err.startswith("error:") and err.count("\n") == 1, (argv, err)
        for w in words:
            assert w in err, (argv, w, err)
    assert (one_epoch_run / "last.pt").read_bytes() == before


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_bad_input_through_the_real_cli_has_no_traceback(tmp_path):
    # an error found when the run starts; one found while resolving the config goes through the same
    # handler (in-process above, and as a subprocess in test_run_safety.py's torchrun test)
    proc = run_cli("--config", "smoke", "train.amp=true", "train.device=cpu")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: train.amp=true needs CUDA") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_options_config_dir_and_configs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for w in ("--config", "--resume", "training/configs", "aconnect", "smoke", "train.epochs", "torchrun"):
        assert w in out, w


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo_equal_one_process_accumulating_the_same_micro_batches(tmp_path):
    # DDP on 2 ranks x 16 images = one process with batch 32 split into 2 interleaved micro-batches
    # (x[0::2], x[1::2] are exactly rank 0's and rank 1's images): the same conv kernels on the same
    # 16-image shapes, gradients scaled by 1/2 (exact) and summed pairwise (commutative), so the
    # parameters agree bit for bit. A plain batch-32 step is NOT guaranteed to: CPU conv kernels
    # may sum a batch of 32 in another order (issue 11 saw 2.6e-4 max abs after 4 steps on one
    # machine), which is why the reference accumulates micro-batches.
    same = [*TINY, "train.epochs=2", "data.subset_test=30", "data.augment=false", "model.norm=group"]
    out, ref = tmp_path / "ddp", tmp_path / "single"
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}"]
    ok(run_cli(*same, f"out_dir={out}", launcher=launcher))
    ok(run_cli(*same, "train.batch_size=32", "train.micro_batches=2", "log.tensorboard=false", f"out_dir={ref}"))
    recs, single = metrics(out), metrics(ref)
    # 64 images over 2 ranks = 32 per rank = 2 steps of 16 per epoch on each rank
    assert [(r["steps"], r["optimizer_steps"]) for r in recs] == [(2, 2), (2, 4)]
    assert [(r["steps"], r["optimizer_steps"]) for r in single] == [(2, 2), (2, 4)]
    assert all(r["world_size"] == 2 and r["train_images"] == 64 and r["test_images"] == 30 for r in recs)
    assert all(r["ranks_in_sync"] for r in recs)
    for r, s in zip(recs, single):
        # training: the same float32 per-micro-batch losses, summed in float64
        assert r["train_loss"] == pytest.approx(s["train_loss"], rel=1e-12) and r["train_acc"] == s["train_acc"]
        # evaluation is not split alike (15 test images per rank vs one batch of 30), so its float32
        # conv sums may round differently: agreement to float32 precision, at most one image flipped
        assert r["test_loss"] == pytest.approx(s["test_loss"], rel=1e-5)
        assert abs(r["test_acc"] - s["test_acc"]) <= 1 / 30 + 1e-12
    a = torch.load(out / "last.pt", weights_only=True)
    b = torch.load(ref / "last.pt", weights_only=True)
    assert a["epoch"] == 2 and a["model"].keys() == b["model"].keys()
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # rank 0 only


@pytest.mark.skipif(not (SHARED / "cifar10-png").is_dir(), reason="no shared CIFAR-10 copy")
def test_real_cifar10_from_npz(tmp_path):
    root = tmp_path / "data"
    subprocess.run([sys.executable, str(SHARED / "make_cifar10_npz.py"), str(root)], check=True,
                   capture_output=True, timeout=120)
    out = tmp_path / "run"
    try:
        proc = ok(run_cli(*TINY, "data.name=cifar10", f"data.root={root}", f"out_dir={out}"))
    finally:
        (root / "cifar10.npz").unlink(missing_ok=True)  # 184 MB; pytest keeps old tmp dirs
    assert "cifar10.npz" in proc.stdout
    (rec,) = metrics(out)
    assert rec["train_images"] == 64 and rec["test_images"] == 32


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="no shared MNIST copy")
def test_real_mnist_single_channel(tmp_path):
    out = tmp_path / "run"
    proc = ok(run_cli("--config", "mnist_smoke", *TINY[3:], f"data.root={SHARED}",
                      "data.download=false", f"out_dir={out}"))
    assert "mnist" in proc.stdout
    last = torch.load(out / "last.pt", weights_only=True)
    conv = [v for k, v in last["model"].items() if v.dim() == 4][0]
    assert conv.shape[1] == 1  # in_channels = 1
