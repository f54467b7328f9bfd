#!/usr/bin/env python3
"""Pictures of the weight evolution θ(t) of a trained ANODEV2 model, made from a checkpoint.

Writes into --out:
  kernels_<block>_<weight>.png   the kernels of one evolving weight at every step time t_n
                                 (rows t_0..t_Nt, one diverging colour scale for all rows), and
                                 the change θ(t_n) - θ(0) on its own colour scale;
  rel_change.png / .csv          ||θ(t_n) - θ(0)|| / ||θ(0)|| over t_n for every evolving weight.

θ(t) depends only on θ(0) and the evolution coefficients (dθ/dt = q(θ, p) does not involve
the activations), so one no-grad forward of any correctly shaped batch populates
``block.weights_at()``; a zero batch is used.

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
from experiments.trained import load_model


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

    model, cfg = load_model(args.checkpoint)
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
    for bname, info in found.items():
        steps = next(b for n, b in blocks if n == bname).steps
        ts = [n / steps for n in range(steps + 1)]
        for wname, thetas in info["weights"].items():
            t0 = thetas[0].float()
            rel = [float((th.float() - t0).norm() / t0.norm()) for th in thetas]
            rows += [{"block": bname, "weight": wname, "n": n, "t": t, "rel_change": r}
                     for n, (t, r) in enumerate(zip(ts, rel))]
            ax_r.plot(ts, rel, marker="o", label=f"{bname}.{wname}")
            fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.9 * len(thetas)))
            for ax, grid, title in ((axes[0], kernel_grid(thetas, args.max_kernels), "θ(t_n)"),
                                    (axes[1], kernel_grid([t - thetas[0] for t in thetas], args.max_kernels),
                                     "θ(t_n) − θ(0)")):
                ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_title(f"{bname}.{wname}: {title}", fontsize=9)
                ax.set_xticks([])
                h = grid.shape[1] / len(thetas)
                ax.set_yticks([h * (n + 0.5) for n in range(len(thetas))], [f"t={t:.2f}" for t in ts], fontsize=8)
            fig.tight_layout()
            fig.savefig(args.out / f"kernels_{_safe(bname)}_{_safe(wname)}.png", dpi=110)
            plt.close(fig)
    ax_r.set_xlabel("t (block time)")
    ax_r.set_ylabel("||θ(t) − θ(0)|| / ||θ(0)||")
    ax_r.grid(alpha=0.3)
    ax_r.legend(fontsize=7)
    fig_r.tight_layout()
    fig_r.savefig(args.out / "rel_change.png", dpi=110)
    plt.close(fig_r)
    write_csv(args.out / "rel_change.csv", rows)
    last = {}
    for r in rows:
        last[(r["block"], r["weight"])] = r["rel_change"]
    for (b, w), v in last.items():
        print(f"{b}.{w}: ||θ(1) - θ(0)|| / ||θ(0)|| = {v:.3e}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
