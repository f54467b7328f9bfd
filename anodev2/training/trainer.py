"""The training application behind ``train_coupled.py``.

    python train_coupled.py --config NAME_OR_PATH [key=value ...] [--resume RUN_DIR]
    torchrun --nproc_per_node=N train_coupled.py --config ...      (DistributedDataParallel)

One run = one ``out_dir`` holding ``config.yaml`` (resolved config), ``metrics.jsonl``
(one JSON record per epoch), TensorBoard event files (tags: :mod:`anodev2.training.tensorboard`),
``last.pt`` (every epoch) and ``best.pt`` (best test accuracy). Checkpoints are written
atomically and load with ``torch.load(..., weights_only=True)``; data order and
augmentation depend only on (seed, epoch), so ``--resume`` continues bit-exactly on CPU.

Exit status: 0 done; 1 non-finite loss (last good checkpoint kept); 2 bad input (config,
overrides, data location, resume directory): one ``error: ...`` line on stderr, no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as distmod
from .run_files import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from .config import (CONFIG_DIR, Config, ConfigError, available_configs, config_from_dict, config_to_dict,
                     describe_keys, dump_config, load_config, load_raw, parse_overrides, _merge)
from .data import ArrayDataset, BatchLoader, DataNotFoundError, load_datasets
from .optim import apply_group_settings, build_optimizer, lr_at, set_lr

__all__ = ["main", "Trainer", "NonFiniteLossError", "UsageError", "build_parser"]

CHECKPOINT_FORMAT = 1


class UsageError(ValueError):
    """Bad command-line use (e.g. a resume directory without a checkpoint); exit status 2."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; exit status 1."""


# ----------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump; exit 2 like every bad input
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    configs = ", ".join(available_configs()) or "(none found)"
    try:
        keys = describe_keys()
    except Exception as e:  # the library does not import: still give help
        keys = f"  (cannot list keys: {e})"
    epilog = (f"configs: a path to a YAML file, or a name in {CONFIG_DIR} (with or without .yaml).\n"
              f"available configs: {configs}\n\n"
              f"overrides: dotted KEY=VALUE pairs, VALUE parsed as YAML, e.g.\n"
              f"  train.epochs=1 data.subset_train=512 model.variant=anode optim.milestones=[100,150]\n\n"
              f"config keys (default  [allowed]  meaning):\n{keys}\n\n"
              "multi-process: torchrun --nproc_per_node=N train_coupled.py --config ... (gloo on CPU, NCCL on CUDA)\n"
              "exit status: 0 done, 1 non-finite loss, 2 bad input")
    p = _Parser(prog="train_coupled.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train a coupled neural ODE network (ANODE / ANODEV2) on CIFAR-10/100 or MNIST.",
                epilog=epilog)
    p.add_argument("--config", metavar="NAME_OR_PATH",
                   help="config name in anodev2/training/configs or a YAML path (default with --resume: RUN_DIR/config.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from RUN_DIR/last.pt")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=1")
    return p


def resolve_config(config: Optional[str], overrides: Sequence[str], resume: Optional[str]) -> Config:
    """The validated config of a command line. With ``resume``, out_dir is RUN_DIR and the base
    config defaults to RUN_DIR/config.yaml."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "last.pt").is_file():
            raise UsageError(f"--resume {resume}: no checkpoint {run_dir / 'last.pt'}; "
                             f"allowed: a run directory written by train_coupled.py")
        if config is None:
            config = str(run_dir / "config.yaml")
            if not Path(config).is_file():
                raise UsageError(f"--resume {resume}: no {config}; pass --config too")
        over = parse_overrides(overrides)
        if "out_dir" in over and Path(str(over["out_dir"])).resolve() != run_dir.resolve():
            raise UsageError(f"out_dir={over['out_dir']} conflicts with --resume {resume}; "
                             f"a resumed run stays in its directory")
        raw = _merge(load_raw(config), over)
        raw["out_dir"] = str(run_dir)
        return config_from_dict(raw, name=run_dir.name)
    if config is None:
        raise UsageError("--config NAME_OR_PATH is required (or --resume RUN_DIR); "
                         f"available configs: {', '.join(available_configs())}")
    return load_config(config, overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = resolve_config(args.config, args.overrides, args.resume)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        Trainer(cfg, resume=args.resume is not None).fit()
    except (ConfigError, UsageError, DataNotFoundError) as e:
        if is_main:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        if is_main:
            print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- training

def _resolve_device(cfg: Config, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available; allowed here: auto | cpu")
    kind = "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"
    if cfg.train.amp and kind != "cuda":
        raise ConfigError("train.amp=true needs CUDA (train.device resolves to cpu); allowed here: train.amp=false")
    return torch.device(kind, local_rank) if kind == "cuda" else torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _param_checksum(model: torch.nn.Module) -> torch.Tensor:
    """A float64 fingerprint of all parameters (equal on all ranks iff DDP kept them in sync, up to collisions)."""
    s = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.parameters()):
        d = p.detach().double().cpu().flatten()
        s += (d * torch.linspace(1.0, 2.0, d.numel(), dtype=torch.float64)).sum() * (i + 1)
    return s.reshape(1)


class Trainer:
    """One training run of a :class:`Config` (single process or one rank of a torchrun job).

    ``fit()`` trains ``train.epochs`` epochs (continuing from ``out_dir/last.pt`` when ``resume``).
    """

    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.out = Path(cfg.out_dir)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if not resume and (self.out / "last.pt").exists():
            raise UsageError(f"out_dir {self.out} already holds a run (last.pt); continue it with "
                             f"--resume {self.out}, or choose another out_dir=DIR")
        self.device = _resolve_device(cfg, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0)
        _seed_everything(cfg.train.seed)
        self.model = self._build_model(in_channels=1 if cfg.data.name == "mnist" else 3,
                                       num_classes=100 if cfg.data.name == "cifar100" else 10)
        self.dist = distmod.init(self.device.type)
        self.is_main = self.dist.is_main

    # -- setup -----------------------------------------------------------------------
    def _build_model(self, in_channels: int, num_classes: int) -> torch.nn.Module:
        from .. import models
        m = self.cfg.model
        try:
            return models.build(m.name, m.variant, num_classes=num_classes, in_channels=in_channels,
                                **m.build_options())
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model section rejected by anodev2.models.build: {e}") from None

    def _load_data(self) -> tuple[ArrayDataset, ArrayDataset]:
        d, t = self.cfg.data, self.cfg.train
        kwargs = dict(name=d.name, root=d.root, download=d.download, subset_train=d.subset_train,
                      subset_test=d.subset_test, seed=t.seed)
        if self.dist.enabled and not self.is_main:  # rank 0 downloads first
            torch.distributed.barrier()
            return load_datasets(**{**kwargs, "download": False})
        try:
            return load_datasets(**kwargs)
        finally:
            if self.dist.enabled:
                torch.distributed.barrier()

    # -- main loop --------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train; returns the metrics history (one dict per epoch)."""
        try:
            return self._fit()
        finally:
            distmod.shutdown(self.dist)

    def _fit(self) -> list[dict]:
        cfg, dev = self.cfg, self.device
        train_set, test_set = self._load_data()
        if train_set.in_channels != (1 if cfg.data.name == "mnist" else 3):
            raise ConfigError(f"data set has {train_set.in_channels} channels, unexpected for {cfg.data.name}")
        pin = dev.type == "cuda"
        train_loader = BatchLoader(train_set, cfg.train.batch_size, shuffle=True, augment=cfg.data.augment,
                                   seed=cfg.train.seed, rank=self.dist.rank, world_size=self.dist.world_size,
                                   workers=cfg.data.workers, pad=True, pin_memory=pin)
        test_loader = BatchLoader(test_set, 2 * cfg.train.batch_size, shuffle=False, augment=False,
                                  seed=cfg.train.seed, rank=self.dist.rank, world_size=self.dist.world_size,
                                  workers=0, pad=False)
        fixed = BatchLoader(test_set, cfg.log.evolution_batch, shuffle=False, augment=False, world_size=1)
        fixed_batch = next(iter(fixed))[0].to(dev)

        model = self.model.to(dev)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        net = model
        if self.dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=False)
        opt = build_optimizer(cfg.optim, model)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp)

        start, history, best, steps_total = 0, [], -1.0, 0
        if self.resume:
            ck = load_checkpoint(self.out / "last.pt")
            if ck.get("format") != CHECKPOINT_FORMAT:
                raise UsageError(f"--resume {self.out}: last.pt has checkpoint format {ck.get('format')!r}, "
                                 f"this code reads format {CHECKPOINT_FORMAT}")
            old_opt = ck["config"]["optim"]["name"]
            if old_opt != cfg.optim.name:
                raise UsageError(f"--resume {self.out}: the run used optim.name={old_opt}, "
                                 f"the config says {cfg.optim.name}; allowed: optim.name={old_opt}")
            try:
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["optimizer"])
                apply_group_settings(opt, cfg.optim)  # the config's hyperparameters win over the checkpoint's
            except (RuntimeError, ValueError, KeyError) as e:
                raise UsageError(f"--resume {self.out}: the checkpoint does not match this config's model/optim "
                                 f"({' '.join(str(e).split())[:200]})") from None
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start, history, best = ck["epoch"], list(ck["history"]), ck["best_test_acc"]
            steps_total = ck["optimizer_steps"]
            set_rng_state(ck["rng"])
            if start >= cfg.train.epochs:
                if self.is_main:
                    print(f"nothing to do: {self.out / 'last.pt'} has {start} epochs >= train.epochs={cfg.train.epochs}")
                return history

        writer = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dump_config(cfg), self.out / "config.yaml")
            from ..models import format_description
            description = format_description(model)
            atomic_write_text(description + "\n", self.out / "model.txt")
            atomic_write_text("".join(json.dumps(h) + "\n" for h in history), self.out / "metrics.jsonl")
            if cfg.log.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(log_dir=str(self.out), purge_step=start + 1 if start else None)
                if start == 0:
                    writer.add_text("model/description", "```\n" + description + "\n```", 0)
                    writer.add_text("config", "```\n" + dump_config(cfg) + "```", 0)
            print(f"run {self.out}: {cfg.model.name}/{cfg.model.variant} on {cfg.data.name} "
                  f"({len(train_set)} train / {len(test_set)} test images, {train_set.source}), device {dev}, "
                  f"{self.dist.world_size} process(es), epochs {start + 1}..{cfg.train.epochs}\n{description}", flush=True)

        try:
            for epoch in range(start, cfg.train.epochs):
                rec = self._epoch(epoch, net, model, opt, scaler, train_loader, test_loader, fixed_batch,
                                  writer, steps_total, best)
                steps_total = rec["optimizer_steps"]
                if rec["test_acc"] is not None and rec["test_acc"] > best:
                    best, rec["best"] = rec["test_acc"], True
                rec["best_test_acc"] = best if best >= 0 else None
                history.append(rec)
                if self.is_main:
                    ck = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                          "optimizer": opt.state_dict(),
                          "scheduler": {"schedule": cfg.optim.schedule, "last_epoch": epoch,
                                        "lr": rec["lr"]},
                          "scaler": scaler.state_dict() if cfg.train.amp else {},
                          "rng": rng_state(), "data": {"seed": cfg.train.seed, "next_epoch": epoch + 1},
                          "config": config_to_dict(cfg), "history": history, "best_test_acc": best,
                          "optimizer_steps": steps_total}
                    atomic_save(ck, self.out / "last.pt")
                    if rec.get("best"):
                        atomic_save(ck, self.out / "best.pt")
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if writer is not None:
                        writer.flush()
                    print(self._summary(rec), flush=True)
        finally:
            if writer is not None:
                writer.close()
        return history

    def _summary(self, rec: dict) -> str:
        test = (f" test loss {rec['test_loss']:.4f} acc {rec['test_acc']:.4f}" if rec["test_acc"] is not None else "")
        return (f"epoch {rec['epoch']}/{self.cfg.train.epochs}: train loss {rec['train_loss']:.4f} "
                f"acc {rec['train_acc']:.4f}{test} lr {rec['lr']:.4g} {rec['epoch_time']:.1f}s "
                f"{rec['images_per_sec']:.0f} img/s")

    def _epoch(self, epoch, net, model, opt, scaler, train_loader, test_loader, fixed_batch, writer,
               steps_total, best) -> dict:
        cfg, dev, info = self.cfg, self.device, self.dist
        lr = lr_at(cfg.optim, epoch, cfg.train.epochs)
        set_lr(opt, lr)
        train_loader.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        steps = 0
        bar = None
        show = self.is_main and cfg.log.progress and sys.stderr.isatty()
        it = train_loader
        if show:
            from tqdm import tqdm
            it = bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                            dynamic_ncols=True)
        for step, (x, y) in enumerate(it):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=cfg.train.amp):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
            bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0])
            if distmod.all_reduce_sum(bad, info).item() > 0:
                if bar is not None:
                    bar.close()
                last = self.out / "last.pt"
                where = (f"last good checkpoint: {last} (epoch {epoch}, kept intact)" if last.exists()
                         else "no checkpoint was written yet")
                raise NonFiniteLossError(f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, "
                                         f"step {step + 1} (global step {steps_total + steps + 1}); {where}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            steps += 1
            with torch.no_grad():
                n = y.shape[0]
                sums += torch.stack([loss.detach().double().cpu() * n,
                                     (logits.argmax(1) == y).sum().double().cpu(),
                                     torch.tensor(float(n), dtype=torch.float64)])
            if bar is not None:
                bar.set_postfix(loss=f"{sums[0].item() / sums[2].item():.3f}", lr=f"{lr:.3g}")
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0
        distmod.all_reduce_sum(sums, info)
        rec = {"epoch": epoch + 1, "train_loss": sums[0].item() / sums[2].item(),
               "train_acc": sums[1].item() / sums[2].item(), "test_loss": None, "test_acc": None,
               "lr": lr, "steps": steps, "optimizer_steps": steps_total + steps,
               "train_images": int(sums[2].item()), "world_size": info.world_size}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            rec["test_loss"], rec["test_acc"], rec["test_images"] = self._evaluate(model, test_loader)
        rec["epoch_time"] = time.perf_counter() - t0
        rec["images_per_sec"] = rec["train_images"] / max(train_time, 1e-9)
        if info.enabled:
            rec["ranks_in_sync"] = distmod.all_equal(_param_checksum(model), info)
            if not rec["ranks_in_sync"]:
                raise RuntimeError(f"DistributedDataParallel ranks hold different parameters after epoch {epoch + 1}")
        if writer is not None:
            from .. import models
            from . import tensorboard as tb
            tb.log_scalars(writer, rec, epoch + 1)
            every = cfg.log.evolution_every
            if every and ((epoch + 1) % every == 0 or epoch + 1 == cfg.train.epochs):
                tb.log_evolution(writer, model, models.ode_blocks(model), fixed_batch, epoch + 1,
                                 max_kernels=cfg.log.max_kernels)
        return rec

    @torch.no_grad()
    def _evaluate(self, model, loader) -> tuple[float, float, int]:
        """(mean loss, accuracy, images) over the whole test set, summed over ranks (unwrapped model, no collectives)."""
        was = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.cfg.train.amp):
                logits = model(x).float()
            sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double().cpu(),
                                 (logits.argmax(1) == y).sum().double().cpu(),
                                 torch.tensor(float(y.shape[0]), dtype=torch.float64)])
        model.train(was)
        distmod.all_reduce_sum(sums, self.dist)
        return sums[0].item() / sums[2].item(), sums[1].item() / sums[2].item(), int(sums[2].item())
