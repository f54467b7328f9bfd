"""The files of a run directory: atomic checksummed checkpoints, the run lock, RNG state capture.

A checkpoint holds only tensors, dicts, lists, numbers, strings and None, so
``torch.load(path, weights_only=True)`` reads it. Files are written to a
temporary file ``.NAME.*.tmp`` in the same directory, fsync'ed, then ``os.replace``'d
over the target: a killed process leaves either the old or the new file, never a broken
one. Each checkpoint ``X.pt`` has a sidecar ``X.pt.sha256`` (SHA-256 of its bytes, written
atomically right after it) that :func:`load_checkpoint` verifies, so flipped bytes inside
tensor data (which ``weights_only`` loading does not notice) are caught.

:class:`RunLock` holds an exclusive ``fcntl.flock`` on ``RUN_DIR/run.lock`` (holding the
PID) for the life of a run; the kernel drops it when the process dies, so a stale lock file
left by a killed run never blocks a resume.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import random
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

__all__ = ["atomic_save", "load_checkpoint", "rng_state", "set_rng_state", "atomic_write_text",
           "CheckpointError", "RunLock", "RunLockedError", "checksum_path", "remove_stale_temporaries",
           "LOCK_NAME", "deferred_interrupt"]

LOCK_NAME = "run.lock"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (unreadable, truncated, not a dict, checksum mismatch)."""


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock; ``pid`` is its process id (or None)."""

    def __init__(self, run_dir: Path, pid: Optional[int]):
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{run_dir} is in use by {who} (lock {Path(run_dir) / LOCK_NAME}); "
                         f"wait for it to finish or stop it, or choose another out_dir=DIR")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    _fsync_dir(path.parent)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block is done, then raise KeyboardInterrupt.

    Wraps the writes of a checkpoint and its sidecar, so an interrupt never leaves them
    disagreeing or a temporary file behind. A no-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def checksum_path(path: os.PathLike) -> Path:
    """The SHA-256 sidecar of checkpoint ``path``: ``path`` + ``.sha256``."""
    return Path(f"{path}.sha256")


def atomic_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically, then its SHA-256 sidecar (each via temp file + fsync + os.replace)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    _atomic(path, lambda f: f.write(data))
    atomic_write_text(f"{hashlib.sha256(data).hexdigest()}  {Path(path).name}\n", checksum_path(path))


def atomic_write_text(text: str, path: os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic(path, lambda f: f.write(text.encode()))


def _verify_checksum(path: Path, data: bytes) -> None:
    side = checksum_path(path)
    try:
        expected = side.read_text().split()[0]
    except (OSError, IndexError) as e:
        why = e.strerror if isinstance(e, OSError) else "empty file"
        raise CheckpointError(f"{path}: cannot read its checksum file {side} ({why})") from None
    if hashlib.sha256(data).hexdigest() != expected.lower():  # sha256sum writes lower case; upper case is the same hash
        raise CheckpointError(f"{path} does not match its SHA-256 in {side} (the file is corrupt)")


def load_checkpoint(path: os.PathLike, map_location="cpu", verify: bool = True) -> dict:
    """Verify ``path`` against its SHA-256 sidecar (when ``verify``) and ``torch.load(..., weights_only=True)`` it.

    Raises :class:`CheckpointError` (one-line message) for a missing, unreadable, truncated,
    corrupt or non-dict checkpoint.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if not data:
        raise CheckpointError(f"{path} is empty")
    if verify:
        _verify_checksum(path, data)
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, unsupported type: all mean "not a usable checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def remove_stale_temporaries(run_dir: os.PathLike) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files that killed writers left in ``run_dir``; call only while holding its lock."""
    removed = []
    for p in Path(run_dir).glob(".*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


class RunLock:
    """Exclusive lock on a run directory for the life of a run (context manager).

    ``acquire()`` creates ``run_dir/run.lock``, takes a non-blocking ``fcntl.flock`` and writes
    this PID into it; raises :class:`RunLockedError` naming the holder's PID when another live
    process has it. The kernel releases the lock when its holder dies (even by SIGKILL).
    """

    def __init__(self, run_dir: os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(self.run_dir, self._holder()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _holder(self) -> Optional[int]:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock; the file stays (harmless)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def rng_state() -> dict:
    """The python, numpy, torch and CUDA generator states as tensors, lists and numbers."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
