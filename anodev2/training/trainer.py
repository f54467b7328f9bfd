"""One training run: set-up, the epoch loop and its pieces (as timm's train.py splits them).

:func:`fit` runs a validated :class:`~anodev2.training.config.Config`; the pieces are

    setup_run        device, process group, run directory (lock, stale temporaries), model, optimiser, loaders
    restore          RunState (and model/optimiser/RNG state) from a verified last.pt
    train_one_epoch  one pass over the training set (micro-batches, divergence check per step)
    evaluate         test loss / accuracy (summed over ranks)
    check_finite     the divergence guard run before every checkpoint
    end_epoch        the epoch-end sequence: log_epoch (metrics.jsonl, TensorBoard, the summary line),
                     then save_checkpoint (last.pt, then best.pt, each with its SHA-256 sidecar)
    reconcile        on resume: sidecars, best.pt and the logs brought in line with last.pt

One run = one ``out_dir`` holding ``config.yaml`` (resolved config, absolute data root),
``metrics.jsonl`` (one strict-JSON record per epoch), TensorBoard event files, ``last.pt``
(every epoch), ``best.pt`` (best test accuracy), their ``.sha256`` sidecars and ``run.lock``.
Data order and augmentation depend only on (seed, epoch), so a resumed run continues
bit-exactly on CPU.

The epoch-end sequence is written so that a kill at any point of it leaves a state that
``--resume`` continues from exactly (tested by killing at every point): the logs come first,
``last.pt`` is the commit point, ``best.pt`` follows it. On resume, last.pt is the truth:
metrics.jsonl is rewritten from its history, TensorBoard events after its epoch are purged, a
sidecar is tidied, and best.pt is rebuilt from last.pt when the kill came between the two.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as distmod
from .config import Config, ConfigError, config_to_dict, dump_config
from .data import ArrayDataset, BatchLoader, default_root, load_datasets
from .datasets import dataset_info
from .limits import check_evolution_targets, check_model_memory
from .resume_guard import check_checkpoint
from .optim import apply_group_settings, build_optimizer, lr_at, set_lr
from .progress import Progress, run_eta
from .runs import build_model
from .run_files import (LOCK_NAME, RUN_FILES, CheckpointError, RunDirError, RunLock, _fault,
                        atomic_write_bytes, atomic_write_text, deferred_interrupt, is_run_temporary,
                        recover_checkpoint, remove_stale_temporaries, rng_state, serialize, set_rng_state,
                        sigterm_raises, write_checksum)

__all__ = ["RunState", "RunContext", "RunDir", "UsageError", "NonFiniteError", "CHECKPOINT_FORMAT", "fit",
           "setup_run", "restore", "reconcile", "train_one_epoch", "evaluate", "check_finite", "end_epoch",
           "save_checkpoint", "log_epoch", "json_record"]

#: version of the checkpoint dict; 2 = SHA-256 sidecars, no "scheduler"/"data" entries
CHECKPOINT_FORMAT = 2



class UsageError(ValueError):
    """Bad use of the command line or run directory (exit status 2)."""


class NonFiniteError(RuntimeError):
    """Training diverged: a non-finite loss, parameter or test loss (exit status 1; last.pt is the last good model)."""


@dataclass
class RunState:
    """What changes from epoch to epoch and is restored on ``--resume``."""
    epoch: int = 0                       # completed epochs (= last.pt's epoch)
    optimizer_steps: int = 0             # optimiser steps taken so far
    best_test_acc: Optional[float] = None
    history: list[dict] = field(default_factory=list)  # one record per completed epoch


@dataclass
class RunContext:
    """What is built once per run and every step function works in (not saved; ``RunState`` is what is saved)."""
    cfg: Config
    out: Path
    device: torch.device
    dist: distmod.DistInfo
    model: torch.nn.Module               # the unwrapped model (checkpoints, evaluation)
    net: torch.nn.Module                 # what trains: the model or its DDP wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: BatchLoader
    test_loader: BatchLoader
    fixed_batch: torch.Tensor            # a fixed test batch for the weight-evolution views
    writer: object = None                # TensorBoard SummaryWriter (rank 0, log.tensorboard)
    saved_epoch: int = 0                 # the epoch last.pt holds (rank 0)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


# ----------------------------------------------------------------------------- set-up

def _resolve_device(cfg: Config, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available; allowed here: auto | cpu")
    kind = "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"
    if cfg.train.amp is True and kind != "cuda":
        raise ConfigError("train.amp=true needs CUDA (train.device resolves to cpu): float16 autocast with a "
                          "GradScaler; allowed here: train.amp=false | bf16")
    return torch.device(kind, local_rank) if kind == "cuda" else torch.device("cpu")


def amp_dtype(amp) -> torch.dtype:
    """The autocast dtype of ``train.amp`` (True: float16, "bf16": bfloat16)."""
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def with_absolute_data_root(cfg: Config) -> Config:
    """``cfg`` with ``data.root`` resolved to an absolute path, so a resume works from any directory."""
    root = Path(cfg.data.root if cfg.data.root is not None else default_root()).expanduser().resolve()
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)))


def _agree(ok: bool, info: distmod.DistInfo) -> bool:
    """Whether ``ok`` holds on every rank (a collective: every rank must call it)."""
    flag = torch.tensor([0.0 if ok else 1.0])
    return distmod.all_reduce_sum(flag, info).item() == 0


class _PeerFailed(UsageError):
    """Another rank failed during set-up and reported it; this rank exits quietly with the same status."""

    quiet = True


@dataclass
class RunDir:
    """Rank 0's claim on a run directory: its lock and what this start created (undone when the start fails)."""
    path: Path
    lock: RunLock
    created_dirs: list = field(default_factory=list)  # directories this start made, outermost first
    start_over: bool = False  # a run was started here but never wrote a checkpoint: start it over
    owns_outputs: bool = False  # the outputs in the directory are this start's (a new run, or after start-over)

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """Undo a start that failed: the outputs this start wrote, a run.lock and directories it created."""
        if self.owns_outputs:
            _remove_outputs(self.path)
        if self.lock.created:
            self.lock.remove()
        else:
            self.lock.release()
        for d in reversed(self.created_dirs):
            try:
                d.rmdir()
            except OSError:  # not empty (someone else's files): leave it
                break


def _run_output(name: str) -> bool:
    """Whether a new run would write (overwrite, merge into, or clean up) a file of this name."""
    return (name in RUN_FILES and name != LOCK_NAME) or name.startswith("events.out.tfevents.") or \
        is_run_temporary(name)


def _remove_outputs(out: Path) -> list[str]:
    """Delete the files a run writes (except run.lock) and its TensorBoard event files; returns their names."""
    gone = []
    for p in sorted(out.iterdir()):
        if (p.name in RUN_FILES and p.name != LOCK_NAME) or p.name.startswith("events.out.tfevents."):
            if p.is_symlink() or p.is_file():
                p.unlink()
                gone.append(p.name)
    return gone


def _symlink_error(p: Path) -> UsageError:
    return UsageError(f"{p} is a symbolic link; a run never reads or writes its files through a link: "
                      f"replace it with the file itself or remove it, or choose another out_dir=DIR")


def prepare_run_dir(out_dir: str, resume: bool) -> RunDir:
    """Create and lock the run directory, check what it holds, remove stale temporaries; fail before any data is loaded.

    Raises UsageError (after undoing what it created) for an empty out_dir, one that is a file,
    cannot be created or written, holds a symbolic link where the run writes a file, already holds
    a run (without ``resume``), holds files a run writes but no run (other files, e.g. a job's
    log, are left alone), or (with ``resume``) holds no run;
    RunLockedError when a live process holds it. A run that was started (run.lock) but never wrote
    a checkpoint is started over, by the same command or ``--resume`` (``start_over``: ``fit``
    removes its old outputs once the new run is built).
    """
    if not str(out_dir).strip():
        raise UsageError("out_dir is empty; allowed: a directory path, e.g. out_dir=runs/NAME")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"out_dir {out} is a file; allowed: a directory (new or a run directory)")
    missing = []
    d = out
    while not d.exists() and not d.is_symlink() and d != d.parent:
        missing.append(d)
        d = d.parent
    claim = None
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        claim = RunDir(out, RunLock(out).acquire(write_pid=False), created)
        _check_run_dir(claim, resume)
        claim.lock.write_pid()
    except BaseException as e:
        if claim is not None:
            claim.abandon()
        else:
            for d in reversed(created):
                try:
                    d.rmdir()
                except OSError:
                    break
        if isinstance(e, RunDirError):
            raise UsageError(str(e)) from None
        if isinstance(e, PermissionError):
            raise UsageError(f"out_dir {out} cannot be written (permission denied); "
                             f"choose another out_dir=DIR") from None
        if isinstance(e, OSError):
            raise UsageError(f"out_dir {out} cannot be used ({e.strerror}); choose another out_dir=DIR") from None
        raise
    remove_stale_temporaries(out)
    return claim


def _check_run_dir(claim: RunDir, resume: bool) -> None:
    out = claim.path
    for name in RUN_FILES:
        if (out / name).is_symlink():
            raise _symlink_error(out / name)
    started = not claim.lock.created  # run.lock is only ever made by a run (a failed start removes it)
    has_checkpoint = (out / "last.pt").exists()
    # files a new run would overwrite, merge into or delete; anything else (a job's log file) is left alone
    others = sorted(p.name for p in out.iterdir()
                    if _run_output(p.name) and not (started and is_run_temporary(p.name)))
    if resume:
        if not has_checkpoint:
            if not started:
                raise UsageError(f"--resume {out}: no checkpoint {out / 'last.pt'} and no run was started there; "
                                 f"allowed: a run directory written by train_coupled.py")
            claim.start_over = True
        return
    if has_checkpoint:
        raise UsageError(f"out_dir {out} already holds a run (last.pt); continue it with "
                         f"--resume {out}, or choose another out_dir=DIR")
    if started:  # killed or stopped before its first checkpoint: nothing to keep, start it over (fit removes its logs)
        claim.start_over = bool(others)
        claim.owns_outputs = not others
        return
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise UsageError(f"out_dir {out} holds files a run writes ({shown}) but no run; a run never overwrites "
                         f"them: move them, or choose another out_dir=DIR")
    claim.owns_outputs = True  # nothing of a run's here: what appears is this start's


def read_last_checkpoint(out: Path) -> dict:
    """The verified last.pt of run ``out`` (as a resume reads it after a kill: see
    :func:`~anodev2.training.run_files.recover_checkpoint`); on failure, the message says whether best.pt verifies."""
    last, best = out / "last.pt", out / "best.pt"
    try:
        ck = recover_checkpoint(last)[0]
    except CheckpointError as e:
        hint = "no best.pt to fall back on"
        if best.is_file():
            try:
                b = recover_checkpoint(best)[0]
                hint = (f"{best} verifies (epoch {b.get('epoch')}): to resume from it, copy it and "
                        f"{best.name}.sha256 over {last.name} and {last.name}.sha256")
            except CheckpointError:
                hint = f"{best} does not verify either"
        raise CheckpointError(f"--resume {out}: {e}; {hint}") from None
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"--resume {out}: last.pt has checkpoint format {ck.get('format')!r}, "
                         f"this code reads format {CHECKPOINT_FORMAT}")
    check_checkpoint(ck, last)  # the keys a resume reads, before any data is loaded
    return ck


def _load_data(cfg: Config, info: distmod.DistInfo) -> tuple[ArrayDataset, ArrayDataset]:
    d = cfg.data
    kwargs = dict(name=d.name, root=d.root, download=d.download, subset_train=d.subset_train,
                  subset_test=d.subset_test, seed=cfg.train.seed)
    if info.enabled and not info.is_main:  # rank 0 downloads first
        torch.distributed.barrier()
        return load_datasets(**{**kwargs, "download": False})
    try:
        return load_datasets(**kwargs)
    finally:
        if info.enabled:
            torch.distributed.barrier()


def setup_run(cfg: Config, resume: bool) -> tuple[RunContext, RunState, Optional[RunDir], Optional[dict]]:
    """Build everything of a run. Returns (run, fresh state, rank 0's claim on the run directory, the verified
    last.pt when resuming). A failure undoes what this start created in the run directory."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _resolve_device(cfg, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0)
    info = distmod.init(device.type)
    claim = None
    try:
        claim, ck = _claim_run_dir(cfg, resume, info)
        run = _build(cfg, device, info)
    except BaseException:
        if claim is not None:
            claim.abandon()
        distmod.shutdown(info)
        raise
    return run, RunState(), claim, ck


def _claim_run_dir(cfg: Config, resume: bool, info: distmod.DistInfo) -> tuple[Optional[RunDir], Optional[dict]]:
    """Rank 0 locks and checks the run directory (and reads last.pt when resuming); all ranks agree on success."""
    claim, ck, failure = None, None, None
    if info.is_main:
        try:
            claim = prepare_run_dir(cfg.out_dir, resume)
            if resume and not claim.start_over:
                ck = read_last_checkpoint(claim.path)
        except BaseException as e:
            failure = e
    if not _agree(failure is None, info):
        if claim is not None:
            claim.abandon()
        if failure is not None:
            raise failure
        raise _PeerFailed("rank 0 failed during set-up")
    return claim, ck


def _build(cfg: Config, device: torch.device, info: distmod.DistInfo) -> RunContext:
    """Model, loaders, DDP wrapper, optimiser and scaler of a run (seeded by train.seed)."""
    out = Path(cfg.out_dir)
    _seed_everything(cfg.train.seed)
    in_channels = dataset_info(cfg.data.name).channels
    check_model_memory(cfg, device)  # before anything is allocated (model.width=100000)
    model = build_model(cfg).to(device)
    check_evolution_targets(cfg, model)
    train_set, test_set = _load_data(cfg, info)
    if train_set.in_channels != in_channels:
        raise ConfigError(f"data set has {train_set.in_channels} channels, unexpected for {cfg.data.name}")
    loader = dict(seed=cfg.train.seed, rank=info.rank, world_size=info.world_size)
    train_loader = BatchLoader(train_set, cfg.train.batch_size, shuffle=True, augment=cfg.data.augment,
                               workers=cfg.data.workers, pad=True, pin_memory=device.type == "cuda", **loader)
    test_loader = BatchLoader(test_set, 2 * cfg.train.batch_size, shuffle=False, augment=False, workers=0,
                              pad=False, **loader)
    fixed = BatchLoader(test_set, cfg.log.evolution_batch, shuffle=False, augment=False, world_size=1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
    run = RunContext(cfg=cfg, out=out, device=device, dist=info, model=model, net=net,
              opt=build_optimizer(cfg.optim, model), scaler=torch.amp.GradScaler("cuda", enabled=cfg.train.amp is True),
              train_loader=train_loader, test_loader=test_loader, fixed_batch=next(iter(fixed))[0].to(device))
    if info.is_main:
        print(f"run {out}: {cfg.model.name}/{cfg.model.variant} on {cfg.data.name} "
              f"({len(train_set)} train / {len(test_set)} test images, {train_set.source}), device {device}, "
              f"{info.world_size} process(es)", flush=True)
    return run


def restore(run: RunContext, ck: Optional[dict]) -> RunState:
    """Load model, optimiser, scaler and RNG state from checkpoint dict ``ck`` (rank 0's, broadcast by DDP's
    first forward for the model). Returns the run state stored in it; the config's optimiser settings win."""
    if run.dist.enabled:  # only rank 0 read the file; every rank needs the state
        box = [ck]
        torch.distributed.broadcast_object_list(box, src=0)
        ck = box[0]
    if ck is None:  # a run started over: no checkpoint yet
        return RunState()
    run.saved_epoch = ck["epoch"]
    cfg = run.cfg
    check_checkpoint(ck, run.out / "last.pt")  # a hand-made file that verifies: name the missing key
    old_opt = ck["config"]["optim"]["name"]
    if old_opt != cfg.optim.name:
        raise UsageError(f"--resume {run.out}: the run used optim.name={old_opt}, "
                         f"the config says {cfg.optim.name}; allowed: optim.name={old_opt}")
    try:
        run.model.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
        apply_group_settings(run.opt, cfg.optim)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"--resume {run.out}: the checkpoint does not match this config's model/optim "
                         f"({' '.join(str(e).split())[:200]})") from None
    if ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    return RunState(epoch=ck["epoch"], optimizer_steps=ck["optimizer_steps"], best_test_acc=ck["best_test_acc"],
                    history=list(ck["history"]))


# ----------------------------------------------------------------------------- the loop

def _diverged(run: RunContext, state: RunState, what: str) -> NonFiniteError:
    last = run.out / "last.pt"
    where = (f"last good checkpoint: {last} (epoch {state.epoch}, kept intact)" if state.epoch > 0
             else "no checkpoint was written yet")
    return NonFiniteError(f"{what}; {where}")


def _micro_batches(x: torch.Tensor, y: torch.Tensor, n: int):
    """Interleaved micro-batches ``(x[i::n], y[i::n], weight)`` with weights ``len_i / len``: the split DDP's ranks
    see of a global batch, so accumulating them gives the gradient of DDP on n ranks with the same kernels."""
    for i in range(min(n, x.shape[0])):
        yield x[i::n], y[i::n], y[i::n].shape[0] / y.shape[0]


def train_one_epoch(run: RunContext, state: RunState, epoch: int) -> dict:
    """Train one epoch (0-based ``epoch``); returns its training metrics summed over ranks.

    Raises NonFiniteError when a step's loss is not finite on any rank (before that step's update).
    """
    cfg, dev, info = run.cfg, run.device, run.dist
    lr = lr_at(cfg.optim, epoch, cfg.train.epochs)
    set_lr(run.opt, lr)
    run.train_loader.set_epoch(epoch)
    run.net.train()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    steps = 0
    bar = Progress(f"epoch {epoch + 1}/{cfg.train.epochs} train", len(run.train_loader),
                   enabled=run.is_main and cfg.log.progress, interval=cfg.log.progress_interval,
                   run_eta=run_eta(state.history, epoch, cfg.train.epochs))
    try:
        for step, (x, y) in enumerate(run.train_loader):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            run.opt.zero_grad(set_to_none=True)
            loss_sum, correct = torch.zeros((), dtype=torch.float64), 0
            for xm, ym, weight in _micro_batches(x, y, cfg.train.micro_batches):
                with torch.autocast(dev.type, dtype=amp_dtype(cfg.train.amp), enabled=bool(cfg.train.amp)):
                    logits = run.net(xm)
                    loss = F.cross_entropy(logits.float(), ym)
                bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0])
                if distmod.all_reduce_sum(bad, info).item() > 0:
                    raise _diverged(run, state, f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, "
                                                f"step {step + 1} (global step {state.optimizer_steps + steps + 1})")
                run.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
                loss_sum += loss.detach().double().cpu() * ym.shape[0]
                correct += int((logits.argmax(1) == ym).sum())
            run.scaler.step(run.opt)
            run.scaler.update()
            steps += 1
            n = y.shape[0]
            sums += torch.tensor([loss_sum.item(), correct, n], dtype=torch.float64)
            bar.update(n * info.world_size, loss_sum.item() / n)
    finally:
        bar.close()
    distmod.all_reduce_sum(sums, info)
    return {"epoch": epoch + 1, "train_loss": sums[0].item() / sums[2].item(),
            "train_acc": sums[1].item() / sums[2].item(), "test_loss": None, "test_acc": None, "lr": lr,
            "steps": steps, "optimizer_steps": state.optimizer_steps + steps, "train_images": int(sums[2].item()),
            "world_size": info.world_size}


@torch.no_grad()
def evaluate(run: RunContext, desc: str, eta: Optional[Callable[[float, float], float]] = None
             ) -> tuple[float, float, int]:
    """(mean loss, accuracy, images) over the whole test set, summed over ranks (unwrapped model, no DDP).
    ``eta``: the whole run's ETA for the progress lines (progress.run_eta)."""
    model, cfg = run.model, run.cfg
    was = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    bar = Progress(desc, len(run.test_loader), enabled=run.is_main and cfg.log.progress,
                   interval=cfg.log.progress_interval, run_eta=eta)
    try:
        for x, y in run.test_loader:
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            with torch.autocast(run.device.type, dtype=amp_dtype(cfg.train.amp), enabled=bool(cfg.train.amp)):
                logits = model(x).float()
            loss = F.cross_entropy(logits, y, reduction="sum").double().cpu()
            sums += torch.stack([loss, (logits.argmax(1) == y).sum().double().cpu(),
                                 torch.tensor(float(y.shape[0]), dtype=torch.float64)])
            bar.update(y.shape[0] * run.dist.world_size, loss.item() / y.shape[0])
    finally:
        bar.close()
        model.train(was)
    distmod.all_reduce_sum(sums, run.dist)
    return sums[0].item() / sums[2].item(), sums[1].item() / sums[2].item(), int(sums[2].item())


def _param_checksum(model: torch.nn.Module) -> torch.Tensor:
    """A float64 fingerprint of all parameters (equal on all ranks iff DDP kept them in sync, up to collisions)."""
    s = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.parameters()):
        d = p.detach().double().cpu().flatten()
        s += (d * torch.linspace(1.0, 2.0, d.numel(), dtype=torch.float64)).sum() * (i + 1)
    return s.reshape(1)


def check_finite(run: RunContext, state: RunState, rec: dict) -> None:
    """The divergence guard before a checkpoint: every parameter and float buffer, the training loss and the
    test loss (when evaluated) must be finite; else NonFiniteError and last.pt stays the last good model."""
    bad = [name for name, t in list(run.model.named_parameters()) + list(run.model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    losses = [k for k in ("train_loss", "test_loss") if rec[k] is not None and not math.isfinite(rec[k])]
    if bad or losses:
        what = ", ".join([f"{k} {rec[k]}" for k in losses] +
                         ([f"{len(bad)} non-finite tensors (first: {bad[0]})"] if bad else []))
        raise _diverged(run, state, f"the model diverged in epoch {rec['epoch']} ({what}); not saved")


def checkpoint_bytes(run: RunContext, state: RunState) -> bytes:
    """The serialized checkpoint of ``state`` (model, optimiser, scaler, RNG, config, history)."""
    ck = {"format": CHECKPOINT_FORMAT, "epoch": state.epoch, "model": run.model.state_dict(),
          "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict() if run.cfg.train.amp is True else {},
          "rng": rng_state(), "config": config_to_dict(run.cfg), "history": state.history,
          "best_test_acc": state.best_test_acc, "optimizer_steps": state.optimizer_steps}
    return serialize(ck)


def save_checkpoint(run: RunContext, state: RunState, is_best: bool, data: Optional[bytes] = None) -> None:
    """Write last.pt, then (when ``is_best``) the same bytes as best.pt, each followed by its SHA-256 sidecar
    (rank 0 only). last.pt is the commit point of an epoch: see :func:`reconcile`."""
    data = checkpoint_bytes(run, state) if data is None else data
    atomic_write_bytes(data, run.out / "last.pt", on_replaced=lambda: setattr(run, "saved_epoch", state.epoch))
    if is_best:
        atomic_write_bytes(data, run.out / "best.pt")


def end_epoch(run: RunContext, state: RunState, is_best: bool) -> None:
    """The epoch-end sequence of rank 0, with Ctrl-C and SIGTERM held back until it is whole: metrics.jsonl,
    TensorBoard and the summary line of the epoch first, then its checkpoints. A kill at any point leaves
    either the new last.pt (the logs and best.pt are then brought in line on resume) or the old one (the logs
    are then rolled back to it on resume and the epoch is trained again, identically).

    A failed write (a full disk: OSError) raises UsageError naming the file and the checkpoint that is kept."""
    with deferred_interrupt():
        try:
            data = checkpoint_bytes(run, state)
            _fault(f"epoch{state.epoch}")
            log_epoch(run, state.history[-1], state.history)
            save_checkpoint(run, state, is_best, data)
        except OSError as e:
            raise _write_failed(run, e) from None
        _fault(f"epoch{state.epoch}:done")


def _write_failed(run: RunContext, e: OSError) -> UsageError:
    last = run.out / "last.pt"
    kept = (f"{last} (epoch {run.saved_epoch}) is kept" if run.saved_epoch else "no checkpoint was written yet")
    return UsageError(f"cannot write {e.filename or run.out} ({e.strerror or e}); {kept}; make room, then continue "
                      f"with --resume {run.out} (its logs are brought in line with last.pt)")


def json_record(rec: dict) -> str:
    """One strict-JSON line (non-finite numbers become null, never a bare NaN)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
    return json.dumps(clean, allow_nan=False)


def summary_line(rec: dict, epochs: int) -> str:
    test = f" test loss {rec['test_loss']:.4f} acc {rec['test_acc']:.4f}" if rec["test_acc"] is not None else ""
    return (f"epoch {rec['epoch']}/{epochs}: train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f}{test} "
            f"lr {rec['lr']:.4g} {rec['epoch_time']:.1f}s {rec['images_per_sec']:.0f} img/s")


def _write_metrics(out: Path, history: list[dict]) -> None:
    atomic_write_text("".join(json_record(h) + "\n" for h in history), out / "metrics.jsonl")


def log_epoch(run: RunContext, rec: dict, history: Optional[list[dict]] = None) -> None:
    """Record ``rec`` in metrics.jsonl (rewritten atomically as ``history``, which ends with ``rec``; appended
    when no history is given), write its TensorBoard views and print its summary (rank 0)."""
    cfg = run.cfg
    if history is not None:
        _write_metrics(run.out, history)
    else:
        with open(run.out / "metrics.jsonl", "a") as f:
            f.write(json_record(rec) + "\n")
    if run.writer is not None:
        from .. import models
        from . import tb_logging as tb
        epoch = rec["epoch"]
        tb.log_scalars(run.writer, rec, epoch)
        every = cfg.log.evolution_every
        if every and (epoch % every == 0 or epoch == cfg.train.epochs):
            tb.log_evolution(run.writer, run.model, models.ode_blocks(run.model), run.fixed_batch, epoch,
                             max_kernels=cfg.log.max_kernels)
        run.writer.flush()
        _fault("tensorboard")
    print(summary_line(rec, cfg.train.epochs), flush=True)


def _wait_for_a_later_event_file_name(out: Path) -> None:
    """TensorBoard reads a directory's event files in name order, and a name starts with the writer's start time
    in whole seconds (then the PID): wait until a new writer's file sorts after every existing one, so that its
    purge of the epochs after last.pt applies to the events a killed run wrote (a restart within a second)."""
    stamps = [int(m.group(1)) for p in out.glob("events.out.tfevents.*")
              if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", p.name))]
    newest = max(stamps, default=0)
    if newest - time.time() > 2:  # a clock far behind the files' (another host): nothing sensible to wait for
        return
    while int(time.time()) <= newest:
        time.sleep(0.05)


def _open_outputs(run: RunContext, state: RunState, resumes: Optional[list] = None) -> None:
    """config.yaml (with the record of every resume), model.txt, metrics.jsonl (rewritten from the restored
    history) and the TensorBoard writer."""
    from ..models import format_description
    from .resume_guard import config_yaml
    cfg, out = run.cfg, run.out
    atomic_write_text(config_yaml(cfg, resumes, state.epoch), out / "config.yaml")
    description = format_description(run.model)
    atomic_write_text(description + "\n", out / "model.txt")
    _write_metrics(out, state.history)  # a resume rolls back lines written after last.pt
    if cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        _wait_for_a_later_event_file_name(out)
        run.writer = SummaryWriter(log_dir=str(out), purge_step=state.epoch + 1 if state.epoch else None)
        if state.epoch == 0:
            run.writer.add_text("model/description", "```\n" + description + "\n```", 0)
            run.writer.add_text("config", "```\n" + dump_config(cfg) + "```", 0)
    print(f"epochs {state.epoch + 1}..{cfg.train.epochs}\n{description}", flush=True)


def _best_epoch(history: list[dict]) -> Optional[int]:
    """The epoch whose record says it was the best so far, last of them (the epoch best.pt must hold)."""
    best = [h["epoch"] for h in history if h.get("best")]
    return best[-1] if best else None


def reconcile(out: Path, ck: dict) -> list[str]:
    """Bring a run directory in line with its verified last.pt ``ck`` after a kill (rank 0, holding the lock).

    A sidecar left listing two digests (or, from an older version, missing) is rewritten; best.pt is rebuilt from
    last.pt when the history says last.pt's epoch is the best one and best.pt holds another (a kill
    between the two writes). metrics.jsonl and TensorBoard are rolled back to last.pt when the
    outputs are opened. Returns one note per repair; a best.pt that cannot be made to agree gives
    a ``warning:`` note (the run goes on; best.pt is rewritten at the next best epoch).
    """
    notes = []
    last, best = out / "last.pt", out / "best.pt"
    _, data, problem = recover_checkpoint(last)
    if problem is not None:
        write_checksum(last, data)
        notes.append(f"{last.name}.sha256 rewritten (epoch {ck['epoch']}): {problem}")
    want = _best_epoch(ck["history"])
    if want is None:
        return notes
    have, why = None, "missing"
    if best.exists():
        try:
            b, bdata, bproblem = recover_checkpoint(best)
            have, why = b.get("epoch"), f"at epoch {b.get('epoch')}"
        except CheckpointError as e:
            bproblem, why = None, f"unverifiable ({e})"
    if have == want:
        if bproblem is not None:
            write_checksum(best, bdata)
            notes.append(f"{best.name}.sha256 rewritten (epoch {have}): {bproblem}")
    elif want == ck["epoch"]:
        atomic_write_bytes(data, best)
        notes.append(f"{best.name} rebuilt from {last.name} (epoch {want}, the best test accuracy; "
                     f"{best.name} was {why})")
    else:
        notes.append(f"warning: {best} should hold epoch {want} (the best test accuracy in metrics.jsonl) but is "
                     f"{why}; it is rewritten at the next epoch that beats epoch {want}")
    return notes


def _start_over(claim: RunDir) -> None:
    gone = _remove_outputs(claim.path)
    claim.owns_outputs = True
    print(f"starting {claim.path} over from epoch 1: it was started but never wrote a checkpoint"
          + (f" (removed {', '.join(gone)})" if gone else ""), flush=True)


def fit(cfg: Config, resume: bool = False, resumes: Optional[list] = None) -> list[dict]:
    """Train ``cfg`` (continuing from ``out_dir/last.pt`` when ``resume``); returns the metrics history.
    ``resumes``: the records of the run's resumes (cli.resolve_resume) written to config.yaml's ``resumes:`` list.

    SIGTERM raises :class:`~anodev2.training.run_files.Terminated` (a KeyboardInterrupt) like Ctrl-C; both are
    held back during the epoch-end writes. A start that fails (before its outputs are open) leaves nothing
    behind in the run directory.
    """
    cfg = with_absolute_data_root(cfg)
    run = claim = None
    with sigterm_raises():
        try:
            run, state, claim, ck = setup_run(cfg, resume)
            started = False
            try:
                if resume:
                    state = restore(run, ck)
                    if run.is_main and ck is not None:
                        try:
                            notes = reconcile(run.out, ck)
                        except OSError as e:
                            raise _write_failed(run, e) from None
                        for note in notes:
                            print(note, file=sys.stderr if note.startswith("warning:") else sys.stdout, flush=True)
                    if state.epoch >= cfg.train.epochs:
                        if run.is_main:
                            print(f"nothing to do: {run.out / 'last.pt'} has {state.epoch} epochs >= "
                                  f"train.epochs={cfg.train.epochs}")
                        return state.history
                if run.is_main:
                    if claim.start_over:
                        _start_over(claim)
                    try:
                        _open_outputs(run, state, resumes)
                    except OSError as e:
                        raise _write_failed(run, e) from None
                started = True
            finally:
                if not started and claim is not None and state.epoch == 0:
                    if run.writer is not None:
                        run.writer.close()
                        run.writer = None
                    claim.abandon()
                    claim = None
            for epoch in range(state.epoch, cfg.train.epochs):
                t0 = time.perf_counter()
                rec = train_one_epoch(run, state, epoch)
                train_time = time.perf_counter() - t0
                if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                    rec["test_loss"], rec["test_acc"], rec["test_images"] = evaluate(
                        run, f"epoch {epoch + 1}/{cfg.train.epochs} test",
                        eta=run_eta(state.history, epoch, cfg.train.epochs, spent=train_time))
                rec["epoch_time"] = time.perf_counter() - t0
                rec["images_per_sec"] = rec["train_images"] / max(train_time, 1e-9)
                if run.dist.enabled:
                    rec["ranks_in_sync"] = distmod.all_equal(_param_checksum(run.model), run.dist)
                    if not rec["ranks_in_sync"]:
                        raise RuntimeError(f"DistributedDataParallel ranks hold different parameters after "
                                           f"epoch {epoch + 1}")
                check_finite(run, state, rec)
                is_best = rec["test_acc"] is not None and (state.best_test_acc is None or
                                                           rec["test_acc"] > state.best_test_acc)
                if is_best:
                    state.best_test_acc, rec["best"] = rec["test_acc"], True
                rec["best_test_acc"] = state.best_test_acc
                state.epoch, state.optimizer_steps = epoch + 1, rec["optimizer_steps"]
                state.history.append(rec)
                if run.is_main:
                    end_epoch(run, state, is_best)
            return state.history
        finally:
            if run is not None and run.writer is not None:
                run.writer.close()
            if claim is not None:
                claim.release()
            if run is not None:
                distmod.shutdown(run.dist)
