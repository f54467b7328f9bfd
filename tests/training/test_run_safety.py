"""What a researcher leaving a run overnight relies on (issue 11, items 2-6; issue 18 D1-D3, W1/W2, H1, disk
full, SIGTERM), through the real command line.

Run lock (exit 2 naming the PID; stale locks do not block; DataLoader workers of a killed run do
not hold it), the divergence guard before every checkpoint (exit 1, last.pt untouched, strict
JSON), bad data / checkpoint / out_dir files (one ``error:`` line, exit 2, nothing changed,
nothing left behind), out_dir safety (links, foreign files, empty out_dir, a run that never
wrote a checkpoint), SHA-256 verification on resume, a kill at every point of the epoch-end
sequence, a full disk, Ctrl-C (exit 130) and SIGTERM (exit 143) held back during the epoch-end
writes, stale temporaries, absolute data roots, overrides after options, torchrun with a bad key.
"""
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, TINY, cli_env, hold_run_lock, metrics, run_cli

from anodev2.training.cli import main
from anodev2.training.config import load_config
from anodev2.training.run_files import RunLock, checksum_path, is_run_temporary, load_checkpoint


def _copy(run, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _one_error_line(proc_or_err, status=None):
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    if status is not None:
        assert proc_or_err.returncode == status, (proc_or_err.returncode, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_live_run_directory_refuses_a_second_launch_and_a_resume_until_its_holder_dies(one_epoch_run, tmp_path,
                                                                                          capsys, monkeypatch):
    run = _copy(one_epoch_run, tmp_path)
    (run / ".last.pt.k1lled_x.tmp").write_bytes(b"half a checkpoint")  # left by a writer killed earlier
    (run / ".notes.k1lled_x.tmp").write_bytes(b"not the run's")
    holder = hold_run_lock(run)
    # a resume and a second launch, in this process (the CLI's code path without a torch start-up;
    # train_coupled.py exits with main's status)
    try:
        assert main(["--resume", str(run), "train.epochs=1"]) == 2
        err = _one_error_line(capsys.readouterr().err)
        assert f"in use by process {holder.pid} " in err and str(run / "run.lock") in err, err
        assert main([*TINY, f"out_dir={run}"]) == 2
        assert f"in use by process {holder.pid} " in _one_error_line(capsys.readouterr().err)
        assert (run / ".last.pt.k1lled_x.tmp").exists()  # nothing touched while another process owns the dir
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the stale lock file does not block; resuming from another directory needs no data.root
    # because config.yaml stores the absolute data root
    assert load_config(str(run / "config.yaml")).data.root == str((REPO / "data").resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["--resume", str(run), "train.epochs=1"]) == 0
    assert "nothing to do" in capsys.readouterr().out and (run / "run.lock").exists()
    # the run's own stale temporaries are removed once the lock is held, nothing else
    assert [p.name for p in run.glob(".*.tmp")] == [".notes.k1lled_x.tmp"]


def test_divergence_at_the_end_of_an_epoch_is_caught_before_the_checkpoint(one_epoch_run, tmp_path):
    run = _copy(one_epoch_run, tmp_path)
    before = {n: (run / n).read_bytes() for n in ("last.pt", "last.pt.sha256", "best.pt")}
    # one step per epoch: the step's loss is finite, its lr=1e30 update is not
    proc = run_cli("--resume", run, "train.epochs=3", "optim.lr=1e30", "train.batch_size=64",
                   "--allow-change", "train.batch_size")
    err = _one_error_line(proc, status=1)
    assert "the model diverged in epoch 2" in err and "test_loss" in err and "not saved" in err, err
    assert f"last good checkpoint: {run / 'last.pt'} (epoch 1, kept intact)" in err, err
    assert {n: (run / n).read_bytes() for n in before} == before
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in metrics(run)] == [1]  # strict JSON; the diverged epoch is not recorded


def _npz(path, n=8, shape=(32, 32, 3)):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n, *shape), dtype=np.uint8), y_train=np.arange(n) % 10,
             x_test=rng.integers(0, 256, (n, *shape), dtype=np.uint8), y_test=np.arange(n) % 10)
    return path


def _crc_corrupt(path):
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x_train.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 500] ^= 0xFF  # inside the stored member's data
    path.write_bytes(bytes(data))


def _bad_data_cases(tmp):
    cases = []
    for kind in ("truncated", "crc", "shape", "labels"):
        d = tmp / kind
        d.mkdir()
        p = _npz(d / "cifar10.npz", shape=(32, 32, 2) if kind == "shape" else (32, 32, 3))
        if kind == "truncated":
            p.write_bytes(p.read_bytes()[:3000])
        elif kind == "crc":
            _crc_corrupt(p)
        elif kind == "labels":
            np.savez(p, **{**dict(np.load(p)), "y_test": np.full(8, 12)})
        words = {"truncated": ["is not a readable arrays file"], "crc": ["CRC"],
                 "shape": ["x_train has dtype uint8 and shape [8, 32, 32, 2]", "allowed for cifar10"],
                 "labels": ["y_test holds labels 12..12", "allowed: 0..9"]}[kind]
        cases.append((["data.name=cifar10", f"data.root={d}"], [str(p), *words], p))
    return cases


def _bad_checkpoint_cases(tmp, run):
    cases = []
    for kind in ("truncated", "empty", "list", "flipped"):
        d = _copy(run, tmp, f"ck_{kind}")
        last = d / "last.pt"
        if kind == "truncated":
            last.write_bytes(last.read_bytes()[:1000])
        elif kind == "empty":
            last.write_bytes(b"")
        elif kind == "list":
            from anodev2.training.run_files import atomic_save
            atomic_save([1, 2], last)
        else:
            data = bytearray(last.read_bytes())
            data[len(data) // 2] ^= 0x01
            last.write_bytes(bytes(data))
        words = {"truncated": ["does not match its SHA-256"], "empty": ["is empty"],
                 "list": ["holds a list, not a checkpoint dict"],
                 "flipped": ["does not match its SHA-256", f"{d / 'best.pt'} verifies (epoch 1)"]}[kind]
        cases.append((["--resume", d, "train.epochs=2"], [str(last), *words], last))
    return cases


def test_bad_files_give_one_error_line_status_2_and_change_nothing(one_epoch_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    cases = [(argv if "--resume" in argv else [*TINY, f"out_dir={tmp_path / 'out'}", *argv], words, keep)
             for argv, words, keep in _bad_data_cases(tmp_path) + _bad_checkpoint_cases(tmp_path, one_epoch_run)]
    cases.append(([*TINY, f"out_dir={a_file}"], [f"out_dir {a_file} is a file"], a_file))
    for argv, words, keep in cases:
        before = keep.read_bytes()
        status = main([str(a) for a in argv])
        err = _one_error_line(capsys.readouterr().err)
        assert status == 2, (argv, err)
        for w in words:
            assert w in err, (w, err)
        assert keep.read_bytes() == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.pt"))


def _drop_file_permission_override():
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: root then obeys file modes like any user
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unwritable_out_dir_fails_before_loading_data(tmp_path):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        kw = {}
        if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
            try:  # as root, take away the capability that ignores file modes (else root writes anyway)
                subprocess.run(["true"], preexec_fn=_drop_file_permission_override, check=True)
            except (OSError, subprocess.SubprocessError):
                pytest.skip("running as root without CAP_SETPCAP: cannot make a directory unwritable for root")
            kw["preexec_fn"] = _drop_file_permission_override
        # data.root points nowhere: the out_dir error must come first
        proc = run_cli(*TINY, "data.name=cifar10", f"data.root={tmp_path / 'nodata'}", "data.download=false",
                       f"out_dir={parent / 'run'}", **kw)
    finally:
        parent.chmod(0o755)
    err = _one_error_line(proc, status=2)
    assert f"out_dir {parent / 'run'} cannot be written (permission denied)" in err, err
    assert list(parent.iterdir()) == []


def test_ctrl_c_exits_130_with_the_resume_command_and_keeps_last_pt(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train_coupled.py"), *TINY, "train.epochs=50",
                             "data.subset_train=16", "data.subset_test=8", "log.tensorboard=false", f"out_dir={run}"],
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a terminal's Ctrl-C: pytest started as a background job (nohup ... &) passes
                            # SIGINT on ignored, and Python then keeps ignoring it (the run would not stop)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not checksum_path(run / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"interrupted: {run / 'last.pt'} kept; continue with: python train_coupled.py "
                          f"--resume {run}"), err
    assert load_checkpoint(run / "last.pt")["epoch"] >= 1
    assert not list(run.glob(".*.tmp"))


def test_overrides_may_follow_options(capsys):
    assert main(["--config", "smoke", "--print-config", "model.steps=3", "train.epochs=2"]) == 0
    cfg = capsys.readouterr().out
    assert "steps: 3" in cfg and "epochs: 2" in cfg


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_with_a_bad_key_prints_our_error_line_once_and_first(tmp_path):
    """torchrun itself reports any non-zero child with its own ChildFailedError traceback (documented in
    docs/TRAINING.md); what we guarantee is our one line, from rank 0 only, before that report."""
    proc = run_cli("--config", "smoke", "train.epoch=2", f"out_dir={tmp_path / 'run'}",
                   launcher=["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                             f"--master_port={_free_port()}"])
    assert proc.returncode == 1  # torchrun's status for a failed child
    lines = proc.stderr.splitlines()
    assert lines[0] == "error: unknown config key 'train.epoch'; did you mean 'train.epochs'?", proc.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1 and "exitcode  : 2" in proc.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- issue 18: faults at every point

#: a 2-epoch run of 2 steps per epoch; the fault driver picks a train.seed for which both epochs are best
#: epochs (best.pt is written at each), so every point of the epoch-end sequence occurs
FAULT_ARGS = ["--config", "smoke", "data.name=synthetic", "data.subset_train=32", "data.subset_test=16",
              "model.width=0.25", "train.batch_size=16", "log.evolution_batch=2", "log.evolution_every=0",
              "model.steps=3", "train.epochs=2"]
EPOCH_END = ["epoch2", "metrics.jsonl:tmp", "metrics.jsonl", "tensorboard",
             "last.pt.sha256:before:tmp", "last.pt.sha256:before", "last.pt:tmp", "last.pt", "last.pt.sha256:tmp",
             "last.pt.sha256", "best.pt.sha256:before:tmp", "best.pt.sha256:before", "best.pt:tmp", "best.pt",
             "best.pt.sha256:tmp", "best.pt.sha256", "epoch2:done"]
COMMITTED = EPOCH_END.index("last.pt")  # from here on, last.pt holds epoch 2


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """One driver process (one torch start-up) runs the reference and every faulted run + its resume, forked."""
    work = tmp_path_factory.mktemp("faults")
    spec = {"args": FAULT_ARGS, "work": str(work), "seeds": [4, *range(4), *range(5, 16)], "best_epochs": [1, 2],
            "kill_every_point_of_epoch": 2,
            "cases": [{"at": "0:config.yaml:tmp", "action": "kill"},  # before the run has a config
                      {"at": "1:last.pt.sha256:before", "action": "kill"},  # a sidecar, no first last.pt
                      {"at": "1:tensorboard", "action": "kill", "rerun": True},  # then the same command again
                      {"at": "1:last.pt", "action": "kill"},  # the first last.pt, no best.pt yet
                      {"at": "2:last.pt:tmp", "action": "enospc"},  # last.pt stays at epoch 1
                      {"at": "2:last.pt.sha256:tmp", "action": "enospc"},  # last.pt at epoch 2, sidecar lists both
                      {"at": "2:last.pt:tmp", "action": "sigterm"}, {"at": "2:best.pt:tmp", "action": "sigint"}]}
    (work / "spec.json").write_text(json.dumps(spec))
    driver = REPO / "tests" / "training" / "fault_driver.py"
    proc = subprocess.run([sys.executable, str(driver), str(work / "spec.json"), str(work / "report.json")],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((work / "report.json").read_text())
    assert report["reference"]["status"] == 0
    return report


def _strip_time(recs):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_sec")} for r in recs]


def _scalars(run):
    from tensorboard.backend.event_processing import event_accumulator as ea

    from anodev2.training.tb_logging import SCALAR_TAGS
    acc = ea.EventAccumulator(str(run), size_guidance={ea.SCALARS: 0}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in SCALAR_TAGS.values()}


def _assert_same_as_reference(run, ref, tensorboard=True):
    """metrics.jsonl, last.pt and best.pt (both strictly verified) and the TensorBoard scalars of ``run`` are those of
    the uninterrupted ``ref``, bit for bit; no temporaries are left."""
    recs = metrics(run)
    assert _strip_time(recs) == _strip_time(metrics(ref))
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run / name), load_checkpoint(ref / name)
        assert a["epoch"] == b["epoch"] and _strip_time(a["history"]) == _strip_time(b["history"]), name
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]), name
    best = [r["epoch"] for r in recs if r.get("best")][-1]
    assert load_checkpoint(run / "best.pt")["epoch"] == best  # best.pt is the epoch metrics.jsonl names
    assert not [p.name for p in run.iterdir() if is_run_temporary(p.name)]
    if tensorboard:
        got, want = _scalars(run), _scalars(ref)
        for tag in got:  # each epoch exactly once (the resumed writer purges what a killed run logged after last.pt)
            assert [s for s, _ in got[tag]] == [1, 2], (tag, got[tag])
            if not tag.startswith("time/"):
                assert got[tag] == want[tag], tag


def test_a_kill_at_every_point_of_the_epoch_end_resumes_to_the_uninterrupted_run(faults):
    """Issue 18 D1, W1/W2: SIGKILL at every point of epoch 2's end (the sequence is asserted: logs, then last.pt, its
    sidecar, best.pt, its sidecar), and at points of the start and of epoch 1; ``--resume`` continues from the
    newest verifiable state and ends with the uninterrupted run's metrics, TensorBoard scalars, last.pt and a
    best.pt that is the epoch metrics.jsonl names."""
    ref = Path(faults["reference"]["dir"])
    assert [p[2:] for p in faults["points"] if p.startswith("2:")] == EPOCH_END
    assert [r.get("best") for r in metrics(ref)] == [True, True]
    kills = {c["at"]: c for c in faults["cases"] if c["action"] == "kill" and not c.get("rerun")}
    assert set(kills) == {f"2:{p}" for p in EPOCH_END} | {"0:config.yaml:tmp", "1:last.pt.sha256:before",
                                                           "1:last.pt"}
    for at, case in kills.items():
        run, resumed = Path(case["dir"]), case["resumed"]
        assert case["faulted"]["status"] == -signal.SIGKILL, (at, case["faulted"])
        if at == "0:config.yaml:tmp":  # no config.yaml yet: --resume says so; the same command starts anew
            assert resumed["status"] == 2 and f"no {run / 'config.yaml'}" in resumed["stderr"], resumed
            assert [f for f in case["files"] if not is_run_temporary(f)] == ["run.lock"], case["files"]
            resumed = resumed["restarted"]
        assert resumed["status"] == 0 and resumed["stderr"] == "", (at, resumed)
        out = resumed["stdout"]
        point = EPOCH_END.index(at[2:]) if at.startswith("2:") else None
        if point is not None:  # the newest verifiable state: epoch 1 before last.pt is renamed, epoch 2 after
            kept = 2 if point >= COMMITTED else 1
            assert case["after"]["last.pt"] == kept, (at, case["after"])  # strictly verified, sidecar and all
            assert ("epochs 2..2" in out) == (point < COMMITTED), (at, out)
            assert ("nothing to do" in out) == (point >= COMMITTED), (at, out)
            two = EPOCH_END.index("last.pt.sha256:before") <= point <= EPOCH_END.index("last.pt.sha256:tmp")
            assert (f"last.pt.sha256 rewritten (epoch {kept}): it lists 2 digests" in out) == two, (at, out)
            rebuilt = COMMITTED <= point <= EPOCH_END.index("best.pt:tmp")
            assert ("best.pt rebuilt from last.pt (epoch 2, the best test accuracy; best.pt was at epoch 1)"
                    in out) == rebuilt, (at, out)
            assert ("best.pt.sha256 rewritten (epoch 2): it lists 2 digests" in out) == (
                at in ("2:best.pt", "2:best.pt.sha256:tmp")), (at, out)
        elif at == "1:last.pt.sha256:before":  # started, never checkpointed: --resume starts it over
            assert f"starting {run} over from epoch 1: it was started but never wrote a checkpoint (removed " \
                   f"config.yaml, events.out.tfevents." in out and "last.pt.sha256, metrics.jsonl, model.txt)" in out
        elif at == "1:last.pt":  # the first last.pt is committed, best.pt not written yet
            assert case["after"]["last.pt"] == 1
            assert "best.pt rebuilt from last.pt (epoch 1, the best test accuracy; best.pt was missing)" in out, out
        _assert_same_as_reference(run, ref)
    # killed during epoch 1's end, then the same command again: the run is started over (its old metrics and event
    # files removed), not merged with the killed one
    (rerun,) = [c for c in faults["cases"] if c.get("rerun")]
    run, out = Path(rerun["dir"]), rerun["resumed"]["stdout"]
    assert rerun["faulted"]["status"] == -signal.SIGKILL and rerun["resumed"]["status"] == 0, rerun["resumed"]
    assert f"starting {run} over from epoch 1: it was started but never wrote a checkpoint (removed config.yaml, " \
           f"events.out.tfevents." in out and "metrics.jsonl, model.txt)" in out, out
    _assert_same_as_reference(run, ref)


def _error_line(err):
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_a_full_disk_while_writing_a_checkpoint_is_one_error_line_and_keeps_the_last_good_one(faults):
    """Issue 18: OSError ENOSPC (injected) while writing last.pt or its sidecar: exit 2, one ``error:`` line naming the
    file and the checkpoint kept, no temporary left; --resume then ends as the uninterrupted run."""
    ref = Path(faults["reference"]["dir"])
    cases = {c["at"]: c for c in faults["cases"] if c["action"] == "enospc"}
    for at, kept in (("2:last.pt:tmp", 1), ("2:last.pt.sha256:tmp", 2)):
        case = cases[at]
        run = Path(case["dir"])
        assert case["faulted"]["status"] == 2
        name = at[2:-4]
        assert _error_line(case["faulted"]["stderr"]) == (
            f"error: cannot write {run / name} (No space left on device); {run / 'last.pt'} (epoch {kept}) is kept; "
            f"make room, then continue with --resume {run} (its logs are brought in line with last.pt)")
        assert not [f for f in case["files"] if is_run_temporary(f)]
        assert case["after"]["last.pt"] == kept and case["after"]["best.pt"] == 1  # strictly verified
        assert case["resumed"]["status"] == 0, case["resumed"]
        _assert_same_as_reference(run, ref, tensorboard=False)


@pytest.mark.parametrize("action, at, status, word", [("sigterm", "2:last.pt:tmp", 143, "terminated"),
                                                      ("sigint", "2:best.pt:tmp", 130, "interrupted")])
def test_sigterm_and_ctrl_c_during_the_epoch_end_wait_until_logs_and_checkpoints_are_whole(faults, action, at,
                                                                                          status, word):
    """Issue 18: SIGTERM (exit 143) and SIGINT (exit 130) arriving while a checkpoint is written are held back until
    the epoch's metrics line, TensorBoard scalars, last.pt, best.pt and sidecars are all written."""
    ref = Path(faults["reference"]["dir"])
    (case,) = [c for c in faults["cases"] if c["action"] == action]
    run = Path(case["dir"])
    assert case["faulted"]["status"] == status
    assert case["faulted"]["stderr"] == (f"{word}: {run / 'last.pt'} kept; continue with: python train_coupled.py "
                                         f"--resume {run}\n")
    assert case["after"] == {"last.pt": 2, "last.pt recovered": 2, "best.pt": 2, "best.pt recovered": 2,
                             "metrics lines": 2}
    assert "nothing to do" in case["resumed"]["stdout"]
    _assert_same_as_reference(run, ref)  # the TensorBoard scalars of epoch 2 are those the interrupted run wrote


# ----------------------------------------------------------------------------- issue 18: out_dir safety

def _listing(d):
    return {p.name: (p.readlink() if p.is_symlink() else p.read_bytes()) for p in d.iterdir()} if d.exists() else None


def test_out_dir_links_foreign_files_and_empty_names_are_refused_and_leave_nothing_behind(one_epoch_run, tmp_path,
                                                                                         capsys):
    """Issue 18 D2/D3: never a link for run.lock or a file the run writes, no directory holding files a run writes
    but no run (a job's own log file beside is fine), no empty out_dir, no silent merge with a run that never
    wrote a checkpoint (it is started over); every refusal is exit 2 with one ``error:`` line, and the directory
    is left exactly as it was (a start that fails creates nothing)."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    link_lock = tmp_path / "link_lock"
    link_lock.mkdir()
    (link_lock / "run.lock").symlink_to(victim)
    link_metrics = tmp_path / "link_metrics"
    link_metrics.mkdir()
    (link_metrics / "metrics.jsonl").symlink_to(victim)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name, text in (("config.yaml", "# mine\n"), ("metrics.jsonl", "{}\n"), ("model.txt", "mine"),
                       (".x.tmp", "mine"), (".last.pt.abcd1234.tmp", "looks like ours, is not a run")):
        (foreign / name).write_text(text)
    started = tmp_path / "started"  # Ctrl-C before the first checkpoint
    started.mkdir()
    for name in ("run.lock", "config.yaml", "metrics.jsonl", "events.out.tfevents.1.host.1.0"):
        (started / name).write_text("x")
    resumed_link = _copy(one_epoch_run, tmp_path, "resumed_link")
    (resumed_link / "last.pt").rename(tmp_path / "elsewhere.pt")
    (resumed_link / "last.pt").symlink_to(tmp_path / "elsewhere.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with_log = tmp_path / "with_log"  # e.g. python train_coupled.py ... out_dir=D > D/train.log: allowed
    with_log.mkdir()
    (with_log / "train.log").write_text("a job's own log\n")
    no_data = ["data.name=cifar10", f"data.root={tmp_path / 'nodata'}", "data.download=false"]
    cases = [
        ("out_dir=", None, ["out_dir is empty"]),
        (f"out_dir={link_lock}", link_lock, [f"{link_lock / 'run.lock'} is a symbolic link"]),
        (f"out_dir={link_metrics}", link_metrics, [f"{link_metrics / 'metrics.jsonl'} is a symbolic link"]),
        (f"out_dir={foreign}", foreign, [f"out_dir {foreign} holds files a run writes (.last.pt.abcd1234.tmp, "
                                         f"config.yaml, metrics.jsonl, model.txt) but no run"]),
        (f"out_dir={tmp_path / 'new' / 'deeper' / 'run'}", tmp_path / "new", ["cifar10 data not found"]),
        (f"out_dir={empty}", empty, ["cifar10 data not found"]),
        (f"out_dir={with_log}", with_log, ["cifar10 data not found"]),  # got as far as the data
    ]
    for override, where, words in cases:
        before = _listing(where) if where is not None else None
        status = main([*TINY, *no_data, override])
        err = _one_error_line(capsys.readouterr().err)
        assert status == 2, (override, err)
        for w in words:
            assert w in err, (w, err)
        if where is not None:
            assert _listing(where) == before, override  # no run.lock, no directory, nothing deleted
    assert victim.read_bytes() == b"precious\n"
    # a run started but never checkpointed is started over by the same command, but only once the new run is
    # built: a start that fails before (here: no data) removes none of the old run's files
    before = _listing(started)
    assert main([*TINY, *no_data, f"out_dir={started}"]) == 2
    assert "cifar10 data not found" in _one_error_line(capsys.readouterr().err)
    assert {k: v for k, v in _listing(started).items() if k != "run.lock"} == \
        {k: v for k, v in before.items() if k != "run.lock"}
    before = _listing(resumed_link)
    assert main(["--resume", str(resumed_link)]) == 2
    assert f"{resumed_link / 'last.pt'} is a symbolic link" in _one_error_line(capsys.readouterr().err)
    assert _listing(resumed_link) == before


# ----------------------------------------------------------------------------- issue 18: H1 and SIGTERM

def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _last_epoch(run):
    from anodev2.training.run_files import CheckpointError, recover_checkpoint
    try:
        return recover_checkpoint(run / "last.pt")[0]["epoch"]
    except CheckpointError:
        return 0


def test_workers_of_a_killed_run_do_not_hold_its_lock_and_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    """Issue 18 H1: kill -9 of a run with DataLoader workers (data.workers=1) while its workers live on; the lock is
    free at once and a resume right away runs. SIGTERM (a batch scheduler's stop) then ends that resumed run with
    exit 143 and the resume command, every checkpointed epoch with its metrics line."""
    run = tmp_path / "run"
    args = [*TINY, "train.epochs=60", "data.subset_train=16", "data.subset_test=8", "log.tensorboard=false",
            "data.workers=1"]
    kw = dict(cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cmd = [sys.executable, str(REPO / "train_coupled.py")]
    # no pipes for the killed run: its stopped worker would hold them open
    proc = subprocess.Popen([*cmd, *args, f"out_dir={run}"], cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while _last_epoch(run) < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert workers, "no DataLoader worker process found"
        for w in workers:  # a worker notices its parent's death after up to 5 s, or at once when reading its
            os.kill(w, signal.SIGSTOP)  # queue: stopped, it surely outlives the kill with all its descriptors
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        RunLock(run).acquire().release()  # the lock is free at once ...
        assert time.monotonic() - t0 < 1.0
        assert all(_alive(w) for w in workers)  # ... though the killed run's workers still exist
        epoch = _last_epoch(run)
        resumed = subprocess.Popen([*cmd, "--resume", str(run)], **kw)
        while _last_epoch(run) <= epoch and time.monotonic() < deadline and resumed.poll() is None:
            time.sleep(0.05)
        resumed.send_signal(signal.SIGTERM)
        out, err = resumed.communicate(timeout=60)
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    assert resumed.returncode == 143, out + err
    ours = f"terminated: {run / 'last.pt'} kept; continue with: python train_coupled.py --resume {run}\n"
    assert err.count(ours) == 1, err
    # Known, left: a DataLoader worker whose fd hand-over to the terminated main process is cut off can print
    # multiprocessing's resource_sharer traceback (seen once on a machine at load > 6); nothing else may appear.
    rest = err.replace(ours, "")
    assert rest == "" or ("multiprocessing/resource_sharer.py" in rest
                          and rest.rstrip().splitlines()[-1].startswith("ConnectionResetError")), err
    last = load_checkpoint(run / "last.pt")  # whole, sidecar included
    assert epoch < last["epoch"] < 60 and [r["epoch"] for r in metrics(run)] == list(range(1, last["epoch"] + 1))
    assert not [p.name for p in run.iterdir() if is_run_temporary(p.name)]


def test_reconcile_rebuilds_or_names_a_best_pt_that_does_not_match_the_history(tmp_path):
    """The cases the kill test cannot produce: a damaged best.pt of last.pt's epoch is rebuilt from last.pt; one of an
    older epoch that is missing is named in a warning (the run goes on) and nothing is invented."""
    from anodev2.training.run_files import atomic_save
    from anodev2.training.trainer import reconcile
    history = [{"epoch": 1, "best": True}, {"epoch": 2}, {"epoch": 3, "best": True}]
    atomic_save({"epoch": 3, "history": history}, tmp_path / "last.pt")
    atomic_save({"epoch": 1, "history": history[:1]}, tmp_path / "best.pt")
    data = bytearray((tmp_path / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "best.pt").write_bytes(bytes(data))
    (note,) = reconcile(tmp_path, load_checkpoint(tmp_path / "last.pt"))
    assert note.startswith("best.pt rebuilt from last.pt (epoch 3, the best test accuracy; best.pt was "
                           "unverifiable ("), note
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3
    history[2].pop("best")  # now epoch 1 is the best, and best.pt is gone
    atomic_save({"epoch": 3, "history": history}, tmp_path / "last.pt")
    (tmp_path / "best.pt").unlink()
    assert reconcile(tmp_path, load_checkpoint(tmp_path / "last.pt")) == [
        f"warning: {tmp_path / 'best.pt'} should hold epoch 1 (the best test accuracy in metrics.jsonl) but is "
        f"missing; it is rewritten at the next epoch that beats epoch 1"]
    assert not (tmp_path / "best.pt").exists()


def test_sigterm_while_the_config_is_read_gets_the_one_line_and_143(monkeypatch, capsys):
    """A SIGTERM that arrives before training starts (here: while the config is resolved) is handled
    like one during training: one line, exit 143, no traceback."""
    import os
    import signal

    from anodev2.training import cli

    def slow_resolve(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
        raise AssertionError("SIGTERM was not delivered")

    monkeypatch.setattr(cli, "resolve_config", slow_resolve)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["--config", "smoke"]) == 143
    err = capsys.readouterr().err
    assert err.strip() == "terminated: no checkpoint was written yet", err
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_sigterm_while_torch_is_imported_gets_the_one_line_and_143(tmp_path):
    """Before the CLI is imported (torch's import takes seconds), the entry point's own handler answers."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO

    proc = subprocess.Popen([sys.executable, str(REPO / "train_coupled.py"), "--config", "smoke",
                             f"out_dir={tmp_path / 'run'}", "data.name=synthetic"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    time.sleep(1.0)  # past the handler (the script's first lines); torch's import takes longer than this
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "Traceback" not in err and err.strip().startswith("terminated:"), err
