"""The engine's overhead where kernels are cheap (GPU-like): one training step of a tiny ODE block
against the same vector field unrolled by hand, per f-evaluation (issue 19).

At CIFAR sizes on a GPU a conv takes tens of microseconds and the per-operation Python work of a
solver library decides the speed. This benchmark makes kernel cost negligible on the CPU and
measures what is left:

* ``f = conv3x3 -> tanh -> conv3x3`` (4 -> 4 channels, biases), input ``[2, 4, 8, 8]`` float32;
* one *training step*: forward, ``loss = out.square().mean()``, backward (gradients set to None
  before each step; no optimiser update);
* the reference is the same f unrolled by hand under autograd in the same process and the same
  run (``z = z + h*f(z)`` for euler; the classical four-stage formula written out for rk4);
* every variant: ODEBlock with each gradient mode (Backprop, Checkpoint(), Checkpoint
  (keep_forward=True), Backsolve), each method, each step count, each weight-evolution kind of
  the registry (``anodev2.evolution.EVOLUTION_KINDS``; ``none`` = plain ANODE block with
  ``evolution=None``), and torchdiffeq's ``odeint`` with the same method and step if installed;
* timing: one thread, ``--inner`` steps per sample, the variants of one (method, Nt) cell
  interleaved round-robin so that load drift hits all of them alike, median over ``--repeats``
  samples of wall time and of this thread's CPU time (``time.thread_time``: not inflated when
  other processes share the cores); reported per f-evaluation and as the ratio to the hand loop;
* floors: F (hand forward with graph), B (its backward) and F0 (hand forward without a graph)
  are measured in the same interleaving; ``(3F+B)/(F+B)`` is the issue's floor for
  ``Checkpoint()`` (forward without graph + recompute sweep + reversed steps with graph),
  ``(2F+B)/(F+B)`` for ``keep_forward`` (no recompute sweep); the "exact" floors use the measured
  no-graph F0 for the sweeps that run without a graph: ``(F0 + F0 (Nt-1)/Nt + F + B)/(F+B)`` and
  ``(F0 + F + B)/(F+B)``;
* ``minimal/checkpoint`` and ``minimal/keep_forward``: the same adjoint written by hand in ~30
  lines in this file (forward without graph, recompute sweep, one ``autograd.grad`` per reversed
  step; no RNG, BatchNorm, autocast or schedule handling): the floor of the per-step-VJP design
  itself, which the library's rows are measured against (``--no-minimal`` drops them);
* ``--odeint-rows``: ``odeint/<mode>``, ``anodev2.odeint`` on the same f without an ODEBlock;
* op counts: aten operations dispatched in one training step (a ``TorchDispatchMode`` counter,
  forward and backward), per step.

    python experiments/bench_overhead.py --out runs/bench_overhead          # full table, minutes
    python experiments/bench_overhead.py --quick                            # smoke test, seconds

Prints a table per (method, Nt) and writes ``overhead.csv`` (and ``ops.csv``) into ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import anodev2
from anodev2.evolution import EVOLUTION_KINDS

#: gradient-mode labels -> mode objects.
MODES: dict[str, Callable[[], object]] = {
    "backprop": lambda: anodev2.Backprop(),
    "checkpoint": lambda: anodev2.Checkpoint(),
    "keep_forward": lambda: anodev2.Checkpoint(keep_forward=True),
    "backsolve": lambda: anodev2.Backsolve(),
}
METHODS = ("euler", "rk4")
STAGES = {"euler": 1, "rk4": 4}


def make_f(channels: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(channels, channels, 3, padding=1))


def hand_euler(f: nn.Module, z: torch.Tensor, steps: int) -> torch.Tensor:
    h = 1.0 / steps
    for _ in range(steps):
        z = z + h * f(z)
    return z


def hand_rk4(f: nn.Module, z: torch.Tensor, steps: int) -> torch.Tensor:
    h = 1.0 / steps
    for _ in range(steps):
        k1 = f(z)
        k2 = f(z + (h / 2) * k1)
        k3 = f(z + (h / 2) * k2)
        k4 = f(z + h * k3)
        z = z + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


HAND = {"euler": hand_euler, "rk4": hand_rk4}


def hand_tuple(method: str, field: Callable, y: tuple, steps: int) -> tuple:
    """The method's steps over a tuple state written out by hand (the floor rows of evolving blocks)."""
    h = 1.0 / steps
    for _ in range(steps):
        if method == "euler":
            y = tuple(a + h * k for a, k in zip(y, field(y)))
            continue
        k1 = field(y)
        k2 = field(tuple(a + (h / 2) * k for a, k in zip(y, k1)))
        k3 = field(tuple(a + (h / 2) * k for a, k in zip(y, k2)))
        k4 = field(tuple(a + h * k for a, k in zip(y, k3)))
        y = tuple(a + (h / 6) * (p + 2 * q + 2 * r + s) for a, p, q, r, s in zip(y, k1, k2, k3, k4))
    return y


def hand_fields(f: nn.Module) -> tuple[Callable, Callable, list]:
    """``(static, rda, extra params)``: f = conv -> tanh -> conv written with ``F.conv2d`` on a
    state ``(z,)``, and the same f on the coupled state ``(z, θ1, θ2)`` with the rda evolution
    written in the fewest operations (per evaluation: one cat, one bmm, one tanh, one addcmul, one
    split; the four upwind speeds and the per-entry reaction folded into per-channel operators once
    per training step, outside the solve). Their time ratio is the floor of an evolving block in
    this regime: what the coupled weight ODE costs however the library is written."""
    from torch.nn import functional as F_
    from anodev2.evolution.operators import stencil_matrices

    c1, c2 = f[0], f[2]
    o, i, kh, kw = c1.weight.shape
    cells = kh * kw
    g = torch.Generator().manual_seed(3)
    speeds = nn.Parameter(0.05 * torch.rand(2 * o, 4, generator=g))
    react = nn.Parameter(0.1 * torch.randn(2 * o, 1, cells, generator=g))
    basis = stencil_matrices(kh, kw)[1:5].float().transpose(1, 2).reshape(4, cells * cells)
    folded: dict = {}

    def dz(z, w1, w2):
        return F_.conv2d(torch.tanh(F_.conv2d(z, w1, c1.bias, padding=1)), w2, c2.bias, padding=1)

    def static(y):
        return (dz(y[0], c1.weight, c2.weight),)

    def rda(y):
        z, w1, w2 = y
        w = torch.cat([w1.reshape(o, i, cells), w2.reshape(o, i, cells)])
        q = torch.addcmul(torch.bmm(w, folded["ops"]), react, torch.tanh(w))
        q1, q2 = q.split(o)
        return dz(z, w1, w2), q1.view_as(w1), q2.view_as(w2)

    def fold():  # once per training step
        folded["ops"] = (speeds @ basis).view(-1, cells, cells)

    rda.fold = fold
    return static, rda, [speeds, react]


def _one_step(method: str, f: nn.Module, z: torch.Tensor, h: float) -> torch.Tensor:
    if method == "euler":
        return z + h * f(z)
    k1 = f(z)
    k2 = f(z + (h / 2) * k1)
    k3 = f(z + (h / 2) * k2)
    k4 = f(z + h * k3)
    return z + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


class _MinimalCheckpoint(torch.autograd.Function):
    """The checkpointed discrete adjoint written by hand in the fewest lines (no library): the
    design's own floor -- forward without a graph, recompute sweep (unless ``keep``), one
    ``autograd.grad`` per reversed step. No RNG/BatchNorm/autocast handling, no schedule."""

    @staticmethod
    def forward(ctx, method, f, steps, keep, z, *params):
        h = 1.0 / steps
        states = [z]
        with torch.no_grad():
            for _ in range(steps):
                states.append(_one_step(method, f, states[-1], h))
        ctx.method, ctx.f, ctx.steps = method, f, steps
        ctx.save_for_backward(*(states[:-1] if keep else states[:1]))
        return states[-1]

    @staticmethod
    def backward(ctx, lam):
        method, f, steps = ctx.method, ctx.f, ctx.steps
        h = 1.0 / steps
        states = list(ctx.saved_tensors)
        if len(states) == 1:
            with torch.no_grad():
                for _ in range(steps - 1):
                    states.append(_one_step(method, f, states[-1], h))
        params = tuple(f.parameters())
        acc = None
        for n in reversed(range(steps)):
            with torch.enable_grad():
                z = states[n].detach().requires_grad_(n > 0 or ctx.needs_input_grad[4])
                wrt = ((z,) if z.requires_grad else ()) + params
                g = torch.autograd.grad(_one_step(method, f, z, h), wrt, lam)
            lam = g[0] if z.requires_grad else None
            gp = g[len(wrt) - len(params):]
            acc = list(gp) if acc is None else [a + b for a, b in zip(acc, gp)]
        return (None, None, None, None, lam, *acc)


class _TdqFunc(nn.Module):
    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, t, z):
        return self.f(z)


@dataclass
class Row:
    """One measured variant of a (method, Nt) cell."""

    label: str  # e.g. "none/checkpoint"
    kind: str  # evolution kind, "hand", "hand-fwd", "hand-nograd", "tdq"
    mode: str
    step: Callable[[], None]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    ops: Optional[int] = None
    ops_by_name: Optional[Counter] = None


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched while active (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(step: Callable[[], None]) -> Counter:
    with OpCounter() as c:
        step()
    return c.counts


def _train_step(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, params) -> Callable[[], None]:
    def step() -> None:
        for p in params:
            p.grad = None
        forward(x).square().mean().backward()
    return step


def build_rows(method: str, steps: int, kinds, modes, x: torch.Tensor, with_tdq: bool, quick: bool,
               minimal: bool = True, odeint_rows: bool = False) -> list[Row]:
    rows: list[Row] = []
    f = make_f(x.shape[1])
    hand = HAND[method]
    params = list(f.parameters())
    rows.append(Row("hand", "hand", "-", _train_step(lambda z: hand(f, z, steps), x, params)))

    def fwd_only():
        hand(f, x, steps)  # forward with graph (the graph is freed right away)

    def fwd_nograd():
        with torch.no_grad():
            hand(f, x, steps)

    def fwd_bwd_split():  # not timed as a row: F and B come from the two rows below
        pass

    if minimal:
        for mode, keep in (("checkpoint", False), ("keep_forward", True)):
            if mode in modes:
                fm = make_f(x.shape[1])
                rows.append(Row(f"minimal/{mode}", "minimal", mode, _train_step(
                    lambda z, fm=fm, keep=keep: _MinimalCheckpoint.apply(method, fm, steps, keep, z, *fm.parameters()),
                    x, list(fm.parameters()))))
    if odeint_rows:
        for mode in modes:
            fo = make_f(x.shape[1])
            rows.append(Row(f"odeint/{mode}", "odeint", mode, _train_step(
                lambda z, fo=fo, mode=mode: anodev2.odeint(lambda t, y: fo(y), z, steps=steps, method=method,
                                                           grad=MODES[mode](), params=list(fo.parameters())),
                x, list(fo.parameters()))))
    if any(k != "none" for k in kinds):
        fh = make_f(x.shape[1])
        static, rda, extra = hand_fields(fh)
        rows.append(Row("hand static, F.conv2d", "hand-func", "-", _train_step(
            lambda z: hand_tuple(method, static, (z,), steps)[0], x, list(fh.parameters()))))

        def coupled(z, fh=fh, rda=rda):
            rda.fold()
            return hand_tuple(method, rda, (z, fh[0].weight, fh[2].weight), steps)[0]
        rows.append(Row("hand rda (floor)", "hand-rda", "-", _train_step(coupled, x, list(fh.parameters()) + extra)))
    rows.append(Row("hand forward (F)", "hand-fwd", "-", fwd_only))
    rows.append(Row("hand forward no-grad (F0)", "hand-nograd", "-", fwd_nograd))
    for kind in kinds:
        for mode in modes:
            fk = make_f(x.shape[1])
            try:
                block = anodev2.ODEBlock(fk, steps=steps, method=method, grad=MODES[mode](),
                                         evolution=None if kind == "none" else kind, record_weights=False)
            except Exception as e:  # a registry kind this block cannot build with default options
                print(f"  skip {kind}/{mode}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            rows.append(Row(f"{kind}/{mode}", kind, mode, _train_step(block, x, list(block.parameters()))))
    if with_tdq:
        from torchdiffeq import odeint as tdq_odeint
        ft = _TdqFunc(make_f(x.shape[1]))
        tt = torch.tensor([0.0, 1.0])
        opts = {"step_size": 1.0 / steps}
        rows.append(Row("torchdiffeq odeint", "tdq", "backprop",
                        _train_step(lambda z: tdq_odeint(ft, z, tt, method=method, options=opts)[-1], x,
                                    list(ft.parameters()))))
    return rows


def measure(rows: list[Row], repeats: int, inner: int, warmup: int) -> None:
    for row in rows:
        for _ in range(warmup):
            row.step()
    for _ in range(repeats):
        for row in rows:
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(inner):
                row.step()
            row.cpu.append((time.thread_time() - c0) / inner)
            row.wall.append((time.perf_counter() - w0) / inner)


def _median(v: list[float]) -> float:
    return statistics.median(v) if v else float("nan")


def floors(rows: list[Row], steps: int, clock: str) -> dict[str, float]:
    by = {r.kind: r for r in rows if r.kind.startswith("hand")}
    get = (lambda r: _median(r.cpu)) if clock == "cpu" else (lambda r: _median(r.wall))
    total, F, F0 = get(by["hand"]), get(by["hand-fwd"]), get(by["hand-nograd"])
    B = max(total - F, 1e-12)
    return {
        "F": F, "B": B, "F0": F0,
        "checkpoint": (3 * F + B) / (F + B),
        "keep_forward": (2 * F + B) / (F + B),
        "checkpoint_exact": (F0 + F0 * (steps - 1) / steps + F + B) / (F + B),
        "keep_forward_exact": (F0 + F + B) / (F + B),
    }


def report(method: str, steps: int, rows: list[Row], writer, clock: str) -> None:
    evals = steps * STAGES[method]
    get = (lambda r: _median(r.cpu)) if clock == "cpu" else (lambda r: _median(r.wall))
    hand = next(r for r in rows if r.kind == "hand")
    ref = get(hand)
    fl = floors(rows, steps, clock)
    static = {r.mode: get(r) for r in rows if r.kind == "none"}
    by_kind = {r.kind: r for r in rows}
    evo_floor = (get(by_kind["hand-rda"]) / get(by_kind["hand-func"])
                 if "hand-rda" in by_kind and "hand-func" in by_kind else None)
    print(f"\n== {method}, Nt = {steps} ({evals} f-evals/forward), {clock} time; hand loop "
          f"{ref * 1e6 / evals:.1f} us/eval; F = {fl['F'] * 1e6:.0f} us, B = {fl['B'] * 1e6:.0f} us, "
          f"F0 = {fl['F0'] * 1e6:.0f} us")
    print(f"   floors: checkpoint (3F+B)/(F+B) = {fl['checkpoint']:.2f} (exact {fl['checkpoint_exact']:.2f}), "
          f"keep_forward (2F+B)/(F+B) = {fl['keep_forward']:.2f} (exact {fl['keep_forward_exact']:.2f})"
          + ("" if evo_floor is None else f"; evolving block: hand rda / hand static = {evo_floor:.2f}"))
    print(f"   {'variant':32s} {'us/eval':>9s} {'x hand':>7s} {'x none':>7s} {'floor':>6s} {'ops/step':>9s}")
    for r in rows:
        if r.kind in ("hand-fwd", "hand-nograd"):
            continue
        t = get(r)
        x_static = (t / static[r.mode] if not r.kind.startswith("hand") and r.kind not in ("none", "tdq", "minimal", "odeint")
                    and r.mode in static else float("nan"))
        floor = fl.get(r.mode) if r.mode in ("checkpoint", "keep_forward") else (1.0 if r.mode == "backprop" else None)
        if r.kind == "hand-rda":
            x_static, floor = evo_floor, None  # the coupled weight ODE's own cost: hand rda / hand static
        ops = "" if r.ops is None else str(r.ops)
        print(f"   {r.label:32s} {t * 1e6 / evals:9.1f} {t / ref:7.3f} "
              f"{'' if x_static != x_static else f'{x_static:.3f}':>7s} "
              f"{'' if floor is None else f'{floor:.2f}':>6s} {ops:>9s}")
        if writer is not None:
            writer.writerow({
                "method": method, "steps": steps, "variant": r.label, "kind": r.kind, "mode": r.mode, "clock": clock,
                "us_per_eval": round(t * 1e6 / evals, 3), "x_hand": round(t / ref, 4),
                "x_static": "" if x_static != x_static else round(x_static, 4),
                "floor": "" if floor is None else round(floor, 4),
                "floor_exact": round(fl[r.mode + "_exact"], 4) if r.mode in ("checkpoint", "keep_forward") else "",
                "ops_per_step": "" if r.ops is None else r.ops,
                "repeats": len(r.wall), "F_us": round(fl["F"] * 1e6, 2), "B_us": round(fl["B"] * 1e6, 2),
                "F0_us": round(fl["F0"] * 1e6, 2),
            })


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[3, 8], help="step counts Nt (default 3 8)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--kinds", nargs="+", default=None,
                   help="evolution kinds (default: 'none' and every kind of anodev2.evolution.EVOLUTION_KINDS)")
    p.add_argument("--repeats", type=int, default=30, help="timed samples per variant (median; default 30)")
    p.add_argument("--inner", type=int, default=3, help="training steps per timed sample (default 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="the clock of the printed table (both go to the CSV; default cpu = this thread's CPU time)")
    p.add_argument("--no-ops", action="store_true", help="skip the aten op counts")
    p.add_argument("--no-tdq", action="store_true", help="skip torchdiffeq even if installed")
    p.add_argument("--no-minimal", action="store_true", help="skip the hand-written minimal adjoint rows")
    p.add_argument("--odeint-rows", action="store_true",
                   help="add odeint/<mode> rows: anodev2.odeint on the same f without an ODEBlock (splits the "
                        "library's time into solver engine and block)")
    p.add_argument("--quick", action="store_true", help="smoke test: Nt=3, euler, kinds none+rda, 3 repeats")
    p.add_argument("--out", type=Path, default=None, help="directory for overhead.csv and ops.csv")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.methods, a.repeats, a.inner, a.warmup = [3], ["euler"], 3, 1, 1
        a.kinds = a.kinds or ["none", "rda"]
    kinds = a.kinds or ["none", *EVOLUTION_KINDS]
    unknown = [k for k in kinds if k != "none" and k not in EVOLUTION_KINDS]
    if unknown:
        p.error(f"unknown evolution kind(s) {unknown}; allowed: none {' '.join(EVOLUTION_KINDS)}")
    torch.set_num_threads(a.threads)
    with_tdq = not a.no_tdq and importlib.util.find_spec("torchdiffeq") is not None
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {load0[0]:.2f}; "
          f"input [{a.batch}, {a.channels}, {a.size}, {a.size}], f = conv3x3 -> tanh -> conv3x3; "
          f"median of {a.repeats} samples x {a.inner} steps; kinds {kinds}"
          + ("" if with_tdq else "; torchdiffeq not installed (no reference row)"))
    writers = {}
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        fh = open(a.out / "overhead.csv", "w", newline="")
        fields = ["method", "steps", "variant", "kind", "mode", "clock", "us_per_eval", "x_hand", "x_static", "floor",
                  "floor_exact", "ops_per_step", "repeats", "F_us", "B_us", "F0_us"]
        writers["time"] = csv.DictWriter(fh, fieldnames=fields)
        writers["time"].writeheader()
        oh = open(a.out / "ops.csv", "w", newline="")
        writers["ops"] = csv.writer(oh)
        writers["ops"].writerow(["method", "steps", "variant", "op", "count"])
    x = torch.randn(a.batch, a.channels, a.size, a.size, generator=torch.Generator().manual_seed(1))
    for method in a.methods:
        for steps in a.steps:
            rows = build_rows(method, steps, kinds, a.modes, x, with_tdq, a.quick, minimal=not a.no_minimal,
                              odeint_rows=a.odeint_rows)
            if not a.no_ops:
                for r in rows:
                    if r.kind not in ("hand-fwd", "hand-nograd"):
                        r.step()  # warm (lazy initialisation is not counted)
                        r.ops_by_name = count_ops(r.step)
                        r.ops = sum(r.ops_by_name.values())
                        if "ops" in writers:
                            for op, n in sorted(r.ops_by_name.items()):
                                writers["ops"].writerow([method, steps, r.label, op, n])
            measure(rows, a.repeats, a.inner, a.warmup)
            report(method, steps, rows, writers.get("time"), a.clock)
            if "time" in writers:
                report_other = "wall" if a.clock == "cpu" else "cpu"
                _write_only(method, steps, rows, writers["time"], report_other)
    load1 = os.getloadavg()
    print(f"\nload average {load0[0]:.2f} -> {load1[0]:.2f}")
    if a.out is not None:
        fh.close()
        oh.close()
        print(f"wrote {a.out / 'overhead.csv'} and {a.out / 'ops.csv'}")
    return 0


def _write_only(method, steps, rows, writer, clock) -> None:
    """The other clock's rows into the CSV without printing them."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        report(method, steps, rows, writer, clock)


if __name__ == "__main__":
    sys.exit(main())
