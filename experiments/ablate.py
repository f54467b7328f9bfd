#!/usr/bin/env python3
"""Run a grid of training runs through the training application and aggregate them.

Each run is ``python train_coupled.py --config CONFIG key=value ... out_dir=OUT/RUN``. A run whose
``metrics.jsonl`` already holds its last epoch is skipped, and one that stopped part-way (it has
``last.pt``) is resumed with ``--resume``; the decision is taken when the run starts, so the
whole grid can be restarted after an interruption with either launcher:

* ``--launcher local`` (default): runs in this machine's processes, ``--jobs`` at once;
* ``--launcher submitit``: one job per run through submitit (Slurm on a cluster; ``--cluster
  local`` runs the jobs as local processes), as a job array with ``--array-parallelism``.

Aggregation (the same for both launchers): final test accuracy per run; per model and variant
the min / max / average over seeds, laid out like the table quoted in ``PAPER`` with the
quoted numbers next to them; a table per sweep; ``runs.csv`` of every run; ``curves.png``.

Every run appears once: a sweep value that equals a main-table setting (``steps=2``,
``method=euler``, ``evolution=rda`` on ANODEV2; ``evolution=static``, which is ANODE) is not
run again, its sweep cell reads that main-table run.

Grids (``--grid``):
  quick   synthetic data, tiny width, 1 epoch: tests the script in seconds.
  cpu     the CPU-budget grid on real CIFAR-10 (ResNet-4, 3 seeds x 4 variants, 20 epochs of
          10,000 images, evaluation after every epoch): about 2 hours on 2 cores with --jobs 2;
          the evolution-kind sweep for one seed (3 more ANODEV2 runs) adds about 30 minutes.
  paper   the papers' table: experiments/configs/paper/MODEL-VARIANT.yaml (350 epochs) for
          ResNet-4 / ResNet-10 / AlexNet x 4 variants x 3 seeds, and the Nt / method / evolution
          sweeps of ANODEV2 on ResNet-10 (GPU cluster; docs/REPRODUCE.md).

    python experiments/ablate.py --grid cpu --data-root runs/data --out runs/ablate_cpu --jobs 2 [--no-sweeps]
    python experiments/ablate.py --grid paper --data-root /data/cifar10 --out runs/paper \\
        --launcher submitit --partition gpu --gpus-per-job 1 --cpus-per-job 8 --time-limit 2880
    python experiments/ablate.py --grid cpu --out runs/ablate_cpu --aggregate-only
"""
from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

from experiments.grid import (ROOT, GridRun, add_launch_args, check_launch_args, execute_and_summarise,
                              expected_epochs, read_metrics)
from experiments.output import write_csv

PAPER_CONFIGS = ROOT / "experiments" / "configs" / "paper"
VARIANTS = ("baseline", "neuralode", "anode", "anodev2")
VARIANT_TITLES = {"baseline": "Baseline", "neuralode": "Neural ODE", "anode": "ANODE", "anodev2": "ANODEV2"}
#: CIFAR-10 test accuracy (%) as (min, max, avg) over runs, from the image misc/comparison.png of
#: github amirgholami/anode. Known: its README shows the image under the ANODE paper (arXiv
#: 1902.10298); the image states neither the epochs nor the number of runs. Inferred, not verified:
#: its rows cite "NeuralODE [8]" and "ANODE [9]", which suggests a later paper that cites ANODE,
#: perhaps ANODEV2 (arXiv 1906.04596). docs/RESULTS.md says what is known and what is inferred.
PAPER = {
    "alexnet": {"baseline": (86.84, 87.15, 87.03), "neuralode": (74.54, 76.78, 75.67), "anode": (87.86, 88.14, 88.02)},
    "resnet4": {"baseline": (76.47, 77.35, 76.95), "neuralode": (44.73, 49.91, 47.37), "anode": (76.92, 77.45, 77.30)},
    "resnet10": {"baseline": (87.79, 88.52, 88.10), "neuralode": (64.70, 70.06, 67.94), "anode": (88.48, 88.75, 88.60)},
}
PAPER_SOURCE = ("misc/comparison.png of github amirgholami/anode, shown in its README under the ANODE paper "
                "(epochs and runs not stated; source paper not identified, see docs/RESULTS.md)")


@dataclass(frozen=True)
class Sweep:
    """A one-key sweep of ``variant`` on the grid's sweep model: one run per value and seed.
    ``same_as`` maps a value to the main-table variant that is the same run (not run again)."""

    key: str
    values: tuple
    variant: str
    seeds: tuple[int, ...]
    same_as: dict = field(default_factory=dict)


@dataclass
class Grid:
    """Main table ``models x variants x seeds`` plus ``sweeps`` on ``sweep_model``.
    ``config(model, variant)`` gives each cell's config name or path (default: ``base``)."""

    base: str
    common: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...] = VARIANTS
    sweep_model: Optional[str] = None
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    per_cell_configs: bool = False

    def config(self, model: str, variant: str) -> str:
        return str(PAPER_CONFIGS / f"{model}-{variant}.yaml") if self.per_cell_configs else self.base


def grids(data_root: Optional[str]) -> dict[str, Grid]:
    root = (f"data.root={data_root}",) if data_root else ()
    return {
        "quick": Grid(
            base="smoke",
            common=("data.name=synthetic", "data.subset_train=64", "data.subset_test=32", "model.width=0.25",
                    "train.epochs=1", "train.batch_size=32",
                    "log.evolution_every=0", "log.tensorboard=false", "log.progress=false", "train.device=cpu"),
            models=("resnet4",), seeds=(0, 1), sweep_model="resnet4",
            sweeps={"evolution": Sweep("model.evolution", ("static", "diffusion"), "anodev2", (0,),
                                       {"static": "anode"})}),
        "cpu": Grid(
            base="aconnect",
            common=(*root, "data.subset_train=10000", "train.epochs=20", "train.eval_every=1",
                    "optim.schedule=cosine", "optim.lr=0.05", "optim.warmup_epochs=0", "train.batch_size=128",
                    "train.device=cpu", "log.progress=false", "log.evolution_every=2"),
            models=("resnet4",), seeds=(0, 1, 2), sweep_model="resnet4",
            sweeps={"evolution": Sweep("model.evolution", ("static", "diffusion", "advection", "reaction", "rda"),
                                       "anodev2", (0,), {"static": "anode", "rda": "anodev2"})}),
        "paper": Grid(
            base="aconnect", per_cell_configs=True,
            common=(*root, "train.device=auto", "log.progress=false"),
            models=("resnet4", "resnet10", "alexnet"), seeds=(0, 1, 2), sweep_model="resnet10",
            sweeps={"steps": Sweep("model.steps", (1, 2, 4, 8), "anodev2", (0, 1, 2), {2: "anodev2"}),
                    "method": Sweep("model.method", ("euler", "rk2", "rk4"), "anodev2", (0, 1, 2),
                                    {"euler": "anodev2"}),
                    "evolution": Sweep("model.evolution", ("static", "diffusion", "advection", "reaction", "rda"),
                                       "anodev2", (0, 1, 2), {"static": "anode", "rda": "anodev2"})}),
    }


def _main_run(grid: Grid, model: str, variant: str, seed: int) -> GridRun:
    return GridRun(f"{model}-{variant}-s{seed}", grid.config(model, variant), model, variant, seed)


def select(grid: Grid, models: Optional[Sequence[str]] = None, variants: Optional[Sequence[str]] = None,
           seeds: Optional[Sequence[int]] = None) -> Grid:
    """The grid restricted to ``models`` / ``variants`` / ``seeds`` (None: all); sweeps whose model,
    variant or seeds are all left out go too, and so do the sweep values that stand for a
    main-table run of a variant left out (``--variants anodev2`` runs the evolution sweep
    without its ``static`` cell, which is the ANODE run)."""
    models = tuple(m for m in grid.models if not models or m in models)
    variants = tuple(v for v in grid.variants if not variants or v in variants)
    seeds = tuple(s for s in grid.seeds if not seeds or s in seeds)
    sweeps = {}
    if grid.sweep_model in models:
        for name, sw in grid.sweeps.items():
            kept = tuple(s for s in sw.seeds if s in seeds)
            values = tuple(v for v in sw.values if v not in sw.same_as or sw.same_as[v] in variants)
            if sw.variant in variants and kept and values:
                same_as = {v: main for v, main in sw.same_as.items() if v in values}
                sweeps[name] = replace(sw, seeds=kept, values=values, same_as=same_as)
    return replace(grid, models=models, variants=variants, seeds=seeds, sweeps=sweeps)


def sweep_cells(grid: Grid) -> dict[str, list[tuple[str, GridRun]]]:
    """Sweep name -> ``[(setting, run)]``; a setting listed in ``same_as`` names a main-table run."""
    cells: dict[str, list[tuple[str, GridRun]]] = {}
    model = grid.sweep_model
    for name, sw in grid.sweeps.items():
        short = sw.key.split(".")[-1]
        rows = cells.setdefault(name, [])
        for value, seed in itertools.product(sw.values, sw.seeds):
            if value in sw.same_as:
                run = _main_run(grid, model, sw.same_as[value], seed)
            else:
                run = GridRun(f"{model}-{sw.variant}-{short}={value}-s{seed}", grid.config(model, sw.variant), model,
                          sw.variant, seed, (f"{sw.key}={value}",))
            rows.append((str(value), run))
    return cells


def expand(grid: Grid) -> list[GridRun]:
    """Every run of the grid once: the main table, then the sweep runs that are not main-table runs.

    Raises:
        ValueError: a sweep names a main-table run the grid does not contain (its variant or
            seed is not in the main table), or two runs share a name.
    """
    runs = [_main_run(grid, m, v, s) for m, v, s in itertools.product(grid.models, grid.variants, grid.seeds)]
    main = {r.name for r in runs}
    for name, cells in sweep_cells(grid).items():
        sw = grid.sweeps[name]
        for setting, run in cells:
            if any(setting == str(v) for v in sw.same_as):
                if run.name not in main:
                    raise ValueError(f"sweep {name!r}: setting {setting} stands for main-table run {run.name}, "
                                     f"which the grid does not contain")
            else:
                runs.append(run)
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"runs {dup} appear twice in the grid")
    return runs


# ---- aggregation ------------------------------------------------------------------------
def collect(grid: Grid, runs: list[GridRun], out: Path) -> list[dict]:
    """One row per run: final and best test accuracy (None until finished), summed epoch times."""
    rows = []
    for run in runs:
        hist = read_metrics(out / run.name)
        final = hist[-1] if hist and hist[-1].get("epoch") == expected_epochs(grid, run) else None
        rows.append({"run": run.name, "model": run.model, "variant": run.variant, "seed": run.seed,
                     "sweep_setting": " ".join(run.extra), "epochs": len(hist), "finished": final is not None,
                     "final_test_acc": None if final is None else final.get("test_acc"),
                     "best_test_acc": None if final is None else final.get("best_test_acc"),
                     "train_time_s": round(sum(h.get("epoch_time", 0.0) for h in hist), 1)})
    return rows


def _stats(values: list[Optional[float]]) -> Optional[tuple[float, float, float, int]]:
    """(min, max, average, n) in % of the finished values, None if there are none."""
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return None
    return min(vals), max(vals), sum(vals) / len(vals), len(vals)


def _cell(values: list[Optional[float]]) -> str:
    s = _stats(values)
    return "–" if s is None else f"{s[2]:.2f} ({s[0]:.2f}–{s[1]:.2f}, n={s[3]})"


def tables(grid: Grid, rows: list[dict]) -> str:
    """Markdown: per model, min / max / avg over seeds in the quoted table's layout (quoted
    numbers next to ours where the table has the model), then one table per sweep."""
    acc = {r["run"]: r["final_test_acc"] for r in rows}
    main = [r for r in rows if not r["sweep_setting"]]
    lines = ["Final test accuracy (%), min / max / avg over seeds (n = finished runs); "
             f"'quoted' rows: {PAPER_SOURCE}.", "",
             "| model | runs | " + " | ".join(f"{VARIANT_TITLES[v]} min / max | avg" for v in grid.variants) + " |",
             "|---|---|" + "---:|---:|" * len(grid.variants)]
    for m in grid.models:
        cells = []
        for v in grid.variants:
            s = _stats([r["final_test_acc"] for r in main if r["model"] == m and r["variant"] == v])
            cells.append("– | –" if s is None else f"{s[0]:.2f} / {s[1]:.2f} | {s[2]:.2f} (n={s[3]})")
        lines.append(f"| {m} | this grid | " + " | ".join(cells) + " |")
        if m in PAPER:
            quoted = [PAPER[m].get(v) for v in grid.variants]
            lines.append(f"| {m} | quoted | " + " | ".join("– | –" if q is None else f"{q[0]:.2f} / {q[1]:.2f} | {q[2]:.2f}"
                                                           for q in quoted) + " |")
    lines += per_seed(grid, main)
    for name, cells in sweep_cells(grid).items():
        settings = list(dict.fromkeys(s for s, _ in cells))
        sw = grid.sweeps[name]
        same = ", ".join(f"{k} = the {VARIANT_TITLES[v]} runs" for k, v in sw.same_as.items())
        lines += ["", f"Sweep `{sw.key}` ({grid.sweep_model}, {VARIANT_TITLES[sw.variant]}; {same or 'no shared runs'}):",
                  "", "| " + sw.key + " | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings),
                  "| test acc avg (min–max, n) | " + " | ".join(
                      _cell([acc.get(r.name) for s2, r in cells if s2 == s]) for s in settings) + " |"]
    return "\n".join(lines) + "\n"


def per_seed(grid: Grid, main: list[dict]) -> list[str]:
    """Markdown lines: per model, final test accuracy (%) of every seed and variant and, when the
    grid has both, the paired difference ANODEV2 − ANODE per seed (same seed: same data order,
    initial weights and augmentation; the evolution is the only difference) with its mean."""
    paired = "anode" in grid.variants and "anodev2" in grid.variants
    lines = []
    for m in grid.models:
        acc = {(r["variant"], r["seed"]): r["final_test_acc"] for r in main if r["model"] == m}
        lines += ["", f"Per seed ({m}, final test accuracy %):", "",
                  "| seed | " + " | ".join(VARIANT_TITLES[v] for v in grid.variants)
                  + (" | ANODEV2 − ANODE |" if paired else " |"),
                  "|---|" + "---:|" * (len(grid.variants) + paired)]
        diffs = []
        for seed in grid.seeds:
            vals = [acc.get((v, seed)) for v in grid.variants]
            row = " | ".join("–" if a is None else f"{100 * a:.2f}" for a in vals)
            if paired:
                a, b = acc.get(("anode", seed)), acc.get(("anodev2", seed))
                diff = None if a is None or b is None else 100 * (b - a)
                if diff is not None:
                    diffs.append(diff)
                row += " | " + ("–" if diff is None else f"{diff:+.2f}")
            lines.append(f"| {seed} | {row} |")
        if paired and diffs:
            mean = sum(diffs) / len(diffs)
            lines.append(f"| mean | {' | '.join('' for _ in grid.variants)} | {mean:+.2f} (n={len(diffs)}, "
                         f"{sum(d < 0 for d in diffs)} negative) |")
    return lines


def plot_curves(grid: Grid, out: Path, path: Path) -> None:
    """curves.png: per model, train loss and test accuracy of every main-table run at every
    epoch that has them (one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, len(grid.models))
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 6.4), squeeze=False)
    panels = (("train_loss", "train loss", 1.0), ("test_acc", "test accuracy (%)", 100.0))
    for col, m in enumerate(grid.models):
        for row, (key, label, scale) in enumerate(panels):
            ax = axes[row][col]
            for v in grid.variants:
                hists = [h for h in (read_metrics(out / _main_run(grid, m, v, s).name) for s in grid.seeds) if h]
                for i, hist in enumerate(hists):
                    pts = [(h["epoch"], scale * h[key]) for h in hist if h.get(key) is not None]
                    if pts:
                        ax.plot(*zip(*pts), color=f"C{VARIANTS.index(v)}", alpha=0.8, marker="o", ms=3,
                                label=VARIANT_TITLES[v] if i == 0 else None)
            ax.set_title(f"{m}: {label} (one line per seed)", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(grid: Grid, runs: list[GridRun], out: Path) -> str:
    """Write runs.csv, summary.md and curves.png into ``out``; return the markdown."""
    rows = collect(grid, runs, out)
    write_csv(out / "runs.csv", rows)
    md = tables(grid, rows)
    (out / "summary.md").write_text(md)
    plot_curves(grid, out, out / "curves.png")
    return md


# ---- command line ------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=("quick", "cpu", "paper"), required=True)
    p.add_argument("--models", nargs="*", help="restrict the grid to these models")
    p.add_argument("--variants", nargs="*", choices=VARIANTS, help="restrict the grid to these variants")
    p.add_argument("--no-sweeps", action="store_true", help="the main table only (leave out the grid's sweeps)")
    add_launch_args(p)
    args = p.parse_args(argv)
    check_launch_args(p, args)
    args.parser = p
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    full = grids(args.data_root)[args.grid]
    grid = select(full, args.models, args.variants, args.seeds)
    if args.no_sweeps:
        grid = replace(grid, sweeps={})
    grid.common = (*grid.common, *args.set)
    runs = expand(grid)
    if not runs:
        args.parser.error(f"--models {args.models} --variants {args.variants} --seeds {args.seeds} select no run "
                          f"of grid {args.grid!r}; allowed: models {list(full.models)}, seeds {list(full.seeds)}")
    return execute_and_summarise(grid, runs, args, lambda: aggregate(grid, runs, args.out))


if __name__ == "__main__":
    sys.exit(main())
