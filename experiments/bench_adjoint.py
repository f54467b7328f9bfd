"""Memory and time of one training step of one ODE block, per gradient mode, against torchdiffeq.

The block: ``dz/dt = f(z)``, ``f = conv3x3 -> GroupNorm -> ReLU -> conv3x3`` (16 channels;
``--norm batch`` for BatchNorm),
input ``[32, 16, 32, 32]``, rk4 with Nt in {4, 8, 16} steps on [0, 1]. Rows: our ``backprop``,
``checkpoint`` (all states; c = 2 and 4 slots), ``backsolve``, and torchdiffeq 0.2.5's
``odeint`` / ``odeint_adjoint`` (method="rk4", options step_size = 1/Nt) on the same f.

torchdiffeq's "rk4" is the 3/8-rule, ours the classical RK4; both evaluate f 4 times per step
and take Nt steps: the f calls of the forward pass and of a whole training step are counted in
every row (column ``f evals fwd/step``) so this is measured, not assumed.

Each row is measured in fresh subprocesses (``sys.executable``), one for memory and one for
time; memory = peak RSS of a training step (VmHWM) minus the peak RSS of the same block's
forward-only (``torch.no_grad``) baseline; time = median wall time of ``--repeats`` training steps after ``--warmup`` (threads fixed with
``torch.set_num_threads``, printed), and the median process CPU time of the same steps, which
other processes sharing the cores do not inflate. See ``experiments/bench/block.py``.

Targets (issue 8; at Nt = 16, vs torchdiffeq odeint in the same run): checkpoint(all) memory
<= 0.16x; checkpoint(c=4) memory <= 0.11x; checkpoint(all, keep fwd) time <= 1.5x and faster
than torchdiffeq odeint_adjoint (the input-only checkpoint forward is at its time floor
(3F+B)/(F+B), about 1.7x, and is only compared with odeint_adjoint); our backprop no slower
than torchdiffeq odeint. Time targets are judged on wall time and, separately, on CPU time.

    python experiments/bench_adjoint.py --out runs/bench_adjoint          # ~7 minutes on 2 cores
    python experiments/bench_adjoint.py --quick --out /tmp/bench           # seconds, numbers meaningless
                                                                            # (rows in-process, see --isolation)

torchdiffeq is optional (``pip install -r requirements-bench.txt``): without it its rows and
the targets that need them are skipped with a note.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from experiments.bench import block as bc
from experiments.bench.args import add_measurement_args, check_measurement_args
from experiments.output import fmt_ratio, write_csv

VARIANTS = (bc.Variant("backprop"), bc.Variant("checkpoint", None), bc.Variant("checkpoint", 2),
            bc.Variant("checkpoint", 4), bc.Variant("checkpoint", None, keep_forward=True),
            bc.Variant("backsolve"), bc.Variant("tdq_odeint"), bc.Variant("tdq_adjoint"))
TARGET_STEPS = 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_measurement_args(p, steps="4,8,16", batch=32, size=32, repeats=5)
    p.add_argument("--profile", action="store_true",
                   help="also torch.profiler one step of every row at the target Nt (in this process); "
                        "writes profile_<row>.txt")
    p.add_argument("--quick", action="store_true",
                   help="smoke test in seconds: Nt=4, batch 2, 4 channels, 8x8, 1 timed step (numbers meaningless)")
    p.add_argument("--out", default="runs/bench_adjoint", help="output directory (default runs/bench_adjoint)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.channels, args.size, args.repeats, args.warmup = [4], 2, 4, 8, 1, 0
    check_measurement_args(p, args)
    return args


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b <= 0 else a / b


def add_ratios(rows: list[bc.Row]) -> list[dict]:
    """Flat dicts with memory/time ratios against torchdiffeq odeint and our backprop (same Nt)."""
    out = []
    for r in rows:
        same = {x.variant: x for x in rows if x.steps == r.steps}
        tdq, bp = same.get("torchdiffeq odeint"), same.get("backprop")
        d = bc.row_dict(r)
        d["mem_vs_tdq_odeint"] = ratio(r.mem_mib, tdq and tdq.mem_mib)
        d["time_vs_tdq_odeint"] = ratio(r.time_s, tdq and tdq.time_s)
        d["mem_vs_backprop"] = ratio(r.mem_mib, bp and bp.mem_mib)
        d["time_vs_backprop"] = ratio(r.time_s, bp and bp.time_s)
        d["cpu_vs_tdq_odeint"] = ratio(r.cpu_s, tdq and tdq.cpu_s)
        d["cpu_vs_backprop"] = ratio(r.cpu_s, bp and bp.cpu_s)
        out.append(d)
    return out


def table(rows: list[dict]) -> str:
    """Markdown table of every row (ratios against torchdiffeq odeint and our backprop, same Nt)."""
    from anodev2.adjoint import binomial_cost, slots_for

    head = ("| Nt | variant | train mem MiB | mem / tdq odeint | mem / backprop | wall ms/step | wall / tdq odeint "
            "| wall / backprop | cpu ms/step | cpu / tdq odeint | cpu / backprop | f evals fwd/step "
            "| recomputed (t(Nt,c)) | held |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in rows:
        rec = "-"
        if d["mode"] == "checkpoint":
            opt = binomial_cost(d["steps"], slots_for(d["steps"], d["checkpoints"]))
            rec = f"{d['recomputed_steps']} ({opt})"
        r = fmt_ratio
        lines.append(
            f"| {d['steps']} | {d['variant']} | {d['mem_mib']:.1f} | {r(d['mem_vs_tdq_odeint'])} "
            f"| {r(d['mem_vs_backprop'])} | {d['time_s'] * 1e3:.0f} | {r(d['time_vs_tdq_odeint'])} "
            f"| {r(d['time_vs_backprop'])} | {d['cpu_s'] * 1e3:.0f} | {r(d['cpu_vs_tdq_odeint'])} "
            f"| {r(d['cpu_vs_backprop'])} | {d['f_calls_forward']}/{d['f_calls_step']} | {rec} "
            f"| {'-' if d['checkpoints_held'] is None else d['checkpoints_held']} |")
    return "\n".join(lines)


def targets(rows: list[dict], nt: int, memory: bool = True) -> list[tuple[str, Optional[float], float, str]]:
    """(description, measured ratio, bound, PASS/MISS/SKIP) for each target at Nt = ``nt``;
    time targets are judged on wall time (the issue's measure) and on CPU time (not inflated by
    other processes); ``memory=False`` (rows not isolated) skips the memory targets."""
    at = {d["variant"]: d for d in rows if d["steps"] == nt}

    def get(variant: str, key: str) -> Optional[float]:
        return at[variant][key] if variant in at else None

    spec = [
        ("checkpoint(all) memory / torchdiffeq odeint",
         get("checkpoint(all)", "mem_vs_tdq_odeint") if memory else None, 0.16, False),
        ("checkpoint(c=4) memory / torchdiffeq odeint",
         get("checkpoint(c=4)", "mem_vs_tdq_odeint") if memory else None, 0.11, False),
    ]
    for clock, key in (("wall", "time_s"), ("cpu", "cpu_s")):
        spec += [
            (f"checkpoint(all) {clock} time / torchdiffeq odeint_adjoint (faster: < 1)",
             ratio(get("checkpoint(all)", key), get("torchdiffeq odeint_adjoint", key)), 1.0, True),
            (f"checkpoint(all, keep fwd) {clock} time / torchdiffeq odeint",
             ratio(get("checkpoint(all, keep fwd)", key), get("torchdiffeq odeint", key)), 1.5, False),
            (f"checkpoint(all, keep fwd) {clock} time / torchdiffeq odeint_adjoint (faster: < 1)",
             ratio(get("checkpoint(all, keep fwd)", key), get("torchdiffeq odeint_adjoint", key)), 1.0, True),
            (f"backprop {clock} time / torchdiffeq odeint (no slower: <= 1)",
             ratio(get("backprop", key), get("torchdiffeq odeint", key)), 1.0, False),
        ]
    out = []
    for desc, val, bound, strict in spec:
        verdict = "SKIP" if val is None else ("PASS" if (val < bound if strict else val <= bound) else "MISS")
        out.append((desc, val, bound, verdict))
    return out


def time_model(rows: list[dict], nt: int) -> list[str]:
    """Where the time of a step goes at Nt = ``nt``, from the measured forward/backward split.

    The checkpointed adjoint's forward runs without a graph (F0: its own measured forward);
    its backward re-runs t(Nt, c) steps without a graph (t/Nt * F0) and re-evaluates the Nt
    steps with a graph plus their vector-Jacobian products, which is about one backprop step
    (bp). Model: ``ckpt ≈ bp + F0 * (1 + t/Nt)``. Keeping the forward pass's states instead of
    recomputing them would give ``bp + F0``.
    """
    at = {d["variant"]: d for d in rows if d["steps"] == nt}
    bp = at.get("backprop")
    if bp is None:
        return []
    lines = [f"Where the time goes at Nt={nt} (wall medians, ms; model = backprop step + F0 * (1 + t/Nt), "
             "F0 = the row's forward without graph, t = recomputed steps):",
             f"  {'row':<28s}{'forward':>9s}{'backward':>10s}{'step':>8s}{'model':>8s}"]
    for name, d in at.items():
        model = ""
        if d["mode"] == "checkpoint":
            model = f"{(bp['time_s'] + d['step_forward_s'] * (1 + d['recomputed_steps'] / nt)) * 1e3:8.0f}"
        lines.append(f"  {name:<28s}{d['step_forward_s'] * 1e3:9.0f}{d['step_backward_s'] * 1e3:10.0f}"
                     f"{d['time_s'] * 1e3:8.0f}{model}")
    ck, tdq, adj = at.get("checkpoint(all)"), at.get("torchdiffeq odeint"), at.get("torchdiffeq odeint_adjoint")
    if ck is not None:
        f0 = ck["step_forward_s"]
        rec = ck["recomputed_steps"] / nt * f0
        lines.append(f"  checkpoint(all) ~ backprop {bp['time_s'] * 1e3:.0f} + forward without graph {f0 * 1e3:.0f} "
                     f"+ recompute sweep {rec * 1e3:.0f} ({ck['recomputed_steps']} steps) = "
                     f"{(bp['time_s'] + f0 + rec) * 1e3:.0f}; measured {ck['time_s'] * 1e3:.0f}")
        no_sweep = ck["time_s"] - rec
        extra = "".join(f", {no_sweep / o['time_s']:.2f}x {n}" for n, o in (("torchdiffeq odeint", tdq),
                        ("odeint_adjoint", adj)) if o is not None)
        lines.append(f"  without the recompute sweep (states kept from the forward pass): ~{no_sweep * 1e3:.0f} ms"
                     f" = {no_sweep / bp['time_s']:.2f}x backprop{extra}")
    return lines


def peak_held_states(nt: int, checkpoints: Optional[int]) -> int:
    """Most step states (besides the block input) held at once at a reversal of the checkpoint
    schedule: the slots in use plus a transient state the schedule advanced to without storing."""
    from anodev2.adjoint import revolve_schedule, slots_for
    from anodev2.adjoint.schedule import Advance, Free, Reverse

    held, peak = set(), 0
    for a in revolve_schedule(nt, slots_for(nt, checkpoints)):
        if isinstance(a, Advance):
            held.add(a.stop)
        elif isinstance(a, Free):
            held.discard(a.index)
        elif isinstance(a, Reverse):
            peak = max(peak, len(held))
    return peak


def step_graph_bytes(cfg: bc.BenchConfig, nt: int) -> tuple[int, int]:
    """(state bytes S, bytes saved by autograd for one RK step of the block's f): the distinct
    storages saved during one step under grad, apart from the step's input state and the
    parameters (held anyway), measured with ``torch.autograd.graph.saved_tensors_hooks``."""
    import torch

    spec = {**bc.asdict(cfg), "steps": nt, "mode": "backprop", "checkpoints": None, "keep_forward": False}
    model, f, x = bc.build_block(spec)
    y = x.detach().requires_grad_(True)
    skip = {p.untyped_storage().data_ptr() for p in f.parameters()} | {y.untyped_storage().data_ptr()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    from anodev2.solvers import rk_step, get_tableau

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = rk_step(lambda t, z: (f(t, z[0]),), 0.0, (y,), 1.0 / nt, get_tableau(cfg.method))
    del out
    return y.numel() * y.element_size(), sum(saved.values())


def memory_accounting(cfg: bc.BenchConfig, rows: list[dict], nt: int) -> list[str]:
    """The checkpoint rows' measured memory against their accounted floor: states held at the
    first reversal + one step's autograd graph + the adjoint buffers (λ_{n+1} and λ_n, 2 states)."""
    at = [d for d in rows if d["steps"] == nt and d["mode"] == "checkpoint"]
    if not at:
        return []
    s_bytes, graph = step_graph_bytes(cfg, nt)
    mib = 2.0 ** 20
    lines = [f"Memory accounting at Nt={nt} (state S = {s_bytes / mib:.2f} MiB; one step's saved graph "
             f"G = {graph / mib:.2f} MiB = {graph / s_bytes:.1f} S; adjoint buffers 2 S):",
             f"  {'row':<28s}{'states':>7s}{'floor MiB':>11s}{'measured':>10s}{'/ floor':>9s}"]
    for d in at:
        c = None if d["checkpoints"] in (None, "", "all") else int(d["checkpoints"])
        states = peak_held_states(nt, c)
        floor = (states + 2) * s_bytes + graph
        lines.append(f"  {d['variant']:<28s}{states:7d}{floor / mib:11.1f}{d['mem_mib']:10.1f}"
                     f"{d['mem_mib'] * mib / floor:9.2f}")
    return lines


def profile(cfg: bc.BenchConfig, nt: int, variants: list[bc.Variant], out: Path) -> list[str]:
    """torch.profiler over one training step (after one warm-up step) of each variant, in this
    process: per variant the 8 ops with the most self CPU time, written to ``profile_<mode>.txt``;
    returns one summary line per variant (total, convolution forward/backward time and calls)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    lines = [f"torch.profiler, one training step at Nt={nt} (in-process; self CPU time, ms):"]
    try:
        for v in variants:
            spec = {**bc.asdict(cfg), "steps": nt, "mode": v.mode, "checkpoints": v.checkpoints,
                    "keep_forward": v.keep_forward}
            model, f, x = bc.build_block(spec)
            model.train()

            def step():
                model(x).square().mean().backward()
                for p in model.parameters():
                    p.grad = None
                x.grad = None

            step()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            avgs = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in avgs) / 1e3
            conv_f = [e for e in avgs if e.key in ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                                                   "aten::thnn_conv2d")]
            conv_b = [e for e in avgs if e.key == "aten::convolution_backward"]
            name = v.label.replace(" ", "_").replace("(", "_").replace(")", "").replace("=", "")
            (out / f"profile_{name}.txt").write_text(
                avgs.table(sort_by="self_cpu_time_total", row_limit=12) + "\n")
            top = sorted(avgs, key=lambda e: -e.self_cpu_time_total)[:8]
            lines.append(f"  {v.label:<27s} total {total:7.0f}; conv fwd {sum(e.self_cpu_time_total for e in conv_f) / 1e3:6.0f}"
                         f" ({sum(e.count for e in conv_f)} calls), conv bwd "
                         f"{sum(e.self_cpu_time_total for e in conv_b) / 1e3:6.0f} ({sum(e.count for e in conv_b)} calls)")
            lines.append("      top: " + ", ".join(f"{e.key.replace('aten::', '')} {e.self_cpu_time_total / 1e3:.0f}"
                                                   for e in top))
    finally:
        torch.set_num_threads(threads)
    return lines


def select_variants(no_torchdiffeq: bool) -> tuple[list[bc.Variant], list[str]]:
    """The rows to run and notes on skipped ones (torchdiffeq rows need the optional package)."""
    if no_torchdiffeq:
        return [v for v in VARIANTS if not v.needs_torchdiffeq], ["torchdiffeq rows skipped (--no-torchdiffeq)"]
    if not bc.have_torchdiffeq():
        return [v for v in VARIANTS if not v.needs_torchdiffeq], [bc.TDQ_MISSING]
    return list(VARIANTS), []


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = bc.BenchConfig(batch=args.batch, channels=args.channels, size=args.size, norm=args.norm,
                         threads=args.threads,
                         warmup=args.warmup, repeats=args.repeats, mmap_threshold=args.mmap_threshold,
                         isolate=args.isolation == "subprocess")
    cfg.check()
    variants, notes = select_variants(args.no_torchdiffeq)
    if not cfg.isolate:
        notes.append(bc.IN_PROCESS_NOTE)
    for n in notes:
        print("NOTE: " + n)
    load0 = os.getloadavg()
    print(f"bench_adjoint: batch {cfg.batch}, {cfg.channels} channels, {cfg.size}x{cfg.size}, rk4, Nt {args.steps}; "
          f"torch.set_num_threads({cfg.threads}); {cfg.warmup} warm-up + {cfg.repeats} timed steps per row; "
          f"{args.isolation}, {args.jobs} job(s); python {platform.python_version()}; load avg {load0[0]:.2f}")
    start = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = add_ratios([r for nt in args.steps for r in bc.measure(cfg, nt, variants, pool=pool)])
    load1 = os.getloadavg()
    md = table(rows)
    print("\n" + md)
    nt = TARGET_STEPS if TARGET_STEPS in args.steps else max(args.steps)
    print(f"\nTargets at Nt={nt}" + ("" if nt == TARGET_STEPS else f" (Nt={TARGET_STEPS} not run)") + ":")
    verdicts = targets(rows, nt, memory=cfg.isolate)
    lines = []
    for desc, val, bound, verdict in verdicts:
        line = (f"  {verdict:4s}  {desc}: {'-' if val is None else f'{val:.3f}'} "
                f"(target {'<' if 'faster' in desc else '<='} {bound})")
        lines.append(line)
        print(line)
    model_lines = time_model(rows, nt)
    if cfg.isolate:
        model_lines += [""] + memory_accounting(cfg, rows, nt)
    if args.profile:
        model_lines += [""] + profile(cfg, nt, variants, out)
    print("\n" + "\n".join(model_lines))
    print("\nf evaluations: torchdiffeq rk4 (3/8 rule) and ours (classical) both take 4 per step; "
          "see 'f evals fwd/step' above (forward pass / whole training step).")
    print(f"wall {time.time() - start:.0f} s; load average {load0[0]:.2f} -> {load1[0]:.2f}")
    for r in rows:
        r["target_steps"] = nt
    write_csv(out / "bench_adjoint.csv", rows)
    with open(out / "bench_adjoint.md", "w") as fh:
        fh.write(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n\n"
                 f"threads {cfg.threads}, batch {cfg.batch}, channels {cfg.channels}, size {cfg.size}, "
                 f"repeats {cfg.repeats}, warmup {cfg.warmup}, load avg {load0[0]:.2f} -> {load1[0]:.2f}\n\n"
                 + md + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(model_lines) + "\n"
                 + "".join(f"\nNOTE: {n}\n" for n in notes))
    print(f"wrote {out / 'bench_adjoint.csv'} and {out / 'bench_adjoint.md'}")
    return rows


if __name__ == "__main__":
    main()
