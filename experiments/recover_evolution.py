"""Proof that the weight evolution learns: recover known coefficients of a teacher block with Adam alone.

A teacher ODE block ``dz/dt = f(z; θ(t))``, ``dθ/dt = q(θ; p*)`` with ``f = conv3x3 -> tanh ->
conv3x3`` and known coefficients ``p*`` (per channel, per term and, for the reaction, per kernel
entry all different; for every ODE kind: ``diffusion``, ``advection``, ``reaction``, ``rda``,
``generator``) maps random inputs to outputs. A student with the *same* ``f`` and ``θ(0)`` and
every coefficient at the library's initial value 0 (a static-weight ANODE block) is fitted to
the teacher's outputs on its coefficients alone, by **plain Adam** (cosine-decayed learning rate,
projected onto the bounds by the library; no restarts, no sign search, no second-order
optimiser) through the block's default gradient (the checkpointed discrete adjoint), in float64.
It passes iff every coefficient ends within 5 % of its true value (or within 0.005 absolutely,
for true values near 0): the coefficients are identifiable from the outputs, the gradient path
through θ(t) is right, and the loss lets gradient descent find them from 0 -- which needs ``q``
to be smooth in every coefficient at its initial value (no ``|a|`` kink, the issue of upwind
advection with one signed velocity).

True values: magnitude 20-80 % of the term's bound (uniform), sign random for signed terms.

    python experiments/recover_evolution.py                 # every ODE kind (minutes on one CPU)
    python experiments/recover_evolution.py --quick         # toy scale, seconds (what the tests run)
    python experiments/recover_evolution.py --kinds advection --seed 3
    python experiments/recover_evolution.py --conditioning     # identifiability: singular values of the Jacobian
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from anodev2 import ODEBlock
from anodev2.evolution import EVOLUTIONS, WeightEvolution, build_evolution

REL_TOL, ABS_TOL = 0.05, 0.005
#: an MSE at or below this ends the fit early (the teacher is exactly representable)
LOSS_TOL = 1e-14
#: the kinds whose weights follow their own ODE dθ/dt = q(θ, p) (the registry's "ode" style)
KINDS: tuple[str, ...] = tuple(k for k, spec in EVOLUTIONS.items() if spec.style == "ode")


@dataclass
class Setting:
    """Sizes and the optimiser of one recovery (defaults: the documented run)."""

    channels: int = 3
    size: int = 8
    batch: int = 16
    steps: int = 2
    method: str = "rk4"
    adam_steps: int = 1500
    lr: float = 0.02


QUICK = Setting(channels=2, size=5, batch=4, steps=1, adam_steps=300, lr=0.03)


@dataclass
class Recovery:
    """Outcome of one recovery: worst errors over all coefficients, and whether all passed."""

    kind: str
    coefficients: int
    max_rel_error: float
    max_abs_error: float
    passed: bool
    final_loss: float
    steps: int
    seconds: float
    trajectory_error: float = math.nan


def true_coefficients(evo: WeightEvolution, seed: int) -> dict[str, torch.Tensor]:
    """Per coefficient a value of magnitude 20-80 % of its term's bound, random sign for a signed
    term (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    bounds = evo.bounds()
    out = {}
    for key, value in evo.coefficients().items():
        low, high = bounds[key.rsplit("/", 1)[1]]
        span = max(abs(low), abs(high))
        magnitude = span * (0.2 + 0.6 * torch.rand(value.shape, generator=gen, dtype=torch.float64))
        sign = torch.ones_like(magnitude) if low >= 0 else torch.where(
            torch.rand(value.shape, generator=gen) < 0.5, -1.0, 1.0).double()
        out[key] = magnitude * sign
    return out


def make_f(channels: int) -> nn.Module:
    """``conv3x3 -> tanh -> conv3x3`` (shape preserving)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(channels, channels, 3, padding=1))


def _mse(student: ODEBlock, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (student(x) - target).pow(2).mean()


def fit(student: ODEBlock, x: torch.Tensor, target: torch.Tensor, steps: int, lr: float) -> tuple[float, int]:
    """Plain Adam on the student's evolution coefficients with a cosine-decayed learning rate;
    stops early once the MSE is at ``LOSS_TOL``. Returns (final MSE, steps taken)."""
    params = list(student.evolution.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    taken = 0
    for taken in range(1, steps + 1):
        opt.zero_grad()
        loss = _mse(student, x, target)
        if loss.item() <= LOSS_TOL:
            taken -= 1
            break
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return _mse(student, x, target).item(), taken


def recover(kind: str, setting: Setting = Setting(), seed: int = 0) -> Recovery:
    """Fit a zero-initialised student's coefficients to a teacher's outputs (module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    s = setting
    f = make_f(s.channels).double()
    with torch.no_grad():  # weights of order 1 so that every term moves θ visibly
        for conv in (f[0], f[2]):
            conv.weight.mul_(2.0)
    shapes = {n: p.shape for n, p in f.named_parameters() if p.dim() == 4}
    teacher_evo = build_evolution(kind, shapes).double()
    truth = true_coefficients(teacher_evo, seed + 1)
    teacher_evo.set_coefficients(truth)
    teacher = ODEBlock(f, steps=s.steps, method=s.method, evolution=teacher_evo).double()
    student = ODEBlock(copy.deepcopy(f), steps=s.steps, method=s.method,
                       evolution=build_evolution(kind, shapes).double()).double()
    for p in student.f.parameters():
        p.requires_grad_(False)
    x = torch.randn(s.batch, s.channels, s.size, s.size, dtype=torch.float64)
    with torch.no_grad():
        target = teacher(x)
    final, taken = fit(student, x, target, s.adam_steps, s.lr)
    with torch.no_grad():
        student(x)
    trajectory = trajectory_error(teacher.weights_at(), student.weights_at())
    learned = student.evolution.coefficients()
    rel, abs_, ok = 0.0, 0.0, True
    for key, value in truth.items():
        err = (learned[key] - value).abs()
        abs_ = max(abs_, err.max().item())
        rel = max(rel, (err / value.abs()).max().item())
        ok = ok and bool(((err <= REL_TOL * value.abs()) | (err <= ABS_TOL)).all())
    n = sum(v.numel() for v in truth.values())
    return Recovery(kind, n, rel, abs_, ok, final, taken, time.perf_counter() - start, trajectory)


def trajectory_error(teacher: dict[str, list], student: dict[str, list]) -> float:
    """``max over weights and step times t_n > t_0 of ||θ_s(t_n) - θ_T(t_n)|| / ||θ_T(t_n) - θ_T(t_0)||``:
    how well the student's weight trajectory matches the teacher's, relative to the teacher's drift
    (the quantity that matters to f, identifiable even where the coefficients are not)."""
    worst = 0.0
    for name, thetas in teacher.items():
        for th_t, th_s in zip(thetas[1:], student[name][1:]):
            worst = max(worst, float((th_s - th_t).norm() / (th_t - thetas[0]).norm()))
    return worst


def conditioning(kind: str, setting: Setting = Setting(), seed: int = 0) -> torch.Tensor:
    """Singular values (descending) of the Jacobian of the teacher block's outputs with respect to
    its coefficients, at the true coefficients (the setting and seed of :func:`recover`, gradient
    by backprop): a value near 0 is a direction of the coefficients the outputs do not see."""
    torch.manual_seed(seed)
    s = setting
    f = make_f(s.channels).double()
    with torch.no_grad():
        for conv in (f[0], f[2]):
            conv.weight.mul_(2.0)
    shapes = {n: p.shape for n, p in f.named_parameters() if p.dim() == 4}
    evo = build_evolution(kind, shapes).double()
    evo.set_coefficients(true_coefficients(evo, seed + 1))
    block = ODEBlock(f, steps=s.steps, method=s.method, grad="backprop", evolution=evo).double()
    x = torch.randn(s.batch, s.channels, s.size, s.size, dtype=torch.float64)
    names = [f"evolution.{n}" for n, _ in evo.named_parameters()]
    values = tuple(p.detach().clone() for p in evo.parameters())

    def outputs(*params):
        return torch.func.functional_call(block, dict(zip(names, params)), (x,)).flatten()

    jac = torch.autograd.functional.jacobian(outputs, values)
    return torch.linalg.svdvals(torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--quick", action="store_true",
                   help=f"toy scale: {QUICK.channels} channels, {QUICK.size}x{QUICK.size}, batch {QUICK.batch}, "
                        f"{QUICK.adam_steps} Adam steps")
    p.add_argument("--channels", type=int, help=f"channels of f (default {Setting.channels})")
    p.add_argument("--size", type=int, help=f"input height = width (default {Setting.size})")
    p.add_argument("--batch", type=int, help=f"number of inputs (default {Setting.batch})")
    p.add_argument("--adam-steps", type=int, help=f"Adam steps (default {Setting.adam_steps})")
    p.add_argument("--lr", type=float, help=f"Adam's initial learning rate (default {Setting.lr})")
    p.add_argument("--seed", type=int, default=0, help="seed of f, the truth and the inputs (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--conditioning", action="store_true",
                   help="instead of fitting, print the singular values of d(outputs)/d(coefficients) at the truth")
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        p.error(f"--kinds: unknown {bad}; allowed: {','.join(KINDS)}")
    base = QUICK if args.quick else Setting()
    given = {k: getattr(args, k) for k in ("channels", "size", "batch", "adam_steps", "lr")
             if getattr(args, k) is not None}
    for name, value in given.items():
        if value <= 0 or (name != "lr" and value < 1):
            p.error(f"--{name.replace('_', '-')} must be >= 1 (--lr > 0), got {value}")
    setting = Setting(**{**base.__dict__, **given})
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"setting: {setting}, seed {args.seed}")
    if args.conditioning:
        print(f"{'kind':<11}{'coefs':>6}{'largest':>10}{'smallest':>10}{'condition':>11}  smallest 6")
        for kind in kinds:
            sv = conditioning(kind, setting, args.seed)
            small = " ".join(f"{v:.1e}" for v in sv[-6:].tolist())
            print(f"{kind:<11}{sv.numel():>6}{sv[0].item():>10.2e}{sv[-1].item():>10.2e}"
                  f"{(sv[0] / sv[-1]).item():>11.1e}  {small}", flush=True)
        return 0
    print(f"{'kind':<11}{'coefs':>6}{'max rel err':>13}{'max abs err':>13}{'final MSE':>11}{'θ(t) err':>10}"
          f"{'steps':>7}{'s':>7}  pass", flush=True)
    ok = True
    for kind in kinds:
        r = recover(kind, setting, args.seed)
        ok = ok and r.passed
        print(f"{r.kind:<11}{r.coefficients:>6}{r.max_rel_error:>13.2e}{r.max_abs_error:>13.2e}"
              f"{r.final_loss:>11.1e}{r.trajectory_error:>10.1e}{r.steps:>7}{r.seconds:>7.1f}  {'yes' if r.passed else 'NO'}", flush=True)
    print(f"criterion: |learned - true| <= {REL_TOL:.0%} of |true| or <= {ABS_TOL} for every coefficient; "
          f"plain Adam from 0, no sign search")
    print("θ(t) err: max over weights and step times of ||θ_student(t) - θ_teacher(t)|| / ||θ_teacher(t) - θ(0)|| "
          "(not part of the criterion)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
