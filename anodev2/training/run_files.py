"""The files of a run directory: atomic checksummed checkpoints, the run lock, signals, RNG state capture.

A checkpoint holds only tensors, dicts, lists, numbers, strings and None, so
``torch.load(path, weights_only=True)`` reads it. Every file a run writes goes to a
temporary file ``.NAME.XXXXXXXX.tmp`` (created with ``O_EXCL``, so never through a link) in
the same directory, is fsync'ed, then ``os.replace``'d over the target (which replaces a link
instead of following it): a killed process leaves either the old or the new file, never a
broken one. Each checkpoint ``X.pt`` has a sidecar ``X.pt.sha256`` (``sha256sum`` format,
written atomically right after it) that :func:`load_checkpoint` verifies, so flipped bytes
inside tensor data (which ``weights_only`` loading does not notice) are caught.

A checkpoint and its sidecar verify together after a kill (or a full disk) at any point of their
writing: :func:`atomic_write_bytes` first lists both the new and the old digest in the sidecar,
then replaces the file, then leaves the new digest alone. :func:`recover_checkpoint` (what a
resume reads) tidies a sidecar left with two digests, and accepts a file without a sidecar
(an older version killed before writing it) when every zip member matches its CRC-32.

:class:`RunLock` holds an exclusive ``fcntl.flock`` on ``RUN_DIR/run.lock`` (holding the
PID) for the life of a run; the kernel drops it when the process dies, so a stale lock file
left by a killed run never blocks a resume. The lock file is opened with ``O_NOFOLLOW``
(a link is refused), and a process forked from the holder (a DataLoader worker) closes its
copy of the descriptor at once, so only the holder itself holds the lock.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import random
import re
import signal
import stat
import tempfile
import threading
import weakref
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

__all__ = ["atomic_save", "atomic_write_bytes", "load_checkpoint", "recover_checkpoint", "write_checksum",
           "rng_state", "set_rng_state", "atomic_write_text", "CheckpointError", "RunLock", "RunLockedError",
           "RunDirError", "Terminated", "checksum_path", "remove_stale_temporaries", "LOCK_NAME", "RUN_FILES",
           "deferred_interrupt", "sigterm_raises", "serialize", "fault_hook"]

LOCK_NAME = "run.lock"
#: every file a run writes into its directory, besides TensorBoard's event files
RUN_FILES = (LOCK_NAME, "last.pt", "last.pt.sha256", "best.pt", "best.pt.sha256", "metrics.jsonl",
             "config.yaml", "model.txt")
#: the temporaries of :func:`_atomic`: ``.NAME.`` + tempfile's 8 random characters + ``.tmp``
_TEMPORARY = re.compile(r"\.(%s)\.[a-z0-9_]{8}\.tmp" % "|".join(re.escape(n) for n in RUN_FILES))

#: Test hook for fault injection (kill / disk-full tests): when set, called with the name of each
#: point of a run's file writes: ``NAME:tmp`` (temporary whole and fsync'ed, not yet renamed),
#: ``NAME`` (renamed over the target) for every atomic write, and the trainer's epoch-end points.
fault_hook: Optional[Callable[[str], None]] = None


def _fault(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (unreadable, truncated, not a dict, checksum mismatch)."""


class RunDirError(ValueError):
    """A run directory that cannot be used safely (e.g. a symbolic link where the run writes a file)."""


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock; ``pid`` is its process id (or None)."""

    def __init__(self, run_dir: Path, pid: Optional[int]):
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{run_dir} is in use by {who} (lock {Path(run_dir) / LOCK_NAME}); "
                         f"wait for it to finish or stop it, or choose another out_dir=DIR")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what batch schedulers send before killing a job), raised like Ctrl-C's KeyboardInterrupt."""


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


def _atomic(path: os.PathLike, write, point: Optional[str] = None) -> None:
    """Write ``path`` via temporary + fsync + rename. An OSError (e.g. ENOSPC) names ``path``; the
    temporary is removed and the old ``path`` is left as it was. ``point``: the fault-point name (``path``'s name)."""
    path = Path(path)
    point = point or path.name
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _fault(f"{point}:tmp")
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    _fsync_dir(path.parent)
    _fault(point)


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) and SIGTERM until the block is done, then raise KeyboardInterrupt
    (:class:`Terminated` for SIGTERM).

    Wraps a run's epoch-end writes (logs, checkpoints, sidecars), so an interrupt never leaves
    them disagreeing or a temporary file behind. A signal that is ignored (``SIG_IGN``, e.g. SIGINT
    of a background job) stays ignored. A no-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, previous = [], {}
    for sig in _DEFERRED:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise Terminated() if caught[0] == signal.SIGTERM else KeyboardInterrupt()


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Terminated` (unless it is ignored); the previous handler
    is restored afterwards. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def checksum_path(path: os.PathLike) -> Path:
    """The SHA-256 sidecar of checkpoint ``path``: ``path`` + ``.sha256``."""
    return Path(f"{path}.sha256")


def serialize(obj: Any) -> bytes:
    """The bytes ``torch.save`` writes for ``obj``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _sidecar_text(path: Path, digests: list[str]) -> str:
    return "".join(f"{d}  {path.name}\n" for d in digests)


def _sidecar_digests(path: Path) -> Optional[list[str]]:
    """The SHA-256 digests listed in the sidecar of ``path`` (lower case), None when there is no readable one."""
    side = checksum_path(path)
    if side.is_symlink():
        return None
    try:
        lines = side.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    digests = [line.split()[0].lower() for line in lines if line.split()]
    return digests or None


def write_checksum(path: os.PathLike, data: bytes) -> None:
    """Write the SHA-256 sidecar of checkpoint ``path`` holding ``data`` (atomically)."""
    path = Path(path)
    atomic_write_text(_sidecar_text(path, [hashlib.sha256(data).hexdigest()]), checksum_path(path))


def atomic_write_bytes(data: bytes, path: os.PathLike, on_replaced: Optional[Callable[[], None]] = None) -> None:
    """Checkpoint bytes ``data`` to ``path`` atomically with its SHA-256 sidecar, so that the pair verifies after a
    kill at any point: the sidecar first lists the new digest and the old file's (``NAME.sha256:before``), then
    the file is replaced (``on_replaced`` is called), then the sidecar is left with the new digest alone."""
    path = Path(path)
    new = hashlib.sha256(data).hexdigest()
    old = (_sidecar_digests(path) or [])[:1] if path.exists() else []
    both = [new] + [d for d in old if d != new]
    atomic_write_text(_sidecar_text(path, both), checksum_path(path), point=f"{checksum_path(path).name}:before")
    _atomic(path, lambda f: f.write(data))
    if on_replaced is not None:
        on_replaced()
    if len(both) > 1:
        write_checksum(path, data)


def atomic_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically, then its SHA-256 sidecar (each via temp file + fsync + os.replace)."""
    atomic_write_bytes(serialize(obj), path)


def atomic_write_text(text: str, path: os.PathLike, point: Optional[str] = None) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic(path, lambda f: f.write(text.encode()), point)


def _checksum_problem(path: Path, data: bytes) -> Optional[str]:
    """None when the SHA-256 of ``data`` is listed in the sidecar of ``path`` (hex in either case; a sidecar lists
    two digests while its checkpoint is being replaced), else what is wrong."""
    side = checksum_path(path)
    if side.is_symlink():
        return f"its checksum file {side} is a symbolic link"
    try:
        text = side.read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not text"
        return f"cannot read its checksum file {side} ({why})"
    digests = _sidecar_digests(path)
    if not digests:
        return f"cannot read its checksum file {side} (empty file)" if not text.strip() else \
            f"its checksum file {side} holds no digest"
    if hashlib.sha256(data).hexdigest() not in digests:
        return f"does not match its SHA-256 in {side}"
    return None


def _read(path: Path) -> bytes:
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link; a run's checkpoints are regular files")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if not data:
        raise CheckpointError(f"{path} is empty")
    return data


def _torch_load(path: Path, data: bytes, map_location) -> dict:
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, unsupported type: all mean "not a usable checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _internal_problem(data: bytes) -> Optional[str]:
    """None when ``data`` is a zip archive whose every member matches its CRC-32, else what is wrong."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            bad = z.testzip()
    except Exception as e:  # BadZipFile, a truncated member, a broken header
        return f"not a whole zip archive ({type(e).__name__})"
    return None if bad is None else f"member {bad} does not match its CRC-32"


def load_checkpoint(path: os.PathLike, map_location="cpu", verify: bool = True) -> dict:
    """Verify ``path`` against its SHA-256 sidecar (when ``verify``) and ``torch.load(..., weights_only=True)`` it.

    Raises :class:`CheckpointError` (one-line message) for a missing, unreadable, truncated,
    corrupt or non-dict checkpoint.
    """
    path = Path(path)
    data = _read(path)
    if verify:
        problem = _checksum_problem(path, data)
        if problem is not None:
            raise CheckpointError(f"{path} {problem}" if problem.startswith("does") else f"{path}: {problem}")
    return _torch_load(path, data, map_location)


def recover_checkpoint(path: os.PathLike, map_location="cpu") -> tuple[dict, bytes, Optional[str]]:
    """Load ``path`` verified by its sidecar, as a resume does after a kill.

    Returns ``(checkpoint, bytes, problem)``: ``problem`` is None when the sidecar lists exactly the
    file's digest, else what the caller should tidy: a sidecar that still lists two digests (a kill
    while the checkpoint was replaced, see :func:`atomic_write_bytes`), or a missing / unreadable
    sidecar (left by an older version of this code) of a file that is whole by its own CRC-32s (a
    checkpoint is a zip archive holding the CRC-32 of every member). Raises :class:`CheckpointError`
    when the file's digest is not in its sidecar or, without a sidecar, the file is damaged.
    """
    path = Path(path)
    data = _read(path)
    problem = _checksum_problem(path, data)
    if problem is None:
        digests = _sidecar_digests(path)
        stale = None if len(digests) == 1 else (f"it lists {len(digests)} digests (killed while {path.name} was "
                                                 f"replaced)")
        return _torch_load(path, data, map_location), data, stale
    if problem.startswith("does"):
        raise CheckpointError(f"{path} {problem}")
    inner = _internal_problem(data)
    if inner is not None:
        raise CheckpointError(f"{path}: {problem}, and the file is damaged ({inner})")
    return _torch_load(path, data, map_location), data, f"{problem}; {path.name} is whole by its CRC-32s"


def is_run_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary written by :func:`_atomic` for one of :data:`RUN_FILES`."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_stale_temporaries(run_dir: os.PathLike) -> list[Path]:
    """Delete the temporaries ``.NAME.XXXXXXXX.tmp`` of the run's own files (:data:`RUN_FILES`) that killed
    writers left in ``run_dir``; nothing else. Call only while holding its lock."""
    removed = []
    for p in Path(run_dir).iterdir():
        if is_run_temporary(p.name) and not p.is_dir():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


#: descriptors of run locks held by this process; a forked child closes its copies at once
_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _drop_inherited_locks() -> None:
    for lock in list(_HELD):
        lock._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """Exclusive lock on a run directory for the life of a run (context manager).

    ``acquire()`` opens (creating when absent) ``run_dir/run.lock`` with ``O_NOFOLLOW``, takes a
    non-blocking ``fcntl.flock`` and writes this PID into it; raises :class:`RunLockedError` naming
    the holder's PID when another live process has it, :class:`RunDirError` when ``run.lock`` is a
    link or not a regular file. The kernel releases the lock when its holder dies (even by
    SIGKILL). A flock belongs to the open file description, which ``fork`` shares: a forked child
    (a DataLoader worker) closes its copy at once (``os.register_at_fork``), so a worker that
    outlives a killed holder does not keep the lock. ``created`` says whether this acquire created
    the file; ``remove()`` deletes it (a failed start leaves nothing behind).
    """

    def __init__(self, run_dir: os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        self.created = False

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        for _ in range(10):
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
                self.created = True
                return fd
            except FileExistsError:
                pass
            try:
                fd = os.open(self.path, flags)
                self.created = False
                return fd
            except FileNotFoundError:  # removed in between by a failed start: try again
                continue
        raise RunDirError(f"{self.path} keeps appearing and disappearing; is another program using {self.run_dir}?")

    def acquire(self, write_pid: bool = True) -> "RunLock":
        """Take the lock (see the class); ``write_pid=False`` leaves an existing file's content for
        :meth:`write_pid` (a start that then refuses the directory changes nothing in it)."""
        while True:
            if self.path.is_symlink():
                raise RunDirError(f"{self.path} is a symbolic link; a run never writes through a link: "
                                  f"remove it, or choose another out_dir=DIR")
            try:
                fd = self._open()
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise RunDirError(f"{self.path} is a symbolic link; a run never writes through a link: "
                                      f"remove it, or choose another out_dir=DIR") from None
                raise
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise RunDirError(f"{self.path} is not a regular file; remove it, or choose another out_dir=DIR")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunLockedError(self.run_dir, self._holder()) from None
            try:  # the file may have been removed (a failed start) after we opened it: lock the current one
                now = os.stat(self.path, follow_symlinks=False)
                same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(self)
        if write_pid or self.created:
            self.write_pid()
        return self

    def write_pid(self) -> None:
        """Write this process's PID into the held lock file (what :class:`RunLockedError` names)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(self._fd)

    def _holder(self) -> Optional[int]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            return int(os.read(fd, 64).split()[0])
        except (OSError, ValueError, IndexError):
            return None
        finally:
            os.close(fd)

    def _forget_in_child(self) -> None:
        if self._fd is not None and self._pid != os.getpid():
            try:
                os.close(self._fd)  # this process's copy only; the holder keeps its lock
            except OSError:
                pass
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            if self._pid == os.getpid():
                os.close(self._fd)  # closing the descriptor drops the flock; the file stays (harmless)
            self._fd = None
            _HELD.discard(self)

    def remove(self) -> None:
        """Delete ``run.lock`` (while still holding it, so no other process can take a lock on a deleted file
        unnoticed: :meth:`acquire` checks it locked the file that is in place), then release it."""
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.release()

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
