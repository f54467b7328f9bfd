#!/usr/bin/env python3
"""A paired many-seed study of the time-varying-weight families on one network (issue 20).

Every family trains the same network (ResNet-4: stem, one ODE block, classifier) with one
recipe; a seed fixes the training subset, the data order, the augmentation and the initial
weights θ0 for every family alike (the trainer seeds the model build and the loaders with
``train.seed``; the families' own parameters start at zero, so a family's network starts as
ANODE's: tests/experiments/test_families_grid.py checks θ0 is the same across families), so the
families are compared seed by seed. Families:

    baseline    discrete ResNet (the residual block itself)
    anode       ANODE: static θ (the reference of every comparison)
    rda         ANODEV2: reaction-diffusion-advection weight ODE
    generator   ANODEV2 weight ODE dθ/dt = M θ with a learned stable generator
    linear      θ(t) = θ0 + t θ1
    galerkin    θ(t) = θ0 + Σ_k φ_k(t) α_k (Legendre basis)
    time_input  f(t, z): t as an extra input channel of every conv (Chen et al.'s ODE-Net)

After training, every run's final model predicts the whole test set with its evolution on and
off (``python -m experiments.predictions RUN``, run as the grid's post step), and the summary
(``OUT/summary.md``, ``OUT/stats.json``, ``OUT/runs.csv``), computed by experiments/significance.py,
reports: per family mean ± sd, min / max of the final test accuracy, parameters and seconds per
epoch; per family the paired difference to ANODE with its 95 % t interval, two-sided p and
Holm-adjusted p over the family comparisons; McNemar's test of the best family vs ANODE on the
shared test set for every seed; for every evolving family the evolution-off accuracy and the
paired change (off − on) with its 95 % interval. ``tensorboard --logdir OUT`` shows every run
(OUT/resnet4-FAMILY-sSEED) side by side with its evolution views.

Grids (``--grid``):
  quick  synthetic data, width 0.25, 1 epoch, seeds 0 and 1: tests the script in seconds.
  cpu    the CIFAR-10 study for the 2-core CPU: 7 families x 5 seeds = 35 runs of ResNet-4,
         10,000 training images, 10 epochs, full test set; ~2.3 h wall with --jobs 2 on a quiet
         2-core machine (arithmetic from measured seconds per step: grids() docstring;
         ``--measure`` redoes it on the current machine).

    python experiments/families.py --grid cpu --data-root /work/data --out runs/families --jobs 2
    python experiments/families.py --grid cpu --out runs/families --aggregate-only
    python experiments/families.py --grid cpu --measure            # seconds per epoch per family, budget
    python experiments/families.py --grid cpu --data-root /data --out runs/families \\
        --launcher submitit --partition cpu --gpus-per-job 0 --cpus-per-job 2 --time-limit 120

Resumable: a finished run (and its predictions) is skipped, a half-finished one resumes from
last.pt, a trained run without predictions only predicts (experiments/grid.py), so the grid can
run in parts of any length.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from experiments import predictions, significance
from experiments.grid import GridRun, add_launch_args, check_launch_args, execute_and_summarise, read_metrics
from experiments.output import write_csv


@dataclass(frozen=True)
class Family:
    """One family: its name, title, model variant and evolution kind (None: the variant's own)."""

    name: str
    title: str
    variant: str
    evolution: Optional[str] = None

    @property
    def evolving(self) -> bool:
        return self.evolution is not None


FAMILIES = (
    Family("baseline", "discrete ResNet", "baseline"),
    Family("anode", "ANODE (static θ)", "anode"),
    Family("rda", "ANODEV2-rda", "anodev2", "rda"),
    Family("generator", "ANODEV2-generator", "anodev2", "generator"),
    Family("linear", "linear θ(t)", "anodev2", "linear"),
    Family("galerkin", "Galerkin θ(t)", "anodev2", "galerkin"),
    Family("time_input", "f(t, z)", "anodev2", "time_input"),
)
BY_NAME = {f.name: f for f in FAMILIES}
REFERENCE = "anode"

#: The CPU study's wall-time budget in hours (issue 20); the arithmetic is in :func:`grids`.
CPU_BUDGET_H = 3.0


@dataclass
class FamilyGrid:
    """``families x seeds`` runs of ``model`` from config ``base`` with ``common`` overrides."""

    base: str
    common: tuple[str, ...]
    model: str
    seeds: tuple[int, ...]
    families: tuple[str, ...] = tuple(f.name for f in FAMILIES)


def grids(data_root: Optional[str]) -> dict[str, FamilyGrid]:
    """The grids.

    ``cpu``: CIFAR-10, ResNet-4 (width 1, one ODE block, Euler Nt = 3), the ``aconnect`` recipe with
    SGD momentum 0.9, weight decay 5e-4, lr 0.05 cosine, batch 128, crop + flip; a seeded 10,000-image
    training subset, **10 epochs**, test evaluations after epochs 5 and 10 on the full 10,000-image
    test set (McNemar needs the same examples in every run), evolution views every 5 epochs.

    Normalisation: **per-time BatchNorm** (``model.norm=batch_t``: running statistics per
    evaluation time of the ODE block) for every family. Plain BatchNorm keeps one set of running
    statistics per layer of f, shared by every time t of the block, but time-varying weights change
    the activations' statistics with t, so the running averages fit no single t: in the BatchNorm
    version of this grid (seed 0, docs/RESULTS.md) Galerkin θ(t) reached 63.9 % training accuracy
    but 32.66 % test accuracy in eval mode (59.81 % with the test batch's own statistics,
    ``python -m experiments.predictions RUN``); with ``batch_t`` it reached 62.43 % (ANODE 62.95 %).
    GroupNorm (no running statistics) also avoids the collapse but cost this recipe ~16 points
    (ANODE seed 0: 45.35 %); the partial GroupNorm grid of docs/RESULTS.md continues with
    ``--set model.norm=group``.

    Budget (3 h wall, 2 cores, ``--jobs 2``: two runs at once, one thread each). An epoch is 79 SGD
    steps. Planned from CPU time per step at one thread (``--measure``, load 8.5, plain BatchNorm):
    baseline 0.16 s, the ODE families 0.37-0.45 s, calibrated with the previous CPU grid's epoch
    times (docs/figures/ablate_cpu/runs.csv; about 1.4x the CPU-time rate with the evaluation):
    ~ 3,250 s per seed, **~ 2.3 h wall for 5 seeds with two runs at once**; 15 epochs would need
    ~ 3.3 h. Measured: the grid ran in 1 h 37 min for 33 runs (2026-12-02, load 2-4) plus two
    seed-0 runs reused from an earlier start; ``--measure --measure-steps 5`` on the quiet machine
    afterwards (per-time BatchNorm): baseline 0.116 s/step, ANODE 0.297, rda 0.310, generator 0.300,
    linear 0.303, galerkin 0.310, f(t, z) 0.319 (1.26 h for the grid with a core per run). On a
    loaded machine every number scales with the load; the grid is resumable and runs seed by seed,
    so it can be run in parts.
    """
    root = (f"data.root={data_root}",) if data_root else ()
    return {
        "quick": FamilyGrid(
            base="smoke", model="resnet4", seeds=(0, 1),
            common=("data.name=synthetic", "data.subset_train=64", "data.subset_test=32", "model.width=0.25",
                    "model.norm=batch_t",
                    "train.epochs=1", "train.batch_size=32", "log.evolution_every=1", "log.progress=false",
                    "train.device=cpu")),
        "cpu": FamilyGrid(
            base="aconnect", model="resnet4", seeds=(0, 1, 2, 3, 4),
            common=(*root, "model.norm=batch_t", "data.subset_train=10000", "data.subset_test=null", "train.epochs=10",
                    "train.eval_every=5", "optim.schedule=cosine", "optim.lr=0.05", "optim.warmup_epochs=0",
                    "train.batch_size=128", "train.device=cpu", "log.progress=false", "log.evolution_every=5")),
    }


def family_overrides(fam: Family) -> tuple[str, ...]:
    return (f"model.evolution={fam.evolution}",) if fam.evolving else ()


def expand(grid: FamilyGrid, out: Path) -> list[GridRun]:
    """One run per family and seed (seed-major order, so a stopped grid has whole seeds done),
    each followed by its predictions step."""
    runs = []
    for seed in grid.seeds:
        for name in grid.families:
            fam = BY_NAME[name]
            run_name = f"{grid.model}-{name}-s{seed}"
            post = ((sys.executable, "-m", "experiments.predictions", str((out / run_name).resolve())),)
            runs.append(GridRun(run_name, grid.base, grid.model, fam.variant, seed, family_overrides(fam),
                                post=post, outputs=(predictions.FILE,)))
    return runs


# ---- aggregation ------------------------------------------------------------------------
def collect(grid: FamilyGrid, out: Path) -> list[dict]:
    """One row per run: family, seed, finished, final test accuracy (%), evolution-off accuracy
    (%), parameters, mean seconds per epoch, and the per-example correctness (not in the CSV)."""
    rows = []
    for seed in grid.seeds:
        for name in grid.families:
            run_name = f"{grid.model}-{name}-s{seed}"
            d = out / run_name
            hist = read_metrics(d)
            pred = predictions.load(d)
            row = {"run": run_name, "family": name, "seed": seed, "epochs": len(hist), "finished": pred is not None,
                   "test_acc": None, "test_acc_off": None, "params": None,
                   "s_per_epoch": round(statistics.mean(h["epoch_time"] for h in hist), 2) if hist else None,
                   "trainer_test_acc": None, "agrees_with_trainer": None, "off_meaning": None, "_correct": None,
                   "_correct_off": None, "_labels": None}
            if pred is not None:
                correct = pred["pred"] == pred["labels"]
                row.update(test_acc=100.0 * float(correct.mean()), params=int(pred["params"]),
                           trainer_test_acc=100.0 * float(pred["trainer_test_acc"]),
                           _correct=correct, _labels=pred["labels"])
                row["agrees_with_trainer"] = int(correct.sum()) == round(float(pred["trainer_test_acc"]) * correct.size)
                if "pred_off" in pred:
                    off = pred["pred_off"] == pred["labels"]
                    row.update(test_acc_off=100.0 * float(off.mean()), _correct_off=off,
                               off_meaning=str(pred.get("off_meaning", "")))
            rows.append(row)
    return rows


def _fmt(x: Optional[float], spec: str = ".2f", signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, ("+" if signed else "") + spec)


def _p(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def statistics_of(grid: FamilyGrid, rows: list[dict]) -> dict:
    """Every number of the summary (module docstring), as plain data (stats.json)."""
    by = {(r["family"], r["seed"]): r for r in rows}
    fams = [f for f in grid.families]
    res: dict = {"families": {}, "reference": REFERENCE, "mcnemar": None,
                 "mcnemar_rule": f"exact binomial below {significance.MCNEMAR_EXACT_BELOW} discordant examples, "
                                 f"else chi-square with continuity correction (1 df)"}
    for name in fams:
        accs = [by[(name, s)]["test_acc"] for s in grid.seeds if by[(name, s)]["test_acc"] is not None]
        rec = {"title": BY_NAME[name].title, "n": len(accs), "evolving": BY_NAME[name].evolving}
        if accs:
            d = significance.describe(accs)
            rec.update(mean=d.mean, sd=d.sd, min=d.min, max=d.max)
        done = [by[(name, s)] for s in grid.seeds if by[(name, s)]["finished"]]
        rec["params"] = done[0]["params"] if done else None
        times = [by[(name, s)]["s_per_epoch"] for s in grid.seeds if by[(name, s)]["s_per_epoch"] is not None]
        rec["s_per_epoch"] = statistics.median(times) if times else None  # robust to a run on a loaded machine
        if name != REFERENCE and REFERENCE in fams:
            seeds = [s for s in grid.seeds if by[(name, s)]["test_acc"] is not None
                     and by[(REFERENCE, s)]["test_acc"] is not None]
            if seeds:
                pt = significance.paired_t([by[(REFERENCE, s)]["test_acc"] for s in seeds],
                                           [by[(name, s)]["test_acc"] for s in seeds])
                rec["vs_reference"] = {"seeds": seeds, "diffs": [by[(name, s)]["test_acc"] - by[(REFERENCE, s)]["test_acc"]
                                                                 for s in seeds], **pt.__dict__}
        if BY_NAME[name].evolving:
            seeds = [s for s in grid.seeds if by[(name, s)]["test_acc_off"] is not None]
            if seeds:
                on = [by[(name, s)]["test_acc"] for s in seeds]
                off = [by[(name, s)]["test_acc_off"] for s in seeds]
                d = significance.describe(off)
                rec["off"] = {"seeds": seeds, "mean": d.mean, "sd": d.sd, "min": d.min, "max": d.max,
                              "meaning": by[(name, seeds[0])]["off_meaning"],
                              "change": significance.paired_t(on, off).__dict__}
        res["families"][name] = rec
    compared = [n for n in fams if "vs_reference" in res["families"][n]]
    for n, adj in zip(compared, significance.holm([res["families"][n]["vs_reference"]["p"] for n in compared])):
        res["families"][n]["vs_reference"]["p_holm"] = adj
    candidates = [n for n in fams if n != REFERENCE and res["families"][n].get("mean") is not None]
    if candidates and REFERENCE in fams:
        best = max(candidates, key=lambda n: res["families"][n]["mean"])
        tests = []
        for s in grid.seeds:
            a, b = by[(REFERENCE, s)], by[(best, s)]
            if a["_correct"] is None or b["_correct"] is None:
                continue
            if a["_labels"].shape != b["_labels"].shape or (a["_labels"] != b["_labels"]).any():
                raise ValueError(f"seed {s}: {REFERENCE} and {best} were tested on different examples; "
                                 f"McNemar's test needs the same test set")
            m = significance.mcnemar(a["_correct"].tolist(), b["_correct"].tolist())
            tests.append({"seed": s, **m.__dict__, "discordant": m.discordant})
        res["mcnemar"] = {"best": best, "reference": REFERENCE, "per_seed": tests}
    return res


def summary(grid: FamilyGrid, rows: list[dict], st: dict, name: str) -> str:
    """The markdown summary of ``statistics_of`` (module docstring)."""
    fams = st["families"]
    n_seeds = len(grid.seeds)
    lines = [f"# Families grid `{name}` ({grid.model}, {n_seeds} paired seeds {list(grid.seeds)})", "",
             f"Recipe (every run): `--config {grid.base} {' '.join(grid.common)}`", "",
             "Final test accuracy (%) over seeds; Δ = family − ANODE per seed (paired), its 95 % t interval "
             "(n − 1 df) and two-sided p; p_Holm: Holm-adjusted over the families compared with ANODE; "
             "s/epoch: median over the seeds of each run's mean wall seconds per training epoch (wall time "
             "grows with the machine's load while the run trained; `--measure` times the families side by side).", "",
             "| family | n | mean ± sd | min / max | Δ vs ANODE | 95 % CI of Δ | p | p_Holm | params | s/epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in grid.families:
        r = fams[f]
        vs = r.get("vs_reference")
        mean_sd = "–" if r["n"] == 0 else f"{r['mean']:.2f} ± {_fmt(r['sd'])}"
        minmax = "–" if r["n"] == 0 else f"{r['min']:.2f} / {r['max']:.2f}"
        if vs:
            delta, ci = _fmt(vs["mean"], signed=True), (f"[{_fmt(vs['ci_low'], signed=True)}, "
                                                        f"{_fmt(vs['ci_high'], signed=True)}]" if vs["ci_low"] is not None else "–")
            p, ph = _p(vs["p"]), _p(vs.get("p_holm"))
        else:
            delta, ci, p, ph = ("reference", "", "", "") if f == REFERENCE else ("–", "–", "–", "–")
        params = "–" if r["params"] is None else f"{r['params']:,}"
        lines.append(f"| {r['title']} | {r['n']} | {mean_sd} | {minmax} | {delta} | {ci} | {p} | {ph} | "
                     f"{params} | {_fmt(r['s_per_epoch'], '.1f')} |")
    lines += ["", "Per seed (final test accuracy %):", "",
              "| seed | " + " | ".join(fams[f]["title"] for f in grid.families) + " |",
              "|---|" + "---:|" * len(grid.families)]
    by = {(r["family"], r["seed"]): r for r in rows}
    for s in grid.seeds:
        lines.append(f"| {s} | " + " | ".join(_fmt(by[(f, s)]["test_acc"]) for f in grid.families) + " |")
    evolving = [f for f in grid.families if "off" in fams[f]]
    if evolving:
        lines += ["", "Evolution off after training (the family's own off switch; same test set): accuracy (%) "
                  "and the paired change off − on with its 95 % t interval.", "",
                  "| family | off means | on: mean | off: mean ± sd | off: min / max | off − on | 95 % CI | p |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for f in evolving:
            o, c = fams[f]["off"], fams[f]["off"]["change"]
            ci = "–" if c["ci_low"] is None else f"[{_fmt(c['ci_low'], signed=True)}, {_fmt(c['ci_high'], signed=True)}]"
            lines.append(f"| {fams[f]['title']} | {o['meaning'] or '–'} | {fams[f]['mean']:.2f} | "
                         f"{o['mean']:.2f} ± {_fmt(o['sd'])} | "
                         f"{o['min']:.2f} / {o['max']:.2f} | {_fmt(c['mean'], signed=True)} | {ci} | {_p(c['p'])} |")
    mc = st["mcnemar"]
    if mc and mc["per_seed"]:
        lines += ["", f"McNemar's test, best family by mean ({fams[mc['best']]['title']}) vs ANODE on the shared "
                  f"test set, per seed ({st['mcnemar_rule']}): only ANODE right / only {fams[mc['best']]['title']} "
                  "right, two-sided p.", "",
                  "| seed | test images | only ANODE | only best | method | p |", "|---|---:|---:|---:|---|---:|"]
        for t in mc["per_seed"]:
            lines.append(f"| {t['seed']} | {t['n']} | {t['only_a']} | {t['only_b']} | {t['method']} | {_p(t['p'])} |")
    bad = [r["run"] for r in rows if r["agrees_with_trainer"] is False]
    if bad:
        lines += ["", f"WARNING: the re-evaluated accuracy differs from the trainer's final test accuracy for {bad}."]
    missing = [r["run"] for r in rows if not r["finished"]]
    if missing:
        lines += ["", f"Not finished (left out of the statistics): {', '.join(missing)}."]
    lines += ["", "Every run's curves and evolution views: `tensorboard --logdir OUT` (one run per family and seed)."]
    return "\n".join(lines) + "\n"


def plot_effects(grid: FamilyGrid, rows: list[dict], st: dict, path: Path) -> bool:
    """``effects.png``: per family the paired differences to ANODE (one dot per seed, the mean with
    its 95 % t interval) and, for the evolving families, the change when the evolution is switched
    off after training (off − on, same layout). Returns False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["family"], r["seed"]): r for r in rows}
    fams = st["families"]
    panels = [("Δ test accuracy vs ANODE (points)", [
        (fams[n]["title"], fams[n]["vs_reference"]["diffs"], fams[n]["vs_reference"])
        for n in grid.families if "vs_reference" in fams[n]])]
    panels.append(("evolution off − on (points)", [
        (fams[n]["title"], [by[(n, s)]["test_acc_off"] - by[(n, s)]["test_acc"] for s in fams[n]["off"]["seeds"]],
         fams[n]["off"]["change"]) for n in grid.families if "off" in fams[n]]))
    if not panels[0][1]:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, max(2.6, 1.2 + 0.45 * len(panels[0][1]))), sharey=False)
    for ax, (title, items) in zip(axes, panels):
        for y, (label, diffs, t) in enumerate(items):
            ax.scatter(diffs, [y] * len(diffs), s=14, color="0.55", zorder=2)
            if t.get("ci_low") is not None:
                ax.plot([t["ci_low"], t["ci_high"]], [y, y], color="C0", lw=2, zorder=1)
            ax.plot([t["mean"]], [y], "D", color="C0", ms=6, zorder=3)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_yticks(range(len(items)), [label for label, _, _ in items])
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    n = len(grid.seeds)
    fig.suptitle(f"{grid.model}, {n} paired seeds: dots = seeds, diamond = mean, bar = 95 % paired t interval",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def aggregate(grid: FamilyGrid, out: Path, name: str) -> str:
    """Write runs.csv, stats.json, summary.md and effects.png into ``out``; return the markdown."""
    rows = collect(grid, out)
    write_csv(out / "runs.csv", [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    st = statistics_of(grid, rows)
    (out / "stats.json").write_text(json.dumps(st, indent=1, default=float) + "\n")
    md = summary(grid, rows, st, name)
    if plot_effects(grid, rows, st, out / "effects.png"):
        md = md.replace("Every run's curves", "Paired effects with their intervals: `effects.png`.\n\nEvery run's curves")
    (out / "summary.md").write_text(md)
    return md


# ---- measuring the budget --------------------------------------------------------------------
def measure(grid: FamilyGrid, steps: int, batch: int) -> list[dict]:
    """Seconds per training step (batch ``batch``, SGD, 1 thread) and per evaluation batch of
    every family, interleaved (each round times one step of every family, so a busy period of
    a shared machine hits all alike); medians of wall and process CPU time."""
    import torch
    import torch.nn.functional as F

    from anodev2.models import build
    from experiments.bench.timing import time_steps

    torch.set_num_threads(1)
    width = next((float(o.split("=")[1]) for o in grid.common if o.startswith("model.width=")), 1.0)
    norm = _override(grid, "model.norm", "batch")  # the grid's normalisation (batch_t for cpu)
    nets = {}
    for name in grid.families:
        fam = BY_NAME[name]
        torch.manual_seed(0)
        opts = {"evolution": fam.evolution} if fam.evolving else {}
        net = build(grid.model, fam.variant, width=width, norm=norm, **opts)
        nets[name] = (net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    xe = torch.randn(2 * batch, 3, 32, 32)
    wall: dict = {n: [] for n in nets}
    cpu: dict = {n: [] for n in nets}
    ev: dict = {n: [] for n in nets}
    for rnd in range(steps + 1):
        for name, (net, opt) in nets.items():
            def step():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net.train()(x), y).backward()
                opt.step()

            def evaluate():
                with torch.no_grad():
                    net.eval()(xe)

            t = time_steps(step, 0, 1)
            e = time_steps(evaluate, 0, 1)
            if rnd:  # round 0 warms up
                wall[name].append(t["time_s"])
                cpu[name].append(t["cpu_s"])
                ev[name].append(e["time_s"])
    return [{"family": n, "params": sum(p.numel() for p in nets[n][0].parameters()),
             "step_s": statistics.median(wall[n]), "step_cpu_s": statistics.median(cpu[n]),
             "eval_batch_s": statistics.median(ev[n])} for n in nets]


def _override(grid: FamilyGrid, key: str, default):
    for item in grid.common[::-1]:
        if item.startswith(key + "="):
            v = item.split("=", 1)[1]
            return None if v == "null" else type(default)(v) if default is not None else int(v)
    return default


def budget(grid: FamilyGrid, rows: list[dict], jobs: int, batch: int) -> list[str]:
    """The budget arithmetic of ``grid`` from measured step times (lines of text). Two estimates:
    from wall time as measured (inflated by whatever else runs here) and from process CPU time
    (what a run takes when it has its core to itself; evaluations are scaled by the same
    cpu/wall ratio as the training steps)."""
    n_train = _override(grid, "data.subset_train", 50000) or 50000
    n_test = _override(grid, "data.subset_test", 10000) or 10000
    epochs = _override(grid, "train.epochs", 1)
    every = _override(grid, "train.eval_every", 1)
    steps = math.ceil(n_train / batch)
    eval_batches = math.ceil(n_test / (2 * batch))
    evals = len({e for e in range(1, epochs + 1) if e % every == 0} | {epochs})
    try:
        load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        load = "load average unknown"
    lines = [f"{grid.model}, batch {batch}, {n_train} training / {n_test} test images, {epochs} epochs "
             f"({steps} steps each), {evals} evaluations + the predictions step (on/off), {len(grid.seeds)} seeds, "
             f"--jobs {jobs} (1 thread per run); measured with {load}",
             "", "| family | params | s/step wall | s/step cpu | s/epoch wall | s/epoch cpu | s/eval wall | "
                 "s/run wall | s/run cpu |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = {"wall": 0.0, "cpu": 0.0}
    for r in rows:
        fam = BY_NAME[r["family"]]
        runs = {}
        for clock, step_s in (("wall", r["step_s"]), ("cpu", r["step_cpu_s"])):
            per_epoch = steps * step_s
            per_eval = eval_batches * r["eval_batch_s"] * step_s / r["step_s"]
            n_eval = evals + (2 if fam.evolving else 1)  # + predictions with the evolution on (and off)
            runs[clock] = (per_epoch, per_eval, epochs * per_epoch + n_eval * per_eval + 2 * 10.0)  # 2 start-ups
            total[clock] += runs[clock][2] * len(grid.seeds)
        lines.append(f"| {r['family']} | {r['params']:,} | {r['step_s']:.3f} | {r['step_cpu_s']:.3f} | "
                     f"{runs['wall'][0]:.1f} | {runs['cpu'][0]:.1f} | {runs['wall'][1]:.1f} | {runs['wall'][2]:.0f} | "
                     f"{runs['cpu'][2]:.0f} |")
    lines += ["", f"grid wall time with {jobs} runs at once: {total['wall'] / jobs / 3600:.2f} h at the measured "
              f"load, {total['cpu'] / jobs / 3600:.2f} h with a core per run (budget {CPU_BUDGET_H} h)"]
    return lines


# ---- command line ------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=("quick", "cpu"), required=True)
    p.add_argument("--families", nargs="*", choices=[f.name for f in FAMILIES],
                   help="restrict the grid to these families (default: all; ANODE is the reference)")
    p.add_argument("--measure", action="store_true",
                   help="time every family's training step and evaluation here and print the grid's budget "
                        "arithmetic; trains nothing (--out not needed)")
    p.add_argument("--measure-steps", type=int, default=3, help="timed rounds of --measure (default 3)")
    add_launch_args(p)
    for a in p._actions:  # --out is only required when something is run
        if a.dest == "out":
            a.required = False
    args = p.parse_args(argv)
    check_launch_args(p, args)
    if args.out is None and not args.measure:
        p.error("--out is required (except with --measure)")
    args.parser = p
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    full = grids(args.data_root)[args.grid]
    fams = tuple(f for f in full.families if not args.families or f in args.families)
    seeds = tuple(s for s in full.seeds if not args.seeds or s in args.seeds)
    if not fams or not seeds:
        args.parser.error(f"--families {args.families} --seeds {args.seeds} select no run of grid {args.grid!r}; "
                          f"allowed: families {list(full.families)}, seeds {list(full.seeds)}")
    grid = replace(full, families=fams, seeds=seeds, common=(*full.common, *args.set))
    if args.measure:
        batch = _override(grid, "train.batch_size", 128)
        t = time.time()
        rows = measure(grid, args.measure_steps, batch)
        print("\n".join(budget(grid, rows, max(args.jobs, 2), batch)))
        print(f"(measured in {time.time() - t:.0f} s)")
        return 0
    runs = expand(grid, args.out)
    return execute_and_summarise(grid, runs, args, lambda: aggregate(grid, args.out, args.grid))


if __name__ == "__main__":
    sys.exit(main())
