"""Run-directory files: checksummed checkpoints, stale sidecars, the run lock (links, forked children), stale
temporaries, deferred signals; plain progress lines."""
import io
import os
import signal
import time

import pytest
import torch
from helpers import hold_run_lock

from anodev2.training.progress import Progress
from anodev2.training.run_files import (CheckpointError, RunDirError, RunLock, RunLockedError, Terminated,
                                        atomic_save, checksum_path, deferred_interrupt, load_checkpoint,
                                        recover_checkpoint, remove_stale_temporaries)


def test_sidecar_holds_sha256_and_detects_a_flipped_byte_inside_tensor_data(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.arange(4096, dtype=torch.float32)}, path)
    assert checksum_path(path).read_text().split()[1] == "last.pt"
    data = bytearray(path.read_bytes())
    i = data.find(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[4000:4016])
    assert i > 0
    data[i] ^= 0x40  # a flipped bit inside the tensor: weights_only loading does not notice
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["w"].shape == (4096,)
    with pytest.raises(CheckpointError, match=r"last.pt does not match its SHA-256 in .*last.pt.sha256"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "does not match its SHA-256"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: checksum_path(p).unlink(), "cannot read its checksum file"),
])
def test_damaged_checkpoints_raise_one_clear_error(tmp_path, damage, message):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.ones(3)}, path)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_and_non_dict_files_with_matching_checksums_are_rejected(tmp_path):
    atomic_save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pt")
    atomic_save({"w": torch.ones(3)}, tmp_path / "t.pt")
    (tmp_path / "t.pt").write_bytes((tmp_path / "t.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(tmp_path / "t.pt", verify=False)


def test_lock_names_the_live_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    proc = hold_run_lock(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by process {proc.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "run.lock").exists()  # the stale file stays ...
    with RunLock(tmp_path) as lock:  # ... and does not block
        assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError):
            RunLock(tmp_path).acquire()  # exclusive within one process too
    RunLock(tmp_path).acquire().release()


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    own = [".last.pt.abcd_123.tmp", ".metrics.jsonl.x9y8z7w6.tmp", ".best.pt.sha256.00000000.tmp"]
    foreign = [".notes.abcd_123.tmp", ".last.pt.short.tmp", ".last.pt.ABCD1234.tmp", ".x.tmp", "keep.tmp", "last.pt"]
    for name in own + foreign:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(own)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(foreign)


class _Killed(BaseException):
    pass


def _kill_at(point):
    def hook(name):
        if name == point:
            raise _Killed(name)
    return hook


@pytest.mark.parametrize("point, epoch", [("last.pt.sha256:before:tmp", 1), ("last.pt.sha256:before", 1),
                                          ("last.pt:tmp", 1), ("last.pt", 2), ("last.pt.sha256:tmp", 2)])
def test_a_checkpoint_and_its_sidecar_verify_after_a_kill_at_any_point_of_their_writing(tmp_path, monkeypatch,
                                                                                         point, epoch):
    """D1: the sidecar lists the new and the old digest while the file is replaced (a kill between the file and its
    sidecar used to leave a whole file called corrupt); a flipped bit is still caught."""
    from anodev2.training import run_files
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.zeros(4096)}, path)
    monkeypatch.setattr(run_files, "fault_hook", _kill_at(point))
    with pytest.raises(_Killed):
        atomic_save({"epoch": 2, "w": torch.ones(4096)}, path)
    monkeypatch.setattr(run_files, "fault_hook", None)
    assert load_checkpoint(path)["epoch"] == epoch  # strictly verified
    ck, data, problem = recover_checkpoint(path)
    assert ck["epoch"] == epoch and data == path.read_bytes()
    listed = len(checksum_path(path).read_text().splitlines())
    assert listed == (1 if point == "last.pt.sha256:before:tmp" else 2)
    assert (problem is None) == (listed == 1)
    data = bytearray(data)
    data[data.find(torch.full((4096,), float(epoch - 1)).numpy().tobytes()[:64]) + 1000] ^= 0x04
    path.write_bytes(bytes(data))  # a flipped bit inside the tensor data: in neither digest
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        recover_checkpoint(path)


def test_a_checkpoint_without_a_sidecar_is_accepted_only_when_whole_by_its_crc32s(tmp_path):
    """An older version killed between a first checkpoint and its sidecar: the zip members' CRC-32s decide."""
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.ones(4096)}, path)
    checksum_path(path).unlink()
    with pytest.raises(CheckpointError, match="cannot read its checksum file"):
        load_checkpoint(path)  # strict loading refuses it ...
    ck, _, problem = recover_checkpoint(path)  # ... a resume accepts it and rewrites the sidecar
    assert ck["epoch"] == 1 and problem.endswith("last.pt is whole by its CRC-32s")
    data = bytearray(path.read_bytes())
    data[data.find(torch.ones(4096).numpy().tobytes()[:64]) + 1000] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"cannot read its checksum file .*, and the file is damaged "
                                              r"\(member .*/data/0 does not match its CRC-32\)"):
        recover_checkpoint(path)
    path.write_bytes(bytes(data)[:5000])
    with pytest.raises(CheckpointError, match="the file is damaged \\(not a whole zip archive"):
        recover_checkpoint(path)


def test_the_lock_never_follows_a_link(tmp_path):
    """D2: run.lock as a link to a file (or a dangling one) is refused; the target is not touched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").symlink_to(victim)
    with pytest.raises(RunDirError, match=f"{run / 'run.lock'} is a symbolic link"):
        RunLock(run).acquire()
    assert victim.read_text() == "precious\n"
    (run / "run.lock").unlink()
    (run / "run.lock").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match="is a symbolic link"):
        RunLock(run).acquire()
    assert not (tmp_path / "nowhere").exists()


def test_a_forked_child_does_not_hold_the_lock(tmp_path):
    """H1: flock belongs to the open file description, which fork shares; the child closes its copy at once."""
    lock = RunLock(tmp_path).acquire()
    assert lock.created
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a DataLoader worker, say: outlives its parent for a while
        os.write(w, b"up")  # (the fork hook has run by now)
        time.sleep(3)
        os._exit(0)
    try:
        assert os.read(r, 2) == b"up"
        lock.release()  # the holder goes away (as if killed), the child lives on
        t0 = time.monotonic()
        again = RunLock(tmp_path).acquire()  # no waiting for the child
        assert time.monotonic() - t0 < 1.0 and not again.created
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the child is still alive
        again.remove()  # a failed start removes the lock file it created (not this one: still fine)
        assert not (tmp_path / "run.lock").exists()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _lines(total, seconds_per_step, interval):
    clock, out = _Clock(), io.StringIO()
    bar = Progress("epoch 1/3 train", total, interval=interval, stream=out, tty=False, clock=clock)
    for _ in range(total):
        clock.t += seconds_per_step
        bar.update(8, 2.5)
    bar.close()
    return out.getvalue().splitlines()


def test_plain_progress_lines_every_tenth_and_at_the_interval():
    lines = _lines(total=50, seconds_per_step=0.01, interval=30.0)  # fast pass: one line per 10 %
    steps = [int(line.split()[3].split("/")[0]) for line in lines]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert lines[1] == "epoch 1/3 train 10/50 (20%) loss 2.5000 800 img/s elapsed 0:00:00 ETA 0:00:00"
    slow = _lines(total=1000, seconds_per_step=1.0, interval=30.0)  # slow pass: at most 30 s apart
    steps = [int(line.split()[3].split("/")[0]) for line in slow]
    assert max(b - a for a, b in zip([0] + steps, steps)) <= 30 and steps[-1] == 1000
    assert "ETA 0:16:10" in slow[0] and "8 img/s" in slow[0]


def test_progress_rejects_bad_arguments_and_is_silent_when_disabled():
    with pytest.raises(ValueError, match="interval=0 is not allowed; allowed: > 0 seconds"):
        Progress("x", 3, interval=0)
    out = io.StringIO()
    bar = Progress("x", 3, enabled=False, stream=out, tty=False)
    bar.update(1, 1.0)
    assert out.getvalue() == "" and bar.mean_loss == 1.0


@pytest.mark.parametrize("sig, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_ctrl_c_and_sigterm_during_a_checkpoint_write_wait_for_the_whole_file_and_sidecar(tmp_path, sig, raised):
    path = tmp_path / "last.pt"
    with pytest.raises(raised) as e:
        with deferred_interrupt():
            os.kill(os.getpid(), sig)  # arrives "during" the write
            atomic_save({"w": torch.ones(3)}, path)
    assert isinstance(e.value, Terminated) == (sig == signal.SIGTERM)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


def test_an_ignored_sigint_stays_ignored_during_a_deferred_write(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job (nohup ... &)
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            atomic_save({"w": torch.ones(3)}, tmp_path / "last.pt")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # and no KeyboardInterrupt was raised
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_terminal_gets_a_tqdm_bar_instead_of_plain_lines(capsys):
    out = io.StringIO()
    bar = Progress("epoch 1/1 train", 4, interval=30.0, stream=out, tty=True)
    for _ in range(4):
        bar.update(2, 1.0)
    bar.close()
    assert out.getvalue() == ""  # no plain lines
    assert "epoch 1/1 train" in capsys.readouterr().err  # tqdm draws on stderr
