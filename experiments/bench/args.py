"""Command-line options shared by the block benchmarks (bench_adjoint, memory_time_study)."""
from __future__ import annotations

import argparse

#: normalisation layers the benchmark's f can use (``--norm``).
NORMS = ("group", "batch")


def parse_steps(text: str) -> list[int]:
    """'4,8,16' -> [4, 8, 16]: the ``--steps`` option of the benchmark scripts (ints >= 1)."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated ints >= 1, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated ints >= 1, got {text!r}")
    return vals


def add_measurement_args(p: argparse.ArgumentParser, *, steps: str, batch: int, size: int, repeats: int) -> None:
    """The block-size and measurement options shared by bench_adjoint and memory_time_study."""
    p.add_argument("--steps", type=parse_steps, default=steps, help=f"comma-separated numbers of ODE steps Nt (default {steps})")
    p.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
    p.add_argument("--channels", type=int, default=16, help="channels C of z and f (default 16)")
    p.add_argument("--norm", choices=NORMS, default="group",
                   help="normalisation inside f: group (GroupNorm, 8 groups; default) or batch (BatchNorm)")
    p.add_argument("--size", type=int, default=size, help=f"spatial size H = W (default {size})")
    p.add_argument("--repeats", type=int, default=repeats,
                   help=f"timed training steps per row; median reported (default {repeats})")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps before timing (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every worker (default 1)")
    p.add_argument("--jobs", type=int, default=1,
                   help="subprocesses run at once (default 1); more than 1 distorts the timings")
    p.add_argument("--isolation", choices=("subprocess", "in-process"), default=None,
                   help="subprocess: every row in a fresh python (default); in-process: all rows in this "
                        "process, for smoke tests only (memory not measured; the --quick default)")
    p.add_argument("--mmap-threshold", type=int, default=65536,
                   help="glibc mmap threshold in bytes while memory is measured (0: allocator default)")
    p.add_argument("--no-torchdiffeq", action="store_true", help="skip the torchdiffeq rows")


def check_measurement_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the isolation default (in-process for --quick) and reject out-of-range values."""
    if args.isolation is None:
        args.isolation = "in-process" if args.quick else "subprocess"
    for name in ("batch", "channels", "size", "repeats", "threads", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.mmap_threshold < 0:
        p.error("--warmup and --mmap-threshold must be >= 0")
