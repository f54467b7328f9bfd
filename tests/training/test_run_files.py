"""Run-directory files: checksummed checkpoints, the run lock, stale temporaries; plain progress lines."""
import io
import os
import signal

import pytest
import torch
from helpers import hold_run_lock

from anodev2.training.progress import Progress
from anodev2.training.run_files import (CheckpointError, RunLock, RunLockedError, atomic_save, checksum_path,
                                        deferred_interrupt,
                                        load_checkpoint, remove_stale_temporaries)


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


def test_stale_temporaries_are_removed(tmp_path):
    for name in (".last.pt.abc.tmp", ".metrics.jsonl.x.tmp", "last.pt", "keep.tmp"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".last.pt.abc.tmp", ".metrics.jsonl.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp", "last.pt"]


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


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_whole_file_and_sidecar(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)  # arrives "during" the write
            atomic_save({"w": torch.ones(3)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


def test_a_terminal_gets_a_tqdm_bar_instead_of_plain_lines(capsys):
    out = io.StringIO()
    bar = Progress("epoch 1/1 train", 4, interval=30.0, stream=out, tty=True)
    for _ in range(4):
        bar.update(2, 1.0)
    bar.close()
    assert out.getvalue() == ""  # no plain lines
    assert "epoch 1/1 train" in capsys.readouterr().err  # tqdm draws on stderr
