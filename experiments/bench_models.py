"""CPU training throughput and peak memory of every network and variant of ``anodev2.models``.

Rows per model: the variants, plus "ode-backprop" (the ODE network differentiated by autograd
through the unrolled solver: ``build(name, "anode", grad="backprop")``, the reference for the
cost of the exact adjoint), optionally "anodev2-backprop", and "anode-keep" / "anodev2-keep"
(checkpoint adjoint with ``keep_forward=True``: the forward's step states are kept instead of
recomputed). ``--scheme METHOD:STEPS`` sets the solver of every ODE row (default: the variant
defaults). SGD training steps (momentum 0.9) on a fixed random CIFAR-sized batch.

* **Time** (one fresh subprocess per model): every row's network is built in the same process,
  warmed up (``--warmup`` steps each), then ``--steps`` rounds in which every row does one step,
  so a slow period of a shared machine hits every row alike. Step time = fastest step of a row
  (its median is kept in the CSV); images/s = batch / step time; "x base" = step time relative
  to ``baseline`` of the same network.
* **Memory** (one fresh subprocess per row): glibc's mmap threshold is fixed at 64 KiB so freed
  tensor buffers go back to the OS and the RSS high-water mark (VmHWM) tracks live memory; a
  training step on 2 images pages in all library code and creates the optimiser state; then a
  ``no_grad`` forward on the full batch (the *forward-only baseline*, "fwd MB") and one full
  training step ("peak MB"). "train+ MB" = peak - forward-only baseline: what training adds
  (activations kept for backward, gradients), i.e. what checkpointing saves.

Then the target ratios of step times: anode / ode-backprop <= 1.6, anodev2 / anode <= 1.10 at
batch >= 128 and <= 1.25 below (issue 9: the weight evolution must be cheap).
A CSV with every row is written to ``--out``/bench_models.csv.

``--ops`` instead counts the aten operators (torch.profiler, CPU) of one forward + backward of
the first ODE block of each ODE row on a small batch, per solver step, split into all ops and
compute ops (views and other metadata-only ops excluded: they launch no kernel on a GPU).

    python experiments/bench_models.py --models resnet4,resnet10 --batch 128 --steps 4 --threads 1
    python experiments/bench_models.py --models resnet10 --variants anode,anodev2 --scheme rk4:1
    python experiments/bench_models.py --models resnet10 --variants anode,anodev2 --ops
    python experiments/bench_models.py --quick          # smoke test, numbers meaningless
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from experiments.bench.memory import fix_mmap_threshold, peak_rss_mib
from experiments.bench.ops import aten_ops
from experiments.output import write_csv

ROOT = Path(__file__).resolve().parents[1]

ROWS = ("baseline", "neuralode", "ode-backprop", "anode", "anodev2", "anodev2-backprop", "anode-keep",
        "anodev2-keep")
DEFAULT_ROWS = ROWS[:5]
ALL_MODELS = ("resnet4", "resnet10", "resnet18", "alexnet", "sqnxt23")


def targets(batch: int) -> tuple[tuple[str, str, float], ...]:
    """(numerator row, denominator row, maximum ratio) of the step-time targets at ``batch``."""
    return (("anode", "ode-backprop", 1.6), ("anodev2", "anode", 1.10 if batch >= 128 else 1.25))


def row_build_args(row: str) -> tuple[str, dict]:
    """(variant, options) for ``anodev2.models.build`` of a benchmark row."""
    if row == "ode-backprop":
        return "anode", {"grad": "backprop"}
    if row == "anodev2-backprop":
        return "anodev2", {"grad": "backprop"}
    if row.endswith("-keep"):
        return row[:-len("-keep")], {"grad": {"keep_forward": True}}
    return row, {}


def scheme_options(scheme: str) -> dict:
    """``"METHOD:STEPS"`` -> ``{"method": METHOD, "steps": STEPS}``; ``""`` -> ``{}``."""
    if not scheme:
        return {}
    method, _, steps = scheme.partition(":")
    if not method or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"--scheme must be METHOD:STEPS with STEPS >= 1 (e.g. rk4:1, euler:3), got {scheme!r}")
    return {"method": method, "steps": int(steps)}


class _Trainer:
    """One row's network, SGD optimiser and fixed batch; ``step()`` is one training step."""

    def __init__(self, args: argparse.Namespace, row: str):
        import torch

        from anodev2.models import build

        torch.manual_seed(0)
        variant, options = row_build_args(row)
        if variant != "baseline":
            options.update(scheme_options(args.scheme))
        self.model = build(args.model, variant, width=args.width, **options).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.x = torch.randn(args.batch, 3, 32, 32)
        self.y = torch.randint(0, 10, (args.batch,))

    def step(self, n: int = 0) -> float:
        """One SGD step on the first ``n`` images (all if 0); returns the loss."""
        import torch.nn.functional as F

        x, y = (self.x[:n], self.y[:n]) if n else (self.x, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.item()


def memory_worker(args: argparse.Namespace) -> dict:
    """Peak-memory protocol for one row (see the module docstring)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    fix_mmap_threshold(64 << 10)
    trainer = _Trainer(args, args.row)
    trainer.step(2)
    trainer.opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        trainer.model(trainer.x)
    fwd = peak_rss_mib()
    trainer.step()
    peak = peak_rss_mib()
    return {"row": args.row, "peak_rss_mb": peak, "fwd_rss_mb": fwd, "train_extra_mb": peak - fwd}


def time_worker(args: argparse.Namespace) -> list[dict]:
    """Interleaved timing of every row of one model in this process (see the module docstring)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    trainers = {row: _Trainer(args, row) for row in args.variants}
    for t in trainers.values():
        for _ in range(args.warmup):
            t.step()
    times: dict[str, list[float]] = {row: [] for row in trainers}
    loss: dict[str, float] = {}
    for _ in range(args.steps):
        for row, t in trainers.items():
            start = time.perf_counter()
            loss[row] = t.step()
            times[row].append(time.perf_counter() - start)
    out = []
    for row, ts in times.items():
        step_s = min(ts)
        out.append({
            "model": args.model, "row": row, "batch": args.batch, "steps": args.steps,
            "threads": torch.get_num_threads(), "width": args.width, "step_s": step_s,
            "step_median_s": statistics.median(ts), "img_per_s": args.batch / step_s, "loss": loss[row],
            "scheme": args.scheme,
        })
    return out


def ops_worker(args: argparse.Namespace) -> list[dict]:
    """Aten op counts of one forward + backward of the first ODE block of every ODE row."""
    import torch

    from anodev2 import ODEBlock

    if args.threads:
        torch.set_num_threads(args.threads)
    out = []
    for row in args.variants:
        trainer = _Trainer(args, row)
        blocks = [m for m in trainer.model.modules() if isinstance(m, ODEBlock)]
        if not blocks:
            continue
        block, captured = blocks[0], []
        handle = block.register_forward_hook(lambda m, inp, outp: captured.append(inp[0].detach()))
        trainer.step(2)
        handle.remove()
        z = captured[0].requires_grad_()
        block(z).sum().backward()  # warm-up (and the first projection of the coefficients)
        names, compute = aten_ops(lambda: block(z).sum().backward())
        n_targets = len(block.evolving_names)
        out.append({"model": args.model, "row": row, "method": block.method, "steps": block.steps,
                    "targets": n_targets, "ops_per_step": len(names) / block.steps,
                    "compute_ops_per_step": len(compute) / block.steps})
    return out


def print_ops(model: str, rows: list[dict]) -> None:
    print(f"\n{model}: aten ops of one forward + backward of the first ODE block, per solver step")
    print(f"  {'row':<17}{'scheme':>10}{'targets':>9}{'all ops':>9}{'compute':>9}")
    for r in rows:
        print(f"  {r['row']:<17}{r['method'] + ':' + str(r['steps']):>10}{r['targets']:>9}"
              f"{r['ops_per_step']:>9.0f}{r['compute_ops_per_step']:>9.0f}")


def _subprocess(args: argparse.Namespace, extra: list[str]):
    cmd = [sys.executable, "-m", "experiments.bench_models", "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--width", str(args.width),
           "--threads", str(args.threads), "--variants", ",".join(args.variants), "--scheme", args.scheme,
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {' '.join(extra)} of {args.model} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(args: argparse.Namespace, model: str) -> list[dict]:
    """Time all rows of ``model`` (one subprocess) and measure each row's memory (one each)."""
    args.model = model
    rows = _subprocess(args, ["--time-worker"])
    for r in rows:
        r.update(_subprocess(args, ["--memory-worker", "--row", r["row"]]))
    base = next((r for r in rows if r["row"] == "baseline"), None)
    for r in rows:
        r["time_vs_baseline"] = r["step_s"] / base["step_s"] if base else float("nan")
    return rows


def print_model(model: str, rows: list[dict]) -> list[str]:
    """Print the table of one model; return the target-ratio lines."""
    by_row = {r["row"]: r for r in rows}
    r0 = rows[0]
    print(f"\n{model} (batch {r0['batch']}, best of {r0['steps']} interleaved steps, "
          f"{r0['threads']} thread(s), width {r0['width']}, scheme {r0['scheme'] or 'variant default'})")
    print(f"  {'row':<17}{'img/s':>8}{'s/step':>9}{'x base':>8}{'peak MB':>9}{'fwd MB':>8}{'train+ MB':>10}")
    for r in rows:
        print(f"  {r['row']:<17}{r['img_per_s']:>8.1f}{r['step_s']:>9.3f}{r['time_vs_baseline']:>8.2f}"
              f"{r['peak_rss_mb']:>9.0f}{r['fwd_rss_mb']:>8.0f}{r['train_extra_mb']:>10.0f}")
    lines = []
    for num, den, target in targets(r0["batch"]):
        if num in by_row and den in by_row:
            ratio = by_row[num]["step_s"] / by_row[den]["step_s"]
            ok = "ok" if ratio <= target else "MISSED"
            lines.append(f"{model}: {num} / {den} = {ratio:.2f} (target <= {target}) {ok}")
    for line in lines:
        print("  " + line)
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", default=",".join(ALL_MODELS),
                   help=f"comma-separated subset of {','.join(ALL_MODELS)} (default: all)")
    p.add_argument("--variants", default=",".join(DEFAULT_ROWS),
                   help=f"comma-separated rows out of {','.join(ROWS)} (default: {','.join(DEFAULT_ROWS)})")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--steps", type=int, default=3, help="timed (interleaved) steps per row (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per row (default 1)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    p.add_argument("--scheme", default="", help="METHOD:STEPS for every ODE row, e.g. rk4:1 or euler:3 "
                   "(default: the variant defaults)")
    p.add_argument("--ops", action="store_true", help="count aten ops per ODE-block step instead of timing")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: batch 16, 1 timed step, width 0.25 (numbers meaningless)")
    p.add_argument("--out", default="runs/bench_models", help="directory for bench_models.csv")
    p.add_argument("--time-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ops-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.width = 16, 1, 1, 0.25
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [m for m in args.models if m not in ALL_MODELS]
    if bad or not args.models:
        p.error(f"--models: unknown {bad}; allowed: {','.join(ALL_MODELS)}")
    bad = [v for v in args.variants if v not in ROWS]
    if bad or not args.variants or len(set(args.variants)) != len(args.variants):
        p.error(f"--variants: unknown or repeated {bad or args.variants}; allowed: {','.join(ROWS)}")
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0 or args.threads < 0 or not args.width > 0:
        p.error("--warmup and --threads must be >= 0 and --width > 0")
    try:
        scheme_options(args.scheme)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.time_worker:
        print(json.dumps(time_worker(args)))
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return
    if args.ops_worker:
        print(json.dumps(ops_worker(args)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.models:
        if args.ops:
            args.model = model
            rows = _subprocess(args, ["--ops-worker"])
            print_ops(model, rows)
        else:
            rows = bench_model(args, model)
            print_model(model, rows)
        results += rows
    path = out / ("bench_ops.csv" if args.ops else "bench_models.csv")
    write_csv(path, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
