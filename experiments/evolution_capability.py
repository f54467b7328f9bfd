"""A fair capability task for time-varying weights: a teacher whose 3x3 kernels rotate in time.

**Teacher** (outside every student's model class). Images ``z [C, S, S]`` follow
``dz/dt = f_T(t, z) = W2 * tanh(GN(K(t) * z))`` on ``t in [0, 1]``: ``*`` a 3x3 convolution,
``GN`` a GroupNorm over all ``H`` hidden channels (no affine change), ``W2 [C, H, 3, 3]`` fixed.
Each kernel ``K(t)[h, c]`` is a sampled Gaussian blob (width ``sigma``) whose centre circles the
kernel's middle cell at radius ``rho`` with angular speed ``omega`` (one revolution over
``[0, 1]`` by default) from its own phase, with its own sign: the kernels *rotate
continuously*. ``K(t)`` is not a polynomial or piecewise-constant function of ``t`` (``linear``,
``galerkin``, ``untied``), not ``exp(tM) K(0)`` (its entries ``∝ exp(a cos(omega t + phi))`` have
infinitely many Fourier modes, a linear ODE on the 9 cells at most 9: ``rda``, ``generator``),
and the time dependence sits *inside* the normalised nonlinearity (so not a ``t`` input channel,
``time_input``). Every student can only approximate it.

**Targets**: the teacher's states at ``t = 1/3, 2/3, 1`` (rk4, 8 steps per third) from random
inputs ``x ~ N(0, 1)``; a student is scored on all three. **Students**: one ODE block
``dz/dt = f(z; θ(t))`` with ``f = conv3x3(C -> H) -> GroupNorm(1, H) -> tanh -> conv3x3(H -> C)``
(the teacher's architecture, every weight learned from PyTorch's default initialisation), the
midpoint method (rk2) with 3 steps (``h = 1/3``: f is evaluated at t = 0, 1/6, 1/3, ..., 5/6, six
distinct times, and ``z(k/3)`` is the state after step k, read as the input of f's first stage of
step k+1), gradient ``backprop``; one per family of ``anodev2.evolution`` (its default options,
every conv weight of f evolving):

* ``anode`` - static weights (the ANODE block);  ``anode_wide`` - static, hidden width chosen so
  that it has at least as many parameters as the largest family (more parameters alone);
* ``rda``, ``generator`` - ANODEV2: the weights follow their own ODE ``dθ/dt = q(θ, p)``;
* ``linear`` (θ0 + tθ1), ``galerkin`` (basis functions of t), ``untied`` (one weight set per
  solver step), ``time_input`` (t as an extra input channel of every conv of f);
  ``linear_conv1``: ``linear`` on the first conv only, about as many added parameters as ``rda``
  (a parameter-matched schedule).

**Protocol**, per seed (the seed draws the teacher's phases, signs and W2, the data and every
student's initialisation; the same for every family): for every learning rate of ``--lrs``,
Adam with cosine decay, ``--iters`` full-batch steps on the training split; the learning rate
is chosen by the MSE on the validation split; reported: the chosen fit's held-out (test) MSE,
and the same with the family's evolution switched off (``evolution.off()``). Summary per family
over seeds: held-out MSE min / max / geometric mean, and the geometric mean of
``MSE(anode) / MSE(family)``. References: "no motion" (predict ``z(t) = x``), "teacher frozen"
(the teacher with ``K(t) = K(0)``). There is no computable static floor for this task (the
floor of the earlier per-pixel task relied on scalar autonomous flows being monotone; a
multi-channel image flow has no such constraint): the ``anode``/``anode_wide`` rows are the
static reference.

    python experiments/evolution_capability.py                 # 3 seeds, ~5 min CPU on one core
    python experiments/evolution_capability.py --seeds 1 --json s1.json   # one seed (run seeds in parallel) ...
    python experiments/evolution_capability.py --merge s0.json s1.json s2.json   # ... and the summary of all
    python experiments/evolution_capability.py --quick         # seconds (what the tests run)
    python experiments/evolution_capability.py --families anode,rda --seeds 0 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from anodev2 import ODEBlock
from anodev2.evolution import EVOLUTION_KINDS

#: student families: name -> the evolution given to ODEBlock (None: static weights)
FAMILIES: dict[str, Union[None, str, dict]] = {
    "anode": None, "anode_wide": None, "rda": "rda", "generator": "generator", "linear": "linear",
    "linear_conv1": {"kind": "linear", "targets": ["0.weight"]},
    "galerkin": "galerkin", "time_input": "time_input", "untied": "untied"}


def _kind(family: str) -> Optional[str]:
    spec = FAMILIES[family]
    return spec["kind"] if isinstance(spec, dict) else spec
OBS = 3  #: observed times k/OBS, k = 1..OBS
TEACHER_STEPS = 8  #: teacher rk4 steps per observed interval


@dataclass
class Task:
    """Sizes and the teacher's motion (defaults: the documented run)."""

    channels: int = 2
    hidden: int = 8
    size: int = 8
    n_train: int = 64
    n_val: int = 32
    n_test: int = 64
    iters: int = 300
    lrs: tuple[float, ...] = (1e-2, 3e-2, 1e-1)
    student_steps: int = 3  #: solver steps of every student on [0, 1] (a multiple of OBS)
    method: str = "midpoint"  #: the students' solver
    omega: float = 2 * math.pi
    rho: float = 0.8
    sigma: float = 0.6
    gain: float = 2.0


QUICK = Task(channels=2, hidden=4, size=5, n_train=16, n_val=8, n_test=16, iters=8, lrs=(1e-2, 3e-2))


@dataclass
class Fit:
    """One family on one seed: the chosen learning rate's fit (and every lr's validation MSE)."""

    family: str
    seed: int
    params: int
    hidden: int
    lr: float
    train: float
    val: float
    test: float
    test_off: Optional[float]
    val_by_lr: dict = field(default_factory=dict)
    seconds: float = 0.0  #: CPU seconds of the family's fits (every lr)


def blob_kernels(t: torch.Tensor, phase: torch.Tensor, sign: torch.Tensor, task: Task) -> torch.Tensor:
    """``K(t) [H, C, 3, 3]``: a Gaussian blob of width sigma at ``rho (cos, sin)(phase + omega t)``
    around the middle cell, times ``sign`` (module docstring)."""
    grid = torch.tensor([-1.0, 0.0, 1.0], dtype=phase.dtype)
    angle = phase + task.omega * t
    cx, cy = task.rho * torch.cos(angle), task.rho * torch.sin(angle)
    dx = grid.view(1, 1, 1, 3) - cx[..., None, None]
    dy = grid.view(1, 1, 3, 1) - cy[..., None, None]
    return sign[..., None, None] * torch.exp(-(dx ** 2 + dy ** 2) / (2 * task.sigma ** 2))


class TeacherF(nn.Module):
    """``f_T(t, z) = W2 * tanh(GN(K(t) * z))``; ``frozen_at`` fixes K at that time."""

    def __init__(self, task: Task, gen: torch.Generator, frozen_at: Optional[float] = None) -> None:
        super().__init__()
        c, h = task.channels, task.hidden
        self.task, self.frozen_at = task, frozen_at
        self.register_buffer("phase", 2 * math.pi * torch.rand(h, c, generator=gen))
        self.register_buffer("sign", torch.where(torch.rand(h, c, generator=gen) < 0.5, -1.0, 1.0))
        self.register_buffer("w2", task.gain * torch.randn(c, h, 3, 3, generator=gen) / math.sqrt(9 * h))
        self.norm = nn.GroupNorm(1, h, affine=False)

    def kernels(self, t) -> torch.Tensor:
        t = torch.as_tensor(t if self.frozen_at is None else self.frozen_at, dtype=self.phase.dtype)
        return blob_kernels(t, self.phase, self.sign, self.task)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        hid = torch.tanh(self.norm(nn.functional.conv2d(z, self.kernels(t), padding=1)))
        return nn.functional.conv2d(hid, self.w2, padding=1)


def make_f(channels: int, hidden: int) -> nn.Module:
    """The students' f: ``conv3x3 -> GroupNorm(1, hidden) -> tanh -> conv3x3`` (shape preserving)."""
    return nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.GroupNorm(1, hidden), nn.Tanh(),
                         nn.Conv2d(hidden, channels, 3, padding=1))


def observe(block: ODEBlock, x: torch.Tensor) -> torch.Tensor:
    """``[OBS, B, ...]``: the block's states at ``t = k/OBS``, k = 1..OBS (``t0 = 0, t1 = 1``).

    The state after step n of an explicit Runge-Kutta method is the input of f's first stage of
    step n + 1 (that stage is ``f(t_n, y_n)``), so a forward pre-hook on f reads it, with its
    autograd graph under ``grad="backprop"``; the last one is the block's output. Raises if f was
    not called ``steps x stages`` times (a block that evaluates f differently)."""
    seen: list[torch.Tensor] = []
    handle = block.f.register_forward_pre_hook(lambda _m, args: seen.append(args[-1]))
    try:
        out = block(x)
    finally:
        handle.remove()
    stages, steps = block.tableau.stages, block.steps
    if steps % OBS or len(seen) != steps * stages:
        raise RuntimeError(f"observe: f was called {len(seen)} times, expected steps x stages = {steps} x {stages} "
                           f"with steps a multiple of {OBS}")
    per = steps // OBS
    return torch.stack([seen[k * per * stages] for k in range(1, OBS)] + [out])


def teacher_block(task: Task, gen: torch.Generator, frozen_at: Optional[float] = None) -> ODEBlock:
    return ODEBlock(TeacherF(task, gen, frozen_at), steps=OBS * TEACHER_STEPS, method="rk4", grad="backprop")


def student(family: str, task: Task, hidden: Optional[int] = None) -> ODEBlock:
    """The ODE block of ``family`` (module docstring) with hidden width ``hidden`` (default task.hidden)."""
    f = make_f(task.channels, task.hidden if hidden is None else hidden)
    return ODEBlock(f, steps=task.student_steps, method=task.method, grad="backprop", evolution=FAMILIES[family],
                    record_weights=False)


def count(module: nn.Module) -> int:
    """Learned scalars (every parameter that requires grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def available(families: Sequence[str]) -> list[str]:
    """The families whose evolution kind the library provides (static ones always)."""
    return [f for f in families if _kind(f) is None or _kind(f) in EVOLUTION_KINDS]


def wide_hidden(task: Task, families: Sequence[str]) -> int:
    """Smallest static hidden width with at least the parameters of every other family."""
    budget = max(count(student(f, task)) for f in families if f != "anode_wide")
    width = task.hidden
    while count(student("anode", task, width)) < budget:
        width += 1
    return width


def mse(block: ODEBlock, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (observe(block, x) - y).pow(2).mean()


def fit(block: ODEBlock, x: torch.Tensor, y: torch.Tensor, iters: int, lr: float) -> float:
    """Adam with cosine decay, full batch; returns the final train MSE (inf if it diverged)."""
    opt = torch.optim.Adam(block.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        loss = mse(block, x, y)
        if not torch.isfinite(loss):
            return math.inf
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        final = mse(block, x, y).item()
    return final if math.isfinite(final) else math.inf


def choose(val_by_lr: dict[float, float]) -> float:
    """The learning rate with the lowest validation MSE (the smaller lr on a tie)."""
    return min(sorted(val_by_lr), key=lambda lr: val_by_lr[lr])


def make_data(task: Task, seed: int):
    """(teacher block, x, targets) of one seed; x ``[N, C, S, S]``, targets ``[OBS, N, C, S, S]``."""
    gen = torch.Generator().manual_seed(seed)
    teacher = teacher_block(task, gen)
    n = task.n_train + task.n_val + task.n_test
    x = torch.randn(n, task.channels, task.size, task.size, generator=gen)
    with torch.no_grad():
        y = observe(teacher, x)
    return teacher, x, y


def references(task: Task, seed: int, teacher: ODEBlock, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Held-out MSE of "no motion" (z(t) = x) and of the teacher with its kernels frozen at K(0)."""
    start = task.n_train + task.n_val
    xte, yte = x[start:], y[:, start:]
    frozen = ODEBlock(TeacherF(task, torch.Generator(), frozen_at=0.0), steps=OBS * TEACHER_STEPS, method="rk4",
                      grad="backprop")
    frozen.f.load_state_dict(teacher.f.state_dict())
    with torch.no_grad():
        return {"no_motion": (xte.unsqueeze(0) - yte).pow(2).mean().item(),
                "teacher_frozen": (observe(frozen, xte) - yte).pow(2).mean().item()}


def run_seed(seed: int, task: Task, families: Sequence[str], log=None) -> tuple[list[Fit], dict[str, float]]:
    """Every family on one seed (module docstring); returns the fits and the references."""
    teacher, x, y = make_data(task, seed)
    a, b = task.n_train, task.n_train + task.n_val
    xtr, ytr, xva, yva, xte, yte = x[:a], y[:, :a], x[a:b], y[:, a:b], x[b:], y[:, b:]
    width = wide_hidden(task, families) if "anode_wide" in families else task.hidden
    fits = []
    for family in families:
        start = time.process_time()
        hidden = width if family == "anode_wide" else task.hidden
        runs = {}
        for lr in task.lrs:
            torch.manual_seed(seed)  # the same initialisation of f for every lr
            block = student(family, task, hidden)
            train = fit(block, xtr, ytr, task.iters, lr)
            with torch.no_grad():
                val = mse(block, xva, yva).item() if math.isfinite(train) else math.inf
            runs[lr] = (block, train, val if math.isfinite(val) else math.inf)
        lr = choose({k: v[2] for k, v in runs.items()})
        block, train, val = runs[lr]
        with torch.no_grad():
            test = mse(block, xte, yte).item()
            test_off = None
            evo = block.evolution
            if evo is not None and not evo.is_static and getattr(evo, "off_meaning", None):
                with evo.off():
                    test_off = mse(block, xte, yte).item()
        fits.append(Fit(family, seed, count(block), hidden, lr, train, val, test, test_off,
                        {str(k): v[2] for k, v in runs.items()}, time.process_time() - start))
        if log:
            log(fits[-1])
    return fits, references(task, seed, teacher, x, y)


def geo_mean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def summarise(fits: Sequence[Fit]) -> list[dict]:
    """Per family: params, chosen lrs, held-out MSE min / max / geo-mean, geo-mean of
    MSE(anode) / MSE(family) over the seeds both ran, seeds where the family was best."""
    seeds = sorted({f.seed for f in fits})
    by = {(f.family, f.seed): f for f in fits}
    best = {s: min((f for f in fits if f.seed == s), key=lambda f: f.test).family for s in seeds}
    rows = []
    for family in dict.fromkeys(f.family for f in fits):
        mine = [f for f in fits if f.family == family]
        tests = [f.test for f in mine]
        ratios = [by[("anode", f.seed)].test / f.test for f in mine if ("anode", f.seed) in by]
        offs = [f.test_off for f in mine if f.test_off is not None]
        rows.append({"family": family, "params": mine[0].params, "hidden": mine[0].hidden,
                     "lrs": [f.lr for f in mine], "min": min(tests), "max": max(tests), "geo_mean": geo_mean(tests),
                     "ratio_anode": geo_mean(ratios) if ratios else None,
                     "off_geo_mean": geo_mean(offs) if len(offs) == len(mine) else None,
                     "best_in": sum(best[s] == family for s in seeds), "seeds": len(mine)})
    return rows


def format_summary(rows: Sequence[dict]) -> str:
    lines = ["| family | params | hidden | lr chosen (per seed) | held-out MSE min | max | geo-mean "
             "| anode / family (geo-mean) | evolution off (geo-mean) | best in seeds |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio_anode']:.2f}" if r["ratio_anode"] is not None else "-"
        off = f"{r['off_geo_mean']:.2e}" if r["off_geo_mean"] is not None else "-"
        lrs = ", ".join(f"{lr:g}" for lr in r["lrs"])
        lines.append(f"| {r['family']} | {r['params']} | {r['hidden']} | {lrs} | {r['min']:.2e} | {r['max']:.2e} "
                     f"| {r['geo_mean']:.2e} | {ratio} | {off} | {r['best_in']}/{r['seeds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"subset of {','.join(FAMILIES)}")
    p.add_argument("--iters", type=int, help=f"Adam steps per fit (default {Task.iters})")
    p.add_argument("--lrs", help="comma-separated learning rates searched per family (default "
                                 f"{','.join(f'{v:g}' for v in Task.lrs)})")
    p.add_argument("--quick", action="store_true", help="toy sizes, 1 seed (seconds; the tests' setting)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", help="also write every fit, the references and the summary to this file")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="print the summary of earlier --json files (no fits); a family's fit on a seed in a "
                        "later file replaces the one of an earlier file (e.g. one family re-run)")
    args = p.parse_args(argv)
    if args.merge:
        runs = [json.load(open(path)) for path in args.merge]
        order = list(FAMILIES)
        latest: dict[tuple[str, int], Fit] = {}
        for path, run in zip(args.merge, runs):
            for f in run["fits"]:
                if (f["family"], f["seed"]) in latest:
                    print(f"{f['family']} seed {f['seed']}: the fit of {path} replaces an earlier file's")
                latest[(f["family"], f["seed"])] = Fit(**f)
        fits = sorted(latest.values(),
                      key=lambda f: (order.index(f.family) if f.family in order else len(order), f.seed))
        refs = {seed: ref for run in runs for seed, ref in run["references"].items()}
        for seed, ref in sorted(refs.items(), key=lambda item: int(item[0])):
            print(f"{seed:>4} references: no motion {ref['no_motion']:.2e}, "
                  f"teacher frozen at K(0) {ref['teacher_frozen']:.2e}")
        print(format_summary(summarise(fits)))
        print(f"\n{len({f.seed for f in fits})} seed(s) from {len(runs)} file(s); CPU s of the fits: "
              f"{sum(f.seconds for f in fits):.0f}")
        return 0
    task = QUICK if args.quick else Task()
    try:
        seeds = [int(s) for s in ("0" if args.quick and args.seeds == "0,1,2" else args.seeds).split(",") if s]
        lrs = tuple(float(v) for v in args.lrs.split(",") if v) if args.lrs else task.lrs
    except ValueError:
        p.error("--seeds must be comma-separated integers and --lrs comma-separated numbers")
    families = [f for f in args.families.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        p.error(f"--families: unknown {bad}; allowed: {','.join(FAMILIES)}")
    if not seeds or not lrs or min(lrs) <= 0 or args.threads < 1 or (args.iters is not None and args.iters < 1):
        p.error("need at least one seed, learning rates > 0, --iters >= 1 and --threads >= 1")
    task = Task(**{**asdict(task), "lrs": lrs, **({"iters": args.iters} if args.iters else {})})
    missing = [f for f in families if f not in available(families)]
    if missing:
        print(f"note: the library has no evolution kind for {missing} (kinds: {EVOLUTION_KINDS}); skipped")
    families = available(families)
    torch.set_num_threads(args.threads)
    print(f"task: {task}")
    print(f"{'seed':>4} {'family':<11}{'params':>7}{'hidden':>7}{'lr':>8}{'train':>10}{'val':>10}{'test':>10}"
          f"{'test off':>10}{'cpu s':>7}", flush=True)

    def log(f: Fit) -> None:
        off = f"{f.test_off:>10.2e}" if f.test_off is not None else f"{'-':>10}"
        print(f"{f.seed:>4} {f.family:<11}{f.params:>7}{f.hidden:>7}{f.lr:>8g}{f.train:>10.2e}{f.val:>10.2e}"
              f"{f.test:>10.2e}{off}{f.seconds:>7.1f}", flush=True)

    start, cpu = time.perf_counter(), time.process_time()
    fits, refs = [], {}
    for seed in seeds:
        seed_fits, refs[seed] = run_seed(seed, task, families, log)
        fits += seed_fits
        print(f"{seed:>4} references: no motion {refs[seed]['no_motion']:.2e}, "
              f"teacher frozen at K(0) {refs[seed]['teacher_frozen']:.2e}", flush=True)
    rows = summarise(fits)
    print()
    print(format_summary(rows))
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    print(f"\n{len(seeds)} seed(s), {len(families)} families x {len(task.lrs)} learning rates, {task.iters} Adam "
          f"steps each: {wall:.0f} s wall, {used:.0f} s CPU")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"task": asdict(task), "fits": [asdict(f) for f in fits], "references": refs,
                       "summary": rows, "wall_s": wall, "cpu_s": used}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
