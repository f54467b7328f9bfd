"""Command line of ``train_coupled.py``: argument parsing, config resolution, exit statuses.

    python train_coupled.py --config NAME_OR_PATH [KEY=VALUE ...] [--resume RUN_DIR [--allow-change KEY]]
                            [--print-config]
    torchrun --nproc_per_node=N train_coupled.py --config ...      (DistributedDataParallel)

Exit status (:data:`EXIT_STATUS`): 0 done; 1 the model diverged (non-finite loss, parameter or
test loss; last.pt is the last good model); 2 bad input (config, override, data, run directory,
checkpoint, a run directory in use, a full disk): one ``error: ...`` line on stderr, no traceback; 130
interrupted (Ctrl-C): one ``interrupted: ...`` line naming the kept last.pt and the ``--resume`` command;
143 terminated (SIGTERM, what batch schedulers send): the same, as a ``terminated: ...`` line.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from .config import (CONFIG_DIR, Config, ConfigError, available_configs, config_from_dict, describe_keys,
                     dump_config, load_config, load_raw, merge_raw, parse_overrides)
from .data import DataError
from .resume_guard import FIXED_BY_CHECKPOINT, RESUMES_KEY, free_keys, guard_resume
from .run_files import CheckpointError, RunLockedError, Terminated, sigterm_raises
from .trainer import NonFiniteError, UsageError, fit, with_absolute_data_root

__all__ = ["main", "build_parser", "resolve_config", "resolve_resume", "EXIT_STATUS"]

EXIT_STATUS = {"done": 0, "diverged": 1, "bad input": 2, "interrupted": 130, "terminated": 143}
BAD_INPUT = (ConfigError, UsageError, DataError, CheckpointError, RunLockedError)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump; exit 2 like every bad input
        self.exit(EXIT_STATUS["bad input"], f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser; its epilog lists the shipped configs, every config key and the exit statuses."""
    configs = ", ".join(available_configs()) or "(none found)"
    epilog = (f"configs: a path to a YAML file, or a name in {CONFIG_DIR} (with or without .yaml).\n"
              f"available configs: {configs}\n\n"
              f"overrides: dotted KEY=VALUE pairs anywhere on the line, VALUE parsed as YAML, e.g.\n"
              f"  train.epochs=1 data.subset_train=512 model.variant=anode optim.milestones=[100,150]\n"
              f"  model.grad.checkpoints=2 model.evolution.kind=diffusion model.evolution.d_max=0.1\n"
              f"  (model.grad / model.evolution: a name, e.g. model.grad=backprop, or a mapping whose keys are listed\n"
              f"  below; quote a whole mapping: 'model.evolution={{kind: rda, targets: [conv1.weight]}}')\n\n"
              f"config keys (default  [allowed]  meaning):\n{describe_keys()}\n\n"
              f"--resume RUN_DIR continues the run recorded in RUN_DIR/config.yaml. Overrides may change only\n"
              f"{textwrap.fill(', '.join(free_keys()) + ';', 110, initial_indent='  ', subsequent_indent='  ')}\n"
              f"  any other key (model, data, train.seed, train.batch_size: what defines the model, the data or the\n"
              f"  randomness) exits 2 naming it unless given with --allow-change KEY ({', '.join(FIXED_BY_CHECKPOINT)}\n"
              f"  cannot change: the saved optimiser state belongs to it). Every resume and its changes\n"
              f"  (old -> new) are appended to the '{RESUMES_KEY}:' list of config.yaml.\n\n"
              "multi-process: torchrun --nproc_per_node=N train_coupled.py --config ... (gloo on CPU, NCCL on CUDA)\n"
              "exit status: " + ", ".join(f"{code} {what}" for what, code in EXIT_STATUS.items()))
    p = _Parser(prog="train_coupled.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train a coupled neural ODE network (ANODE / ANODEV2) on CIFAR-10/100 or MNIST.",
                epilog=epilog)
    p.add_argument("--config", metavar="NAME_OR_PATH",
                   help="config name in anodev2/training/configs or a YAML path "
                        "(default with --resume: RUN_DIR/config.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from RUN_DIR/last.pt")
    p.add_argument("--allow-change", metavar="KEY", action="append", default=[],
                   help="with --resume: let this key (or section, e.g. model) change although it defines the model, "
                        "the data or the randomness (repeatable); see the list below")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=1")
    return p


def resolve_config(config: Optional[str], overrides: Sequence[str], resume: Optional[str],
                   allow_change: Sequence[str] = ()) -> Config:
    """The validated config of a command line. With ``resume``, out_dir is RUN_DIR, the base
    config defaults to RUN_DIR/config.yaml and the resume guard applies (see :func:`resolve_resume`)."""
    if resume is None:
        if allow_change:
            raise UsageError(f"--allow-change {allow_change[0]} is allowed only with --resume RUN_DIR")
        if config is None:
            raise UsageError("--config NAME_OR_PATH is required (or --resume RUN_DIR); "
                             f"available configs: {', '.join(available_configs())}")
        return load_config(config, overrides)
    return resolve_resume(config, overrides, resume, allow_change)[0]


def resolve_resume(config: Optional[str], overrides: Sequence[str], resume: str,
                   allow_change: Sequence[str] = ()) -> tuple[Config, list]:
    """(config, resume records) of ``--resume RUN_DIR``: the new config is compared with the run's record
    RUN_DIR/config.yaml; a change of a key outside resume_guard.FREE_KEYS not named in ``allow_change`` is a
    ConfigError naming old -> new. The records are config.yaml's ``resumes:`` list plus this resume's."""
    run_dir = Path(resume)
    if not (run_dir / "last.pt").is_file() and not (run_dir / "run.lock").is_file():  # run.lock: started, no checkpoint
        raise UsageError(f"--resume {resume}: no checkpoint {run_dir / 'last.pt'}; "
                         f"allowed: a run directory written by train_coupled.py")
    record = run_dir / "config.yaml"
    if not record.is_file():
        raise UsageError(f"--resume {resume}: no {record}, the record of the run's settings that a resume is checked "
                         f"against; allowed: a run directory written by train_coupled.py (restore its config.yaml)")
    if config is None:
        config = str(record)
    over = parse_overrides(overrides)
    if "out_dir" in over and Path(str(over["out_dir"])).resolve() != run_dir.resolve():
        raise UsageError(f"out_dir={over['out_dir']} conflicts with --resume {resume}; "
                         f"a resumed run stays in its directory")
    raw = merge_raw(load_raw(config), over)
    raw["out_dir"] = str(run_dir)
    raw.pop(RESUMES_KEY, None)
    new = config_from_dict(raw, name=run_dir.name)
    old_raw = load_raw(record)
    resumes = list(old_raw.pop(RESUMES_KEY, None) or [])
    old_raw["out_dir"] = str(run_dir)
    old = config_from_dict(old_raw, name=run_dir.name)
    entry = guard_resume(with_absolute_data_root(old), with_absolute_data_root(new), allow_change, resume)
    return new, resumes + [entry]


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure (CPU allocator, CUDA OOM, Python's MemoryError)."""
    if isinstance(e, MemoryError):
        return True
    import torch
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "DefaultCPUAllocator" in text or "out of memory" in text


def _memory_message(e: BaseException) -> str:
    text = " ".join(str(e).split())
    at = text.find("you tried to allocate")
    return (text[at:at + 80].split(". Error")[0] if at >= 0 else text[:120]) or type(e).__name__


def _resume_command(out_dir: str) -> str:
    launcher = "torchrun --nproc_per_node=" + os.environ["WORLD_SIZE"] if int(
        os.environ.get("WORLD_SIZE", "1")) > 1 else "python"
    return f"{launcher} train_coupled.py --resume {shlex.quote(out_dir)}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (see the module docstring)."""
    args = build_parser().parse_intermixed_args(argv)
    is_main = int(os.environ.get("RANK", "0")) == 0

    def fail(status: str, message: str) -> int:
        if is_main:
            print(f"error: {message}", file=sys.stderr, flush=True)
        return EXIT_STATUS[status]

    cfg = None
    try:
        with sigterm_raises():  # from the first line on: a SIGTERM while the config is read gets our message too
            resumes = None
            if args.resume is None:
                cfg = resolve_config(args.config, args.overrides, None, args.allow_change)
            else:
                cfg, resumes = resolve_resume(args.config, args.overrides, args.resume, args.allow_change)
            if args.print_config:
                print(dump_config(cfg), end="")
                return EXIT_STATUS["done"]
            fit(cfg, resume=args.resume is not None, resumes=resumes)
    except BAD_INPUT as e:
        if getattr(e, "quiet", False):  # another rank reported it
            return EXIT_STATUS["bad input"]
        return fail("bad input", str(e))
    except NonFiniteError as e:
        return fail("diverged", str(e))
    except (MemoryError, RuntimeError) as e:  # an allocation that cannot be met: a size, not a divergence
        if not _out_of_memory(e):
            raise
        last = Path(cfg.out_dir) / "last.pt" if cfg is not None else None
        kept = f"{last} kept" if last is not None and last.is_file() else "no checkpoint was written"
        return fail("bad input", f"out of memory ({_memory_message(e)}); {kept}; allowed: sizes that fit the "
                                 f"device: a smaller train.batch_size, more train.micro_batches or a smaller "
                                 f"model.width")
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: no traceback; last.pt is whole (written atomically)
        last = Path(cfg.out_dir) / "last.pt" if cfg is not None and cfg.out_dir else None
        if last is not None and last.is_file():
            kept = f"{last} kept; continue with: {_resume_command(cfg.out_dir)}"
        elif last is not None and (last.parent / "run.lock").is_file():  # the run had started: --resume starts it over
            kept = f"no checkpoint was written yet; start it over with: {_resume_command(cfg.out_dir)}"
        else:
            kept = "no checkpoint was written yet"
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        if is_main:
            print(f"{what}: {kept}", file=sys.stderr, flush=True)
        return EXIT_STATUS[what]
    return EXIT_STATUS["done"]
