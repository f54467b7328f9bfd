"""Running a grid of training runs, resumably, here or through submitit (shared by ablate.py and
families.py).

A run is ``python train_coupled.py --config CONFIG <grid's common overrides> <run's overrides>
out_dir=OUT/RUN``, optionally followed by *post* commands (e.g. evaluating the trained model)
whose output files the run lists. Its state, read from its directory when it starts:

* ``done``:    ``metrics.jsonl`` holds the last epoch and every output file exists: skipped;
* ``post``:    trained, an output file is missing: only the post commands run;
* ``partial``: ``last.pt`` exists: training resumes with ``--resume``;
* ``todo``:    nothing yet.

So a grid stopped at any point (a killed process, a job's time limit) continues where it stopped
when started again, with either launcher: ``local`` (child processes here, ``--jobs`` at once)
or ``submitit`` (one job per run as a job array; ``--cluster local`` runs them as local processes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ("local", "submitit")


@dataclass(frozen=True)
class GridRun:
    """One training run: its directory name, config, the model / variant / seed it trains and
    the extra overrides (the grid's common overrides come before ``overrides``). ``post``:
    commands run after training, in the repository root; ``outputs``: the files (relative to the
    run directory) they write; the run is done when all exist."""

    name: str
    config: str
    model: str
    variant: str
    seed: int
    extra: tuple[str, ...] = ()  # a sweep's or family's override(s)
    post: tuple[tuple[str, ...], ...] = ()
    outputs: tuple[str, ...] = ()

    @property
    def overrides(self) -> tuple[str, ...]:
        return (f"model.name={self.model}", f"model.variant={self.variant}", f"train.seed={self.seed}", *self.extra)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_epochs(grid, run: GridRun) -> int:
    """``train.epochs`` of the run: the last override that sets it (``grid.common``, then the
    run's), else the run's config."""
    for item in (*grid.common, *run.overrides)[::-1]:
        if item.startswith("train.epochs="):
            return int(item.split("=", 1)[1])
    from anodev2.training.config import load_config

    return load_config(run.config).train.epochs


def trained(grid, run: GridRun, out: Path) -> bool:
    """Whether ``metrics.jsonl`` of the run holds its last epoch."""
    hist = read_metrics(out / run.name)
    return bool(hist) and hist[-1].get("epoch") == expected_epochs(grid, run)


def status(grid, run: GridRun, out: Path) -> str:
    """'done', 'post' (trained, an output missing), 'partial' (resumable from last.pt) or 'todo'."""
    d = out / run.name
    if trained(grid, run, out):
        return "done" if all((d / f).exists() for f in run.outputs) else "post"
    return "partial" if (d / "last.pt").exists() else "todo"


def command(grid, run: GridRun, out: Path, nproc: int) -> list[str]:
    """The training command of ``run`` as it stands now (``--resume`` when it is partial)."""
    d = out / run.name
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] \
        if nproc > 1 else [sys.executable]
    resume = ["--resume", str(d)] if status(grid, run, out) == "partial" else []
    return [*launcher, str(ROOT / "train_coupled.py"), *resume, "--config", run.config,
            *grid.common, *run.overrides, f"out_dir={d}"]


#: sub-directory of a grid's OUT that holds one log per run (the runs' own directories hold only the run).
LOG_DIR = "_logs"


def log_path(run: GridRun, out: Path) -> Path:
    """Where the launcher appends the output of ``run``'s commands: ``OUT/_logs/RUN.log``."""
    return out / LOG_DIR / f"{run.name}.log"


def launch(grid, run: GridRun, out: Path, nproc: int, threads: Optional[int] = None) -> int:
    """Run (or resume) ``run`` to completion in a child process, then its post commands; output
    appended to ``OUT/_logs/RUN.log`` (beside the run, not in it: the trainer refuses to start a
    new run in a directory that holds files of no run). Returns the first non-zero exit status,
    else 0. This is also the body of a submitit job."""
    logs = out / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmds = [] if trained(grid, run, out) else [command(grid, run, out, nproc)]
    cmds += [list(c) for c in run.post]
    with open(log_path(run, out), "a") as log:
        for cmd in cmds:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            t = time.time()
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            log.write(f"# exit {rc} after {time.time() - t:.0f} s\n")
            if rc != 0:
                return rc
    return 0


@dataclass(frozen=True)
class SubmititOptions:
    """Job resources for ``--launcher submitit`` (one job per run, submitted as a job array)."""

    folder: Path
    cluster: Optional[str] = None
    partition: Optional[str] = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    time_limit_min: int = 2880
    array_parallelism: int = 64
    wait: bool = True


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise SystemExit("--launcher submitit needs the submitit package: pip install submitit "
                         "(or pip install -e '.[bench]'); or use --launcher local") from None
    return submitit


def run_local(grid, todo: list[tuple[int, GridRun]], total: int, out: Path, nproc: int, jobs: int) -> list[str]:
    """Run ``todo`` here, ``jobs`` at once (each with OMP_NUM_THREADS = cores // jobs); names of failed runs."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def one(item: tuple[int, GridRun]) -> Optional[str]:
        i, r = item
        t = time.time()
        rc = launch(grid, r, out, nproc, threads)
        print(f"[{i}/{total}] {r.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t:.0f} s",
              flush=True)
        return None if rc == 0 else r.name

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [name for name in pool.map(one, todo) if name]


def run_submitit(grid, todo: list[tuple[int, GridRun]], total: int, out: Path, nproc: int,
                 opts: SubmititOptions) -> list[str]:
    """Submit one job per run of ``todo`` as a job array; wait for them unless ``opts.wait`` is
    false. Returns the names of failed runs (none when not waiting)."""
    submitit = _import_submitit()
    executor = submitit.AutoExecutor(folder=opts.folder, cluster=opts.cluster)
    params = dict(name="grid", timeout_min=opts.time_limit_min, nodes=1, tasks_per_node=1,
                  cpus_per_task=opts.cpus_per_job, gpus_per_node=opts.gpus_per_job,
                  slurm_array_parallelism=opts.array_parallelism)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [(i, r, executor.submit(launch, grid, r, out, nproc, opts.cpus_per_job)) for i, r in todo]
    for i, r, job in jobs:
        print(f"[{i}/{total}] {r.name}: submitted as job {job.job_id}", flush=True)
    if not opts.wait:
        print(f"not waiting; when the jobs are done, rerun with --aggregate-only (job logs in {opts.folder})")
        return []
    failed = []
    for i, r, job in jobs:
        try:
            rc = job.result()
        except Exception as e:  # the job itself failed (time limit, node failure): the run stays resumable
            print(f"[{i}/{total}] {r.name}: job {job.job_id} FAILED: {type(e).__name__}: {e}", flush=True)
            failed.append(r.name)
            continue
        print(f"[{i}/{total}] {r.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} (job {job.job_id})", flush=True)
        if rc != 0:
            failed.append(r.name)
    return failed


# ---- command line shared by the grid scripts -----------------------------------------------
def add_launch_args(p: argparse.ArgumentParser) -> None:
    """--out, --data-root, --seeds, --nproc, --set, --launcher, --jobs, the submitit group,
    --dry-run and --aggregate-only."""
    p.add_argument("--out", type=Path, required=True, help="grid directory: one sub-directory per run")
    p.add_argument("--data-root", help="data.root for every run (e.g. a folder with cifar10.npz)")
    p.add_argument("--seeds", nargs="*", type=int, help="restrict the grid to these seeds")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun); default 1")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every run, after the grid's own (e.g. train.epochs=12)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: child processes here (default); submitit: one job per run (Slurm)")
    p.add_argument("--jobs", type=int, default=1,
                   help="local launcher: runs at once (each with OMP_NUM_THREADS = cores // jobs); default 1")
    s = p.add_argument_group("submitit launcher")
    s.add_argument("--cluster", choices=("slurm", "local", "debug"),
                   help="submitit cluster (default: Slurm when available, else local processes)")
    s.add_argument("--partition", help="Slurm partition")
    s.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (default 1; >= --nproc)")
    s.add_argument("--cpus-per-job", type=int, default=8, help="CPU cores per job, also its OMP_NUM_THREADS (default 8)")
    s.add_argument("--time-limit", type=int, default=2880, metavar="MIN", help="job time limit in minutes (default 2880)")
    s.add_argument("--array-parallelism", type=int, default=64, help="jobs of the array running at once (default 64)")
    s.add_argument("--job-folder", type=Path, help="submitit logs and pickles (default OUT/_submitit)")
    s.add_argument("--no-wait", action="store_true", help="submit and exit; aggregate later with --aggregate-only")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild the summary from the run directories")


def check_launch_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject out-of-range or contradictory launch options (``p.error``: exit status 2)."""
    for name in ("nproc", "jobs", "cpus_per_job", "time_limit", "array_parallelism"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.gpus_per_job < 0:
        p.error(f"--gpus-per-job must be >= 0, got {args.gpus_per_job}")
    if args.launcher == "local" and args.jobs > 1 and args.nproc > 1:
        p.error("--jobs > 1 with --nproc > 1 oversubscribes this machine; choose one")
    if args.launcher == "submitit" and 0 < args.gpus_per_job < args.nproc:
        p.error(f"--nproc {args.nproc} processes per run need --gpus-per-job >= {args.nproc}, got {args.gpus_per_job}")
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        p.error(f"--set takes KEY=VALUE pairs, got {bad}")


def execute_and_summarise(grid, runs: Sequence[GridRun], args: argparse.Namespace,
                          summarise: Callable[[], str]) -> int:
    """:func:`execute`, then print ``summarise()`` (the grid's tables) and name the failed runs.
    Returns the script's exit status: 0, or 1 when a run failed."""
    failed = execute(grid, runs, args)
    if failed is None:  # dry run, or submitted without waiting
        return 0
    print(summarise())
    if failed:
        print(f"failed runs (see OUT/{LOG_DIR}/RUN.log): {failed}", file=sys.stderr)
        return 1
    return 0


def execute(grid, runs: Sequence[GridRun], args: argparse.Namespace) -> Optional[list[str]]:
    """Dry run, or run every run that is not done with the chosen launcher. Returns the names
    of failed runs, or None when there is nothing to aggregate yet (dry run; submitted without
    waiting)."""
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        for r in runs:
            print(f"{status(grid, r, args.out):8s} {r.name}: --config {r.config} "
                  f"{' '.join(grid.common + r.overrides)}")
        return None
    if args.aggregate_only:
        return []
    todo = []
    for i, r in enumerate(runs, 1):
        if status(grid, r, args.out) == "done":
            print(f"[{i}/{len(runs)}] {r.name}: done, skipped", flush=True)
        else:
            todo.append((i, r))
    if not todo:
        return []
    if args.launcher == "local":
        return run_local(grid, todo, len(runs), args.out, args.nproc, args.jobs)
    opts = SubmititOptions(args.job_folder or args.out / "_submitit", args.cluster, args.partition,
                           args.gpus_per_job, args.cpus_per_job, args.time_limit, args.array_parallelism,
                           not args.no_wait)
    failed = run_submitit(grid, todo, len(runs), args.out, args.nproc, opts)
    return failed if opts.wait else None
