"""What a researcher leaving a run overnight relies on (issue 11, items 2-6), through the real command line.

Run lock (exit 2 naming the PID; stale locks do not block), the divergence guard before every
checkpoint (exit 1, last.pt untouched, strict JSON), bad data / checkpoint / out_dir files (one
``error:`` line, exit 2, nothing changed), SHA-256 verification on resume, Ctrl-C (exit 130),
stale temporaries, absolute data roots, overrides after options, torchrun with a bad key.
"""
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from helpers import REPO, TINY, cli_env, hold_run_lock, metrics, run_cli

from anodev2.training.cli import main
from anodev2.training.config import load_config
from anodev2.training.run_files import checksum_path, load_checkpoint


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
    (run / ".last.pt.killed.tmp").write_bytes(b"half a checkpoint")  # left by a writer killed earlier
    holder = hold_run_lock(run)
    # a resume and a second launch, in this process (the CLI's code path without a torch start-up;
    # train_coupled.py exits with main's status)
    try:
        assert main(["--resume", str(run), "train.epochs=1"]) == 2
        err = _one_error_line(capsys.readouterr().err)
        assert f"in use by process {holder.pid} " in err and str(run / "run.lock") in err, err
        assert main([*TINY, f"out_dir={run}"]) == 2
        assert f"in use by process {holder.pid} " in _one_error_line(capsys.readouterr().err)
        assert (run / ".last.pt.killed.tmp").exists()  # nothing touched while another process owns the dir
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the stale lock file does not block; resuming from another directory needs no data.root
    # because config.yaml stores the absolute data root
    assert load_config(str(run / "config.yaml")).data.root == str((REPO / "data").resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["--resume", str(run), "train.epochs=1"]) == 0
    assert "nothing to do" in capsys.readouterr().out and (run / "run.lock").exists()
    assert not list(run.glob(".*.tmp"))  # stale temporaries are removed once the lock is held


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
