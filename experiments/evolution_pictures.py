#!/usr/bin/env python3
"""Pictures of the weight evolution θ(t) of a trained ANODEV2 model, made from a checkpoint.

Shown at the times f actually uses θ: every evaluation of f in the block's solve (each RK
stage, in order; ``block.evaluation_times()`` / ``block.weights_at("evaluations")``). With the
networks' default euler x 3 on [0, 1] these are t = 0, 1/3, 2/3: f never sees θ(1), so the
drift printed is the one at t = 2/3 (the last time f uses θ; the line says which t and solve).

Writes into --out:
  kernels_<block>_<weight>.png   the kernels of one evolving weight at every evaluation time
                                 (one row per evaluation, one diverging colour scale for all
                                 rows), and the change θ(t) - θ(0) on its own colour scale;
  rel_change.png / .csv          ||θ(t) - θ(0)|| / ||θ(0)|| at every evaluation time t (csv: n =
                                 evaluation index, t) for every evolving weight.

θ(t) depends only on θ(0) and the evolution's parameters (not on the activations), so one
no-grad forward of a zero batch records what f saw.

    python experiments/evolution_pictures.py --checkpoint runs/aconnect/best.pt --out docs/figures/evolution
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from anodev2 import models
from anodev2.training.datasets import dataset_info
from anodev2.training.tb_logging import collect_evolution, kernel_grid
from experiments.output import write_csv
from experiments.trained import load_run_or_exit


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="RUN_DIR/last.pt or best.pt of an anodev2 run")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--max-kernels", type=int, default=16, help="kernels shown per row (default 16)")
    p.add_argument("--block", help="only this ODE block (module path); default: every block with evolving weights")
    args = p.parse_args(argv)
    if args.max_kernels < 1:
        p.error(f"--max-kernels must be >= 1, got {args.max_kernels}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, model, _ = load_run_or_exit(args.checkpoint)
    blocks = models.ode_blocks(model)
    if args.block:
        blocks = [(n, b) for n, b in blocks if n == args.block]
        if not blocks:
            p.error(f"--block {args.block!r} is not an ODE block; blocks: {[n for n, _ in models.ode_blocks(model)]}")
    with torch.no_grad():
        model(torch.zeros(1, *dataset_info(cfg.data.name).image_shape))
    found = collect_evolution(blocks)
    if not found:
        p.error(f"{args.checkpoint}: no ODE block has evolving weights (variant {cfg.model.variant!r}, "
                f"evolution {cfg.model.evolution!r}); use an anodev2 run with a non-static evolution")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    fig_r, ax_r = plt.subplots(figsize=(5.5, 3.6))
    last = {}
    for bname, info in found.items():
        block = next(b for n, b in blocks if n == bname)
        # θ at every evaluation of f in the forward (each RK stage, in order): exactly what f used;
        # euler x 3 on [0, 1] evaluates f at t = 0, 1/3, 2/3 and never at θ(1)
        ts = block.evaluation_times()
        seen = block.weights_at("evaluations")
        for wname in info["weights"]:
            thetas = seen[wname]
            t0 = thetas[0].float()
            rel = [float((th.float() - t0).norm() / t0.norm()) for th in thetas]
            rows += [{"block": bname, "weight": wname, "n": n, "t": t, "rel_change": r}
                     for n, (t, r) in enumerate(zip(ts, rel))]
            last[(bname, wname)] = (ts[-1], rel[-1], f"{block.method} x {block.steps} on [{block.t0:g}, {block.t1:g}]")
            ax_r.plot(ts, rel, marker="o", label=f"{bname}.{wname}")
            fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.9 * len(thetas)))
            for ax, grid, title in ((axes[0], kernel_grid(thetas, args.max_kernels), "θ(t) seen by f"),
                                    (axes[1], kernel_grid([t - thetas[0] for t in thetas], args.max_kernels),
                                     "θ(t) − θ(0)")):
                ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_title(f"{bname}.{wname}: {title}", fontsize=9)
                ax.set_xticks([])
                h = grid.shape[1] / len(thetas)
                ax.set_yticks([h * (n + 0.5) for n in range(len(thetas))], [f"t={t:.2f}" for t in ts], fontsize=8)
            fig.tight_layout()
            fig.savefig(args.out / f"kernels_{_safe(bname)}_{_safe(wname)}.png", dpi=110)
            plt.close(fig)
    ax_r.set_xlabel("t at which f is evaluated (block time)")
    ax_r.set_ylabel("||θ(t) − θ(0)|| / ||θ(0)||")
    ax_r.grid(alpha=0.3)
    ax_r.legend(fontsize=7)
    fig_r.tight_layout()
    fig_r.savefig(args.out / "rel_change.png", dpi=110)
    plt.close(fig_r)
    write_csv(args.out / "rel_change.csv", rows)
    for (b, w), (t, v, solve) in last.items():
        print(f"{b}.{w}: ||θ(t) - θ(0)|| / ||θ(0)|| = {v:.3e} at t = {t:.4g}, the last time f uses θ ({solve})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
