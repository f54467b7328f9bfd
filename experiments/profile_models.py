"""Where the extra training-step time of ANODEV2 over ANODE goes: self CPU time by aten op.

Profiles ``--steps`` SGD training steps (after ``--warmup``) of ``build(model, "anode")`` and
``build(model, "anodev2")`` with ``torch.profiler`` (CPU) and prints the ops whose self CPU time
grows most, per step, with their call counts (issue 9 item 5: the batch-16 target).

    python experiments/profile_models.py --model resnet10 --batch 16 --threads 1
    python experiments/profile_models.py --quick      # resnet4 at width 0.25, batch 2, one step: seconds
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from anodev2.models import build
from experiments.bench.ops import self_cpu_by_op


def self_times(model: str, variant: str, batch: int, steps: int, warmup: int,
               width: float = 1.0) -> dict[str, tuple[float, float]]:
    """``{op: (self CPU ms per step, calls per step)}`` of SGD training steps of one network."""
    torch.manual_seed(0)
    net = build(model, variant, width=width).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    return self_cpu_by_op(step, steps)


def main(argv=None) -> tuple[dict, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet10", help="network of anodev2.models (default resnet10)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--top", type=int, default=15, help="ops to print (default 15)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke test: resnet4, width 0.25, batch 2, 1 step, no warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.width, args.batch, args.steps, args.warmup = "resnet4", 0.25, 2, 1, 0
    if args.width <= 0:
        p.error("--width must be > 0")
    for name in ("batch", "steps", "threads", "top"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    torch.set_num_threads(args.threads)
    a, b = (self_times(args.model, v, args.batch, args.steps, args.warmup, args.width) for v in ("anode", "anodev2"))
    for v, d in (("anode", a), ("anodev2", b)):
        print(f"{v}: self CPU {sum(t for t, _ in d.values()):.1f} ms/step, {sum(n for _, n in d.values()):.0f} ops/step")
    zero = (0.0, 0.0)
    order = sorted(set(a) | set(b), key=lambda k: a.get(k, zero)[0] - b.get(k, zero)[0])
    print(f"{'op':<40}{'anode ms':>10}{'v2 ms':>10}{'delta':>9}{'anode n':>9}{'v2 n':>8}")
    for k in order[:args.top]:
        (ta, na), (tb, nb) = a.get(k, zero), b.get(k, zero)
        print(f"{k[:39]:<40}{ta:>10.1f}{tb:>10.1f}{tb - ta:>9.1f}{na:>9.0f}{nb:>8.0f}")
    return a, b


if __name__ == "__main__":
    main()
