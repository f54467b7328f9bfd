"""The memory/time trade-off of every gradient mode and checkpoint budget, across Nt.

One ODE block as in ``bench_adjoint.py`` (``f = conv3x3 -> BatchNorm -> ReLU -> conv3x3``, rk4),
smaller by default (batch 16, 16 channels, 16x16) so that the whole study runs in a few minutes,
for Nt in {2, 4, 8, 16, 32} and the rows: our ``backprop``, ``checkpoint`` with c in
{0, 1, 2, 4, 8, all} slots (binomial / revolve schedule), ``backsolve``, and torchdiffeq's
``odeint`` and ``odeint_adjoint`` (if installed). Every row is measured in fresh subprocesses
(one for memory, one for time): memory is the peak RSS of a training step minus the
forward-only baseline, time the median step as wall time and as process CPU time (which
time-slicing by other processes does not inflate); see ``experiments/bench/block.py``. A budget c >= Nt - 1 is the same schedule as "all"
(``slots_for``); it is measured once and reported for each such c.

Outputs in ``--out``: ``memory_time_study.csv`` (every row), ``recompute_counts.csv`` (measured
``SolveStats.recomputed_steps`` vs the binomial optimum ``binomial_cost(Nt, c)``) and
``memory_time.png`` (memory against time per training step: one curve per Nt through the
checkpoint budgets, markers for the other modes; absolute and relative to our backprop).

    python experiments/memory_time_study.py --out runs/memory_time_study     # ~7 minutes on 2 cores
    python experiments/memory_time_study.py --quick --out /tmp/mts            # seconds
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from experiments.bench import block as bc
from experiments.bench.args import add_measurement_args, check_measurement_args
from experiments.output import fmt_ratio, save_png, write_csv

OTHER_MODES = ("backprop", "backsolve", "tdq_odeint", "tdq_adjoint")


def parse_budgets(text: str) -> list[Optional[int]]:
    """'0,1,2,all' -> [0, 1, 2, None] (None = every state)."""
    out: list[Optional[int]] = []
    for tok in (t.strip() for t in text.split(",") if t.strip()):
        if tok == "all":
            out.append(None)
            continue
        try:
            c = int(tok)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--budgets entries must be ints >= 0 or 'all', got {tok!r}") from None
        if c < 0:
            raise argparse.ArgumentTypeError(f"--budgets entries must be ints >= 0 or 'all', got {tok!r}")
        out.append(c)
    if not out:
        raise argparse.ArgumentTypeError("--budgets must list at least one budget")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_measurement_args(p, steps="2,4,8,16,32", batch=16, size=16, repeats=3)
    p.add_argument("--budgets", type=parse_budgets, default="0,1,2,4,8,all",
                   help="checkpoint budgets c, ints or 'all' (default 0,1,2,4,8,all)")
    p.add_argument("--no-plot", action="store_true", help="do not write memory_time.png")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="time axis of the plot: process CPU time (default; independent of other load) or wall time")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: Nt=3, budgets 0,1,all, batch 2, 4 channels, 8x8 (numbers meaningless)")
    p.add_argument("--out", default="runs/memory_time_study", help="output directory")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.budgets = [3], [0, 1, None]
        args.batch, args.channels, args.size, args.repeats, args.warmup = 2, 4, 8, 1, 0
    check_measurement_args(p, args)
    return args


def budget_label(c: Optional[int]) -> str:
    return "all" if c is None else str(c)


def run(args) -> tuple[list[dict], list[dict], list[str]]:
    """Measure every (Nt, row); returns (rows, recompute table rows, notes)."""
    from anodev2.adjoint import binomial_cost, slots_for

    cfg = bc.BenchConfig(batch=args.batch, channels=args.channels, size=args.size, norm=args.norm,
                         threads=args.threads,
                         warmup=args.warmup, repeats=args.repeats, mmap_threshold=args.mmap_threshold,
                         isolate=args.isolation == "subprocess")
    cfg.check()
    notes = [] if cfg.isolate else [bc.IN_PROCESS_NOTE]
    modes = list(OTHER_MODES)
    if args.no_torchdiffeq or not bc.have_torchdiffeq():
        modes = [m for m in modes if m not in bc.TDQ_MODES]
        notes.append("torchdiffeq rows skipped (--no-torchdiffeq)" if args.no_torchdiffeq else bc.TDQ_MISSING)
    rows, recompute = [], []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for nt in args.steps:
            # one run per distinct schedule: budgets >= Nt - 1 all equal "all"
            effective = {c: (None if c is None or slots_for(nt, c) == nt - 1 else c) for c in args.budgets}
            distinct = list(dict.fromkeys(effective.values()))
            variants = [bc.Variant("checkpoint", c) for c in distinct]
            variants += [bc.Variant(m) for m in modes]
            measured = {r.variant: r for r in bc.measure(cfg, nt, variants, pool=pool)}
            for m in ("backprop", "checkpoint", "backsolve", "tdq_odeint", "tdq_adjoint"):
                if m == "checkpoint":
                    for c in args.budgets:
                        r = measured[bc.Variant("checkpoint", effective[c]).label]
                        d = bc.row_dict(r)
                        d.update(variant=bc.Variant("checkpoint", c).label, checkpoints=budget_label(c),
                                 slots=slots_for(nt, c), same_run_as=r.variant)
                        d["optimal_recomputed"] = binomial_cost(nt, slots_for(nt, c))
                        rows.append(d)
                        recompute.append({"steps": nt, "checkpoints": budget_label(c), "slots": slots_for(nt, c),
                                          "recomputed_measured": r.recomputed_steps,
                                          "recomputed_optimal": d["optimal_recomputed"],
                                          "checkpoints_held": r.checkpoints_held,
                                          "backward_steps": r.backward_steps,
                                          "matches": r.recomputed_steps == d["optimal_recomputed"]})
                elif m in modes:
                    r = measured[bc.Variant(m).label]
                    d = bc.row_dict(r)
                    d.update(checkpoints="", slots="", same_run_as=r.variant, optimal_recomputed="")
                    rows.append(d)
    bp = {d["steps"]: d for d in rows if d["mode"] == "backprop"}
    for d in rows:
        ref = bp.get(d["steps"])
        d["mem_vs_backprop"] = d["mem_mib"] / ref["mem_mib"] if ref and ref["mem_mib"] > 0 else None
        d["time_vs_backprop"] = d["time_s"] / ref["time_s"] if ref else None
        d["cpu_vs_backprop"] = d["cpu_s"] / ref["cpu_s"] if ref else None
    return rows, recompute, notes


def recompute_table(recompute: list[dict], budgets: list[Optional[int]]) -> str:
    """Markdown: rows Nt, columns c; cells 'measured / optimal (held)'."""
    cols = [budget_label(c) for c in budgets]
    lines = ["| Nt | " + " | ".join(f"c={c}" for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for nt in sorted({r["steps"] for r in recompute}):
        cells = []
        for c in cols:
            r = next(x for x in recompute if x["steps"] == nt and x["checkpoints"] == c)
            mark = "" if r["matches"] else " (!)"
            cells.append(f"{r['recomputed_measured']} / {r['recomputed_optimal']}{mark} ({r['checkpoints_held']})")
        lines.append(f"| {nt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_table(rows: list[dict]) -> str:
    head = ("| Nt | row | train mem MiB | mem / backprop | wall ms/step | wall / backprop | cpu ms/step "
            "| cpu / backprop | f evals fwd/step | recomputed |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in rows:
        rec = "-" if d["mode"] != "checkpoint" else str(d["recomputed_steps"])
        same = "" if d["same_run_as"] == d["variant"] else f" (= {d['same_run_as']})"
        lines.append(f"| {d['steps']} | {d['variant']}{same} | {d['mem_mib']:.1f} | {fmt_ratio(d['mem_vs_backprop'])} "
                     f"| {d['time_s'] * 1e3:.1f} | {fmt_ratio(d['time_vs_backprop'])} | {d['cpu_s'] * 1e3:.1f} "
                     f"| {fmt_ratio(d['cpu_vs_backprop'])} | {d['f_calls_forward']}/{d['f_calls_step']} | {rec} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str, clock: str = "cpu") -> None:
    """Memory (x) against time per training step (y; ``clock`` "cpu" or "wall"): one line per Nt
    through the checkpoint budgets, markers for the other rows; left absolute, right relative to
    our backprop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"backprop": "s", "backsolve": "^", "tdq_odeint": "x", "tdq_adjoint": "+"}
    names = {"backprop": "backprop", "backsolve": "backsolve", "tdq_odeint": "torchdiffeq odeint",
             "tdq_adjoint": "torchdiffeq odeint_adjoint"}
    steps = sorted({d["steps"] for d in rows})
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, rel in zip(axes, (False, True)):
        tk = "cpu" if clock == "cpu" else "time"
        xk, yk = ("mem_vs_backprop", f"{tk}_vs_backprop") if rel else ("mem_mib", f"{tk}_s")
        scale = 1.0 if rel else 1e3
        for i, nt in enumerate(steps):
            color = cmap(i / max(1, len(steps) - 1))
            ck = [d for d in rows if d["steps"] == nt and d["mode"] == "checkpoint" and d["same_run_as"] == d["variant"]]
            ck.sort(key=lambda d: d[xk] if d[xk] is not None else 0)
            pts = [(d[xk], d[yk] * scale) for d in ck if d[xk] is not None and d[xk] > 0]
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=f"Nt={nt} checkpoint c=0..all")
                for d in ck:
                    if d[xk] is not None and d[xk] > 0:
                        ax.annotate(d["checkpoints"], (d[xk], d[yk] * scale), fontsize=7,
                                    textcoords="offset points", xytext=(3, 3), color=color)
            for m, mk in markers.items():
                for d in rows:
                    if d["steps"] == nt and d["mode"] == m and d[xk] is not None and d[xk] > 0:
                        ax.plot(d[xk], d[yk] * scale, mk, color=color, markersize=8,
                                label=names[m] if i == len(steps) - 1 else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        if rel:
            ax.set_xlabel("training memory / our backprop (same Nt)")
            ax.set_ylabel(f"{clock} time per step / our backprop (same Nt)")
        else:
            ax.set_xlabel("training memory above forward-only baseline (MiB)")
            ax.set_ylabel(f"{clock} time per training step (ms)")
    if axes[0].get_legend_handles_labels()[0]:  # nothing to show when memory was not measured (in-process)
        axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    plt.close(fig)


def main(argv=None) -> tuple[list[dict], list[dict]]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load0, start = os.getloadavg(), time.time()
    print(f"memory_time_study: batch {args.batch}, {args.channels} channels, {args.size}x{args.size}, rk4, "
          f"Nt {args.steps}, budgets {[budget_label(c) for c in args.budgets]}; "
          f"torch.set_num_threads({args.threads}); {args.warmup} warm-up + {args.repeats} timed steps; "
          f"{args.isolation}, {args.jobs} job(s); load avg {load0[0]:.2f}")
    rows, recompute, notes = run(args)
    for n in notes:
        print("NOTE: " + n)
    mt, rt = main_table(rows), recompute_table(recompute, args.budgets)
    print("\n" + mt + "\n\nRecomputed steps, measured / binomial optimum t(Nt, c) (checkpoints held):\n" + rt)
    write_csv(out / "memory_time_study.csv", rows)
    write_csv(out / "recompute_counts.csv", recompute)
    title = (f"ODE block conv-BN-ReLU-conv, batch {args.batch}, {args.channels} ch, {args.size}x{args.size}, rk4, "
             f"{args.threads} thread(s)")
    if not args.no_plot:
        plot(rows, out / "memory_time.png", title, clock=args.clock)
    load1 = os.getloadavg()
    with open(out / "memory_time_study.md", "w") as fh:
        fh.write(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n\n{title}; load avg "
                 f"{load0[0]:.2f} -> {load1[0]:.2f}; wall {time.time() - start:.0f} s\n\n{mt}\n\n"
                 f"Recomputed steps, measured / optimal (held):\n\n{rt}\n" + "".join(f"\nNOTE: {n}\n" for n in notes))
    bad = [r for r in recompute if not r["matches"]]
    print(f"\nrecompute counts {'all equal' if not bad else 'DIFFER from'} the binomial optimum"
          f"{'' if not bad else f' in {len(bad)} cases'}; wall {time.time() - start:.0f} s, "
          f"load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"wrote {out}/memory_time_study.csv, recompute_counts.csv, memory_time_study.md" +
          ("" if args.no_plot else ", memory_time.png"))
    return rows, recompute


if __name__ == "__main__":
    main()
