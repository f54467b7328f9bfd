"""torch.compile through ODE blocks (issue 19 item 3): per network and variant, one training
step (forward, cross-entropy, backward) eager vs ``anodev2.compile(model)``, on the CPU.

For each (network, variant, gradient mode) the script builds the model, takes the eager
gradients, compiles (``anodev2.compile``: the network with ``torch.compile`` and, for adjoint
modes, each ODE block's vector field, so the recomputed and reversed steps in backward run
compiled too), measures the compile time (the first compiled steps, until no more compiles
happen; excluded from the step times), compares the compiled gradients with the eager ones
(max |difference| / max |gradient| over all parameters) and times ``--repeats`` steps of each
(median of this thread's CPU time and of wall time, interleaved). Graph breaks and graphs are
counted with dynamo's counters; run with ``TORCH_LOGS=graph_breaks`` for the full report.

    python experiments/bench_compile.py --out runs/bench_compile            # resnet4 anode/anodev2
    python experiments/bench_compile.py --quick                             # aot_eager, seconds
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import anodev2
from anodev2 import models
from experiments.output import write_csv


def _step(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach()


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def run_one(net: str, variant: str, grad: str, a) -> dict:
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    opts = {} if grad == "default" else {"grad": grad}
    model = models.build(net, variant, width=a.width, **opts)
    model.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=gen)
    y = torch.randint(0, 10, (a.batch,), generator=gen)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, x, y)
    g_eager = _grads(model)
    model.load_state_dict(state)  # BatchNorm running stats back to where they were
    compiled = anodev2.compile(model, backend=a.backend, dynamic=a.dynamic)
    t0 = time.perf_counter()
    _step(compiled, x, y)
    g_comp = _grads(model)
    compile_s = time.perf_counter() - t0
    for _ in range(2):  # recompiles triggered by the second step (e.g. BatchNorm buffers) count as compile time
        t1 = time.perf_counter()
        _step(compiled, x, y)
        compile_s += time.perf_counter() - t1
    scale = max(g.abs().max().item() for g in g_eager)
    diff = max((a_ - b_).abs().max().item() for a_, b_ in zip(g_eager, g_comp))
    times = {"eager": ([], []), "compiled": ([], [])}
    for _ in range(a.repeats):
        for name, m in (("eager", model), ("compiled", compiled)):
            w0, c0 = time.perf_counter(), time.thread_time()
            _step(m, x, y)
            times[name][0].append(time.thread_time() - c0)
            times[name][1].append(time.perf_counter() - w0)
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in times.items()}
    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"].get("unique_graphs", 0)
    return {"network": net, "variant": variant, "grad": grad, "backend": a.backend, "batch": a.batch,
            "compile_s": round(compile_s, 1), "eager_cpu_ms": round(med["eager"][0] * 1e3, 2),
            "compiled_cpu_ms": round(med["compiled"][0] * 1e3, 2),
            "speedup_cpu": round(med["eager"][0] / med["compiled"][0], 3),
            "eager_wall_ms": round(med["eager"][1] * 1e3, 2), "compiled_wall_ms": round(med["compiled"][1] * 1e3, 2),
            "speedup_wall": round(med["eager"][1] / med["compiled"][1], 3),
            "grad_rel_diff": f"{diff / scale:.2e}", "graphs": graphs, "graph_breaks": breaks,
            "break_reasons": "; ".join(sorted({k.split(chr(10))[0][:80] for k in counters["graph_break"]}))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", default=["resnet4"])
    p.add_argument("--variants", nargs="+", default=["anode", "anodev2"])
    p.add_argument("--grads", nargs="+", default=["default", "backprop"],
                   help="gradient modes ('default' = the variant's, checkpoint)")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--dynamic", action="store_true",
                   help="torch.compile(dynamic=None) instead of dynamic=False (static shapes, the default here: with "
                        "automatic dynamic shapes inductor 2.14 fails on the anodev2 backprop graph's backward)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="aot_eager backend, width 0.25, batch 2, 8x8, 2 repeats")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    a.dynamic = None if a.dynamic else False
    if a.quick:
        a.backend, a.width, a.batch, a.size, a.repeats = "aot_eager", 0.25, 2, 8, 2
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), backend {a.backend}, input "
          f"[{a.batch}, 3, {a.size}, {a.size}], load average {load0:.2f}")
    rows = []
    for net in a.networks:
        for variant in a.variants:
            for grad in a.grads:
                r = run_one(net, variant, grad, a)
                rows.append(r)
                print(f"{net:9s} {variant:8s} {grad:9s} compile {r['compile_s']:6.1f} s | step cpu eager "
                      f"{r['eager_cpu_ms']:8.2f} ms compiled {r['compiled_cpu_ms']:8.2f} ms x{r['speedup_cpu']:.2f} | "
                      f"wall x{r['speedup_wall']:.2f} | grad rel diff {r['grad_rel_diff']} | graphs {r['graphs']} "
                      f"breaks {r['graph_breaks']} {r['break_reasons']}", flush=True)
    print(f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    if a.out is not None:
        write_csv(a.out / "compile.csv", rows)
        print(f"wrote {a.out / 'compile.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
