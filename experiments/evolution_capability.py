"""Proof that the weight evolution matters: a regression task that needs time-varying weights.

The teacher is an ODE block ``dz/dt = f(z; θ(t))`` acting on every pixel of a one-channel image,
``f = conv1x1(1 -> 2) -> tanh -> conv1x1(2 -> 1)``, whose first-layer kernels drift over
``t in [0, 1]`` by reaction (``r = +1`` grows one hidden unit's weight, ``r = -1`` shrinks the
other's). The velocity ``w (tanh(k_a(t) z) - tanh(k_b(t) z))`` changes sign half-way: each pixel
first moves towards 0 and then back out. The regression target of an input ``x`` is the pair
``(z(1/2), z(1))``. With static weights the per-pixel dynamics is a scalar *autonomous* ODE, whose
trajectories are monotone in ``t``: ``z(1/2) - x`` and ``z(1) - z(1/2)`` always have the same sign,
so no static student, however wide, can fit the teacher, while an ANODEV2 student of the same
form can represent it exactly. A student predicts both outputs with one ``f`` (and one
evolution) solved on ``[0, 1/2]`` and on ``[0, 1]`` with the same step ``h = 1/2`` (rk4).

Students, trained from a random initialisation by the same Adam schedule:

* **ANODE** (static weights), hidden width chosen so it has at least as many parameters;
* **ANODEV2** (RDA evolution, coefficients from 0), hidden width ``hidden``.

Reported per seed (seed = inputs and student initialisation): parameter counts, final train and
held-out MSE, the "static floor" (the lowest held-out MSE *any* static-weight per-pixel flow can
reach, :func:`static_floor`), and "frozen": the teacher's own ``f`` with its evolution switched off.

    python experiments/evolution_capability.py                      # 3 seeds
    python experiments/evolution_capability.py --seeds 0 --iters 200  # quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from anodev2 import ODEBlock
from anodev2.evolution import RDAEvolution, build_evolution


@dataclass
class Outcome:
    """Losses of one seed (mean squared error on the train and held-out inputs)."""

    seed: int
    params_anode: int
    params_anodev2: int
    anode_train: float
    anode_test: float
    anodev2_train: float
    anodev2_test: float
    teacher_frozen: float
    static_floor: float
    seconds: float


def make_f(hidden: int) -> nn.Module:
    """Per-pixel ``conv1x1(1 -> hidden) -> tanh -> conv1x1(hidden -> 1)``."""
    return nn.Sequential(nn.Conv2d(1, hidden, 1), nn.Tanh(), nn.Conv2d(hidden, 1, 1))


HALF_STEPS = 1  # solver steps on [0, 1/2]; [0, 1] takes twice as many (same step h = 1/2)


class Student(nn.Module):
    """``x -> (z(1/2), z(1))`` of one ODE system (shared ``f`` and evolution), rk4 with h = 1/2."""

    def __init__(self, f: nn.Module, evolution) -> None:
        super().__init__()
        self.mid = ODEBlock(f, steps=HALF_STEPS, method="rk4", evolution=evolution, t1=0.5)
        self.end = ODEBlock(f, steps=2 * HALF_STEPS, method="rk4", evolution=self.mid.evolution, t1=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.mid(x), self.end(x)])


def teacher() -> Student:
    """The drifting teacher of the module docstring (fixed; the seeds vary data and students)."""
    f = make_f(2)
    with torch.no_grad():
        for conv in (f[0], f[2]):
            conv.bias.zero_()
        f[0].weight.copy_(torch.tensor([1.0, 1.8]).view(2, 1, 1, 1))  # k_a(0) < k_b(0)
        f[2].weight.copy_(torch.tensor([4.0, -4.0]).view(1, 2, 1, 1))
    evo = build_evolution("rda", {n: p.shape for n, p in f.named_parameters() if p.dim() == 4})
    evo.set_coefficients({"0.weight/reaction": torch.tensor([1.0, -1.0])})  # k_a grows, k_b shrinks
    return Student(f, evo)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def fit(block: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int, lr: float) -> float:
    """Adam with cosine decay on the full training set; returns the final train MSE."""
    opt = torch.optim.Adam(block.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        loss = (block(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return (block(x) - y).pow(2).mean().item()


def static_hidden(hidden: int) -> int:
    """Smallest static hidden width with at least the parameters of the ANODEV2 student."""
    budget = count(Student(make_f(hidden), "rda"))
    width = hidden
    while count(Student(make_f(width), None)) < budget:
        width += 1
    return width


def static_floor(x: torch.Tensor, y: torch.Tensor) -> float:
    """Lowest MSE any per-pixel autonomous (static-weight) flow can reach on targets ``y``.

    ``x``: inputs ``[N, 1, 1, 1]``; ``y``: targets ``[2, N, 1, 1, 1]`` (``z(1/2)``, ``z(1)``). A scalar
    autonomous trajectory is monotone, so ``(x, p1, p2)`` is non-decreasing or non-increasing;
    the best such fit is the isotonic regression of ``(y1, y2)`` clipped at ``x`` (bounded
    isotonic regression), in whichever direction is cheaper. Exact for the time-continuous
    flow; the rk4 discretisation of a student is monotone to within its (small) step error.
    """
    x, y1, y2 = x.flatten().double(), y[0].flatten().double(), y[1].flatten().double()

    def up_cost(a, b1, b2):  # min (p1-b1)^2 + (p2-b2)^2 s.t. a <= p1 <= p2
        pooled = (b1 + b2) / 2
        p1 = torch.where(b1 <= b2, b1, pooled).clamp(min=a)
        p2 = torch.where(b1 <= b2, b2, pooled).clamp(min=a)
        return (p1 - b1) ** 2 + (p2 - b2) ** 2

    cost = torch.minimum(up_cost(x, y1, y2), up_cost(-x, -y1, -y2))
    return (cost.sum() / (2 * cost.numel())).item()


def run_seed(seed: int, *, hidden: int = 4, n_train: int = 128, n_test: int = 128, iters: int = 600,
             lr: float = 0.05) -> Outcome:
    """Train both students on one seed's data; see the module docstring."""
    start = time.perf_counter()
    target_block = teacher()
    gen = torch.Generator().manual_seed(seed)
    x = 4 * torch.rand(n_train + n_test, 1, 1, 1, generator=gen) - 2  # pixels in [-2, 2]
    with torch.no_grad():
        y = target_block(x)
        frozen = RDAEvolution("rda", target_block.mid.evolution.target_shapes)  # coefficients 0: static θ(0)
        y_static = Student(target_block.mid.f, frozen)(x)
    teacher_frozen = (y_static - y).pow(2).mean().item()
    floor = static_floor(x[n_train:], y[:, n_train:])
    xtr, ytr, xte, yte = x[:n_train], y[:, :n_train], x[n_train:], y[:, n_train:]
    results = {}
    for variant, width in (("anode", static_hidden(hidden)), ("anodev2", hidden)):
        torch.manual_seed(seed)
        block = Student(make_f(width), "rda" if variant == "anodev2" else None)
        train = fit(block, xtr, ytr, iters, lr)
        with torch.no_grad():
            test = (block(xte) - yte).pow(2).mean().item()
        results[variant] = (count(block), train, test)
    return Outcome(seed, results["anode"][0], results["anodev2"][0], results["anode"][1], results["anode"][2],
                   results["anodev2"][1], results["anodev2"][2], teacher_frozen, floor,
                   time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--iters", type=int, default=600, help="Adam steps per student (default 600)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds or args.iters < 1 or args.threads < 1:
        p.error("need at least one seed, --iters >= 1 and --threads >= 1")
    torch.set_num_threads(args.threads)
    print(f"{'seed':>4}{'params anode':>14}{'params v2':>11}{'anode train':>13}{'anode test':>12}"
          f"{'v2 train':>10}{'v2 test':>10}{'test ratio':>11}{'static floor':>13}{'frozen':>9}{'s':>6}")
    outs = []
    for seed in seeds:
        o = run_seed(seed, iters=args.iters)
        outs.append(o)
        print(f"{o.seed:>4}{o.params_anode:>14}{o.params_anodev2:>11}{o.anode_train:>13.2e}{o.anode_test:>12.2e}"
              f"{o.anodev2_train:>10.2e}{o.anodev2_test:>10.2e}{o.anode_test / o.anodev2_test:>11.1f}"
              f"{o.static_floor:>13.2e}{o.teacher_frozen:>9.2e}{o.seconds:>6.1f}")
    ratios = [o.anode_test / o.anodev2_test for o in outs]
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
    print(f"held-out MSE ratio anode / anodev2: min {min(ratios):.1f}, geometric mean {geo:.1f} over {len(outs)} seed(s)")
    print("static floor = lowest held-out MSE any static-weight (autonomous) per-pixel flow can reach")
    print("frozen = MSE of the teacher's own f with its evolution switched off (how far from static the target is)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
