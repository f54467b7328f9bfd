#!/usr/bin/env python3
"""Run a grid of training runs through the training application and aggregate them.

Each run is ``python train_coupled.py --config BASE key=value ... out_dir=OUT/RUN``; a run whose
``metrics.jsonl`` already holds its last epoch is skipped, and one that stopped part-way (it has
``last.pt``) is resumed with ``--resume``, so the whole grid can be restarted after an
interruption. Aggregation: final test accuracy per run, then min / max / average over seeds in a
table laid out like the ANODE / ANODEV2 papers (rows: models; columns: baseline, Neural ODE,
ANODE, ANODEV2), a table per sweep (Nt, method, evolution kind, checkpoint budget), a CSV of
every run, and training-curve plots.

Grids (``--grid``):
  quick   synthetic data, tiny width, 1 epoch: tests the script in seconds.
  cpu     the CPU-budget grid on real CIFAR-10 (ResNet-4; 3 seeds x 4 variants, and the
          evolution-kind ablation for one seed); about 90 minutes on 2 CPU cores.
  paper   the papers' grid: 350 epochs, ResNet-4 / ResNet-10 / AlexNet, 3 seeds x 4 variants,
          plus the Nt / method / evolution / checkpoint sweeps on ResNet-10 (GPU).

    python experiments/ablate.py --grid cpu --data-root runs/data --out runs/ablate_cpu --jobs 2
    python experiments/ablate.py --grid cpu --out runs/ablate_cpu --aggregate-only
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "neuralode", "anode", "anodev2")
VARIANT_TITLES = {"baseline": "Baseline", "neuralode": "Neural ODE", "anode": "ANODE", "anodev2": "ANODEV2"}
#: the papers' CIFAR-10 average test accuracies (350 epochs): ANODE (arXiv 1902.10298) Table 1
PAPER = {
    "resnet4": {"baseline": 76.95, "neuralode": 47.37, "anode": 77.30},
    "alexnet": {"baseline": 87.03, "neuralode": 75.67, "anode": 88.02},
    "resnet10": {"baseline": 88.10, "neuralode": 67.94, "anode": 88.60},
}


@dataclass(frozen=True)
class Run:
    """One training run: a name, the model/variant/seed it belongs to, the sweep it is part of
    ('main' for the model x variant x seed table) and its config overrides."""

    name: str
    model: str
    variant: str
    seed: int
    sweep: str
    setting: str
    overrides: tuple[str, ...]


@dataclass
class Grid:
    base: str
    common: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...] = VARIANTS
    #: sweep name -> (config key, values, variant, seeds); each value is one run per seed
    sweeps: dict = field(default_factory=dict)


def grids(data_root: Optional[str]) -> dict[str, Grid]:
    root = [f"data.root={data_root}"] if data_root else []
    return {
        "quick": Grid(
            base="smoke",
            common=("data.name=synthetic", "model.width=0.25", "train.epochs=1", "train.batch_size=64",
                    "log.evolution_every=0", "log.progress=false", "train.device=cpu"),
            models=("resnet4",), seeds=(0, 1),
            sweeps={"evolution": ("model.evolution", ("static",), "anodev2", (0,))}),
        "cpu": Grid(
            base="aconnect",
            common=(*root, "data.subset_train=10000", "train.epochs=4", "train.eval_every=2",
                    "optim.schedule=cosine", "optim.lr=0.05", "optim.warmup_epochs=0", "train.batch_size=128",
                    "train.device=cpu", "log.progress=false", "log.evolution_every=2"),
            models=("resnet4",), seeds=(0, 1, 2),
            sweeps={"evolution": ("model.evolution", ("static", "diffusion", "advection", "reaction"), "anodev2",
                                  (0,))}),
        "paper": Grid(
            base="aconnect",
            common=(*root, "train.epochs=350", "train.device=auto", "log.progress=false"),
            models=("resnet4", "resnet10", "alexnet"), seeds=(0, 1, 2),
            sweeps={"steps": ("model.steps", (1, 2, 4, 8), "anodev2", (0, 1, 2)),
                    "method": ("model.method", ("euler", "rk2", "rk4"), "anodev2", (0, 1, 2)),
                    "evolution": ("model.evolution", ("static", "diffusion", "advection", "reaction", "rda"),
                                  "anodev2", (0, 1, 2)),
                    "checkpoints": ("model.checkpoints", (0, 1, 2), "anodev2", (0,))}),
    }


def expand(grid: Grid, only_models: Optional[list[str]] = None) -> list[Run]:
    """All runs of a grid: the main model x variant x seed table, then each sweep (on the
    first model), leaving out duplicates of main-table runs."""
    models = [m for m in grid.models if not only_models or m in only_models]
    runs: list[Run] = []
    for model, variant, seed in itertools.product(models, grid.variants, grid.seeds):
        runs.append(Run(f"{model}-{variant}-s{seed}", model, variant, seed, "main", variant,
                        (f"model.name={model}", f"model.variant={variant}", f"train.seed={seed}")))
    if models:
        model = models[0]
        for sweep, (key, values, variant, seeds) in grid.sweeps.items():
            for value, seed in itertools.product(values, seeds):
                runs.append(Run(f"{model}-{variant}-{key.split('.')[-1]}={value}-s{seed}", model, variant, seed,
                                sweep, str(value), (f"model.name={model}", f"model.variant={variant}",
                                                    f"train.seed={seed}", f"{key}={value}")))
    return runs


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_epochs(grid: Grid, run: Run) -> int:
    for item in (*grid.common, *run.overrides)[::-1]:
        if item.startswith("train.epochs="):
            return int(item.split("=", 1)[1])
    raise ValueError("grid does not set train.epochs")


def status(grid: Grid, run: Run, out: Path) -> str:
    """'done', 'partial' (resumable from last.pt) or 'todo'."""
    d = out / run.name
    hist = read_metrics(d)
    if hist and hist[-1].get("epoch") == expected_epochs(grid, run):
        return "done"
    return "partial" if (d / "last.pt").exists() else "todo"


def launch(grid: Grid, run: Run, out: Path, nproc: int, threads: Optional[int] = None) -> int:
    d = out / run.name
    d.mkdir(parents=True, exist_ok=True)
    overrides = [*grid.common, *run.overrides, f"out_dir={d}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, str(ROOT / "train_coupled.py")]
    if status(grid, run, out) == "partial":
        cmd += ["--resume", str(d), "--config", grid.base, *overrides]
    else:
        cmd += ["--config", grid.base, *overrides]
    with open(d / "stdout.log", "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        t = time.time()
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        log.write(f"# exit {rc} after {time.time() - t:.0f} s\n")
    return rc


# ---- aggregation ------------------------------------------------------------------------
def collect(grid: Grid, runs: list[Run], out: Path) -> list[dict]:
    rows = []
    for run in runs:
        hist = read_metrics(out / run.name)
        final = hist[-1] if hist and hist[-1].get("epoch") == expected_epochs(grid, run) else None
        rows.append({"run": run.name, "model": run.model, "variant": run.variant, "seed": run.seed,
                     "sweep": run.sweep, "setting": run.setting, "epochs": len(hist),
                     "finished": final is not None,
                     "final_test_acc": None if final is None else final.get("test_acc"),
                     "best_test_acc": None if final is None else final.get("best_test_acc"),
                     "train_time_s": round(sum(h.get("epoch_time", 0.0) for h in hist), 1)})
    return rows


def _stats(values: list[float]) -> Optional[tuple[float, float, float, int]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return min(vals), max(vals), sum(vals) / len(vals), len(vals)


def _cell(values: list[float]) -> str:
    s = _stats(values)
    if s is None:
        return "–"
    lo, hi, avg, n = s
    return f"{100 * avg:.2f} ({100 * lo:.2f}–{100 * hi:.2f}, n={n})"


def tables(rows: list[dict]) -> str:
    """Markdown: the papers' layout (average (min–max) test accuracy %), then one table per sweep."""
    lines = ["Final test accuracy (%) as average (min–max, n = seeds).", "",
             "| model | " + " | ".join(VARIANT_TITLES[v] for v in VARIANTS) + " |",
             "|---|" + "---:|" * len(VARIANTS)]
    models = list(dict.fromkeys(r["model"] for r in rows if r["sweep"] == "main"))
    for m in models:
        cells = [_cell([r["final_test_acc"] for r in rows if r["sweep"] == "main" and r["model"] == m
                        and r["variant"] == v]) for v in VARIANTS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for sweep in dict.fromkeys(r["sweep"] for r in rows if r["sweep"] != "main"):
        sub = [r for r in rows if r["sweep"] == sweep]
        settings = list(dict.fromkeys(r["setting"] for r in sub))
        lines += ["", f"Sweep `{sweep}` ({sub[0]['model']}, {sub[0]['variant']}):", "",
                  "| " + sweep + " | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings),
                  "| test acc | " + " | ".join(_cell([r["final_test_acc"] for r in sub if r["setting"] == s])
                                               for s in settings) + " |"]
    return "\n".join(lines) + "\n"


def plot_curves(grid: Grid, runs: list[Run], out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in runs if r.sweep == "main"]
    models = list(dict.fromkeys(r.model for r in main))
    cols = max(1, len(models))
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 6.4), squeeze=False)
    panels = (("train_loss", "train loss", 1.0), ("test_acc", "test accuracy (%)", 100.0))
    for col, m in enumerate(models):
        for row, (key, label, scale) in enumerate(panels):
            ax = axes[row][col]
            for v in VARIANTS:
                hists = [h for h in (read_metrics(out / r.name) for r in main if r.model == m and r.variant == v) if h]
                for i, hist in enumerate(hists):
                    pts = [(h["epoch"], scale * h[key]) for h in hist if h.get(key) is not None]
                    ax.plot(*zip(*pts), color=f"C{VARIANTS.index(v)}", alpha=0.8, marker="o", ms=3,
                            label=VARIANT_TITLES[v] if i == 0 else None)
            ax.set_title(f"{m}: {label} (one line per seed)", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(grid: Grid, runs: list[Run], out: Path) -> str:
    rows = collect(grid, runs, out)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = tables(rows)
    (out / "summary.md").write_text(md)
    plot_curves(grid, runs, out, out / "curves.png")
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=("quick", "cpu", "paper"), required=True)
    p.add_argument("--out", type=Path, required=True, help="grid directory: one sub-directory per run")
    p.add_argument("--data-root", help="data.root for every run (e.g. a folder with cifar10.npz)")
    p.add_argument("--models", nargs="*", help="restrict the grid to these models")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun); default 1")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every run, after the grid's own (e.g. train.epochs=12)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (each with OMP_NUM_THREADS = cores // jobs); default 1")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild summary.md, runs.csv, curves.png")
    args = p.parse_args(argv)
    if args.nproc < 1:
        p.error(f"--nproc must be >= 1, got {args.nproc}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    grid = grids(args.data_root)[args.grid]
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        p.error(f"--set takes KEY=VALUE pairs, got {bad}")
    grid.common = (*grid.common, *args.set)
    runs = expand(grid, args.models)
    if not runs:
        p.error(f"--models {args.models} selects no model of grid {args.grid!r}; allowed: {list(grid.models)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        for r in runs:
            print(f"{status(grid, r, args.out):8s} {r.name}: --config {grid.base} {' '.join(grid.common + r.overrides)}")
        return 0
    failed = []
    if not args.aggregate_only:
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None

        def one(item):
            i, r = item
            st = status(grid, r, args.out)
            if st == "done":
                print(f"[{i}/{len(runs)}] {r.name}: done, skipped", flush=True)
                return None
            t = time.time()
            rc = launch(grid, r, args.out, args.nproc, threads)
            print(f"[{i}/{len(runs)}] {r.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t:.0f} s"
                  f" ({st})", flush=True)
            return None if rc == 0 else r.name

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            failed = [name for name in pool.map(one, enumerate(runs, 1)) if name]
    print(aggregate(grid, runs, args.out))
    if failed:
        print(f"failed runs (see RUN/stdout.log): {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
