"""How wrong is the Neural-ODE (backsolve) gradient? ANODE's central claim, measured.

ANODE (Gholami, Keutzer, Biros 2019, arXiv 1902.10298, Sec. 3.1) argues that the reverse-time
continuous adjoint of Neural ODEs (Chen et al. 2018; ``grad="backsolve"``) can give wrong
gradients for conv/ReLU networks: it reconstructs z(t) by integrating the ODE backwards, which
is unstable for dissipative dynamics, and it is the gradient of the continuous problem rather
than of the computed forward map. The discrete adjoint (``grad="checkpoint"``) is the exact
gradient of the computed map, to round-off.

Two block families (``--block``), methods euler / rk2 / rk4 and Nt in {1, 2, 4, 8, 16} on t in
[0, 1], float64, a few seeds, J = <v, z(1)> for a fixed random v:

* ``model`` (default): ``f`` is the ODE function of the networks themselves, the ``.f`` module of
  the first ODE block of ``anodev2.models.build(--model, "anode")`` (resnet4: ``conv3x3 -> BN ->
  relu -> conv3x3 -> BN``, docs/MODELS.md), with He-normal weights x ``--weight-scale``, or the
  **trained** weights of that block from a training run's checkpoint (``--weights RUN/last.pt``;
  the network, width and block come from the checkpoint's config; for an ANODEV2 run f is taken at
  its t = 0 weights θ(0), without the weight evolution). Activation and BatchNorm are the model's.
* ``field``: a generic ``f = conv3x3 -> [BatchNorm] -> act -> conv3x3`` with act in {relu,
  leaky_relu, tanh}, with and without BatchNorm, to see how the activation matters.

BatchNorm runs in training mode (batch statistics). The script measures:

* ``bs_err_input`` / ``bs_err_params``: ||g_backsolve - g_checkpoint|| / ||g_checkpoint|| for the
  gradient w.r.t. the input z(0) and w.r.t. all parameters of f (concatenated);
* ``ck_err_input`` / ``ck_err_params``: the same for checkpoint against backprop (round-off);
* ``reverse_err``: ||z_rev(0) - z(0)|| / ||z(0)||, z_rev(0) obtained by integrating from z(1)
  back to t = 0 with the same method and Nt (what backsolve does to reconstruct z).

Random weights (without ``--weights``): conv weights He-normal (std = gain / sqrt(fan_in), gain
sqrt(2) for relu/leaky_relu and 5/3 for tanh) times ``--weight-scale`` (default 1 and 2, two
synthetic scales; trained weights come from ``--weights``), conv biases N(0, 0.1^2), BatchNorm
affine weight 1 + N(0, 0.1^2), bias N(0, 0.1^2); input z(0) ~ N(0, 1).

Outputs in ``--out``: ``grad_accuracy.csv`` (one row per configuration and seed),
``grad_accuracy_summary.csv`` (median / max over seeds) and ``grad_accuracy.png`` (errors vs Nt
per activation, one line per method and BatchNorm setting; one figure ``grad_accuracy_w<scale>.png``
per weight scale).

    python experiments/grad_accuracy.py --out runs/grad_accuracy                 # resnet4's f, He weights
    python experiments/grad_accuracy.py --weights runs/ablate_cpu/resnet4-anode-s0/last.pt --out runs/ga_trained
    python experiments/grad_accuracy.py --block field --out runs/grad_accuracy_field   # activation study
    python experiments/grad_accuracy.py --quick --out /tmp/ga                      # seconds (field block)
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from itertools import product
from pathlib import Path

import torch
from torch import nn

import anodev2
from anodev2 import models
from experiments.output import save_png, write_csv
from experiments.trained import load_run_or_exit

ACTIVATIONS = ("relu", "leaky_relu", "tanh")
METHODS = ("euler", "rk2", "rk4")
GAINS = {"relu": math.sqrt(2.0), "leaky_relu": math.sqrt(2.0 / (1 + 0.01 ** 2)), "tanh": 5.0 / 3.0}
METRICS = ("bs_err_input", "bs_err_params", "ck_err_input", "ck_err_params", "reverse_err")


class Field(nn.Module):
    """f(t, z) = conv(act(norm(conv(z)))) with C -> C channels, 3x3, padding 1."""

    def __init__(self, channels: int, act: str, norm: bool) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {list(ACTIVATIONS)}, got {act!r}")
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.01), "tanh": nn.Tanh()}[act]

    def forward(self, t, z):
        return self.conv2(self.act(self.norm(self.conv1(z))))


class TimeFree(nn.Module):
    """``(t, z) -> f(z)`` around a network's autonomous ODE function ``f``."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, t, z):
        return self.f(z)


def randomise(f: nn.Module, act: str, scale: float, generator: torch.Generator) -> None:
    """He-normal x ``scale`` conv weights, N(0, 0.1^2) conv biases, BatchNorm affine 1 + N(0, 0.1^2) / N(0, 0.1^2)."""
    with torch.no_grad():
        for m in f.modules():
            if isinstance(m, nn.Conv2d):
                std = scale * GAINS[act] / math.sqrt(m.weight[0].numel())
                m.weight.copy_(std * torch.randn(m.weight.shape, generator=generator, dtype=torch.float64))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator, dtype=torch.float64))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=generator, dtype=torch.float64))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator, dtype=torch.float64))


def build(channels: int, act: str, norm: bool, scale: float, generator: torch.Generator) -> Field:
    """A float64 generic field (``--block field``) with random weights (see the module docstring)."""
    f = Field(channels, act, norm).double()
    randomise(f, act, scale, generator)
    return f.train()


def model_f(args) -> nn.Module:
    """The ODE function ``f`` of the first ODE block of the network (``--block model``): trained
    weights from ``args.weights`` or a fresh ``build(args.model, "anode", width=args.width)``."""
    if args.weights:
        _, net, _ = load_run_or_exit(args.weights)
    else:
        net = models.build(args.model, "anode", width=args.width)
    blocks = models.ode_blocks(net)
    if not blocks:
        raise SystemExit(f"error: {args.weights or args.model} has no ODE block (a baseline network?)")
    return blocks[0][1].f


def make_field(act: str, norm: bool, scale: float, generator: torch.Generator, args) -> nn.Module:
    """``f(t, z)`` in float64, training mode: the models' f (``--block model``) or the generic field."""
    if args.block == "field":
        return build(args.channels, act, norm, scale, generator)
    f = copy.deepcopy(args.model_f).double()
    if not args.weights:
        randomise(f, act, scale, generator)
    return TimeFree(f).train()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def gradients(f: Field, z0: torch.Tensor, v: torch.Tensor, method: str, steps: int, grad: str):
    """(dJ/dz0, dJ/dparams concatenated, z(1)) for J = <v, z(1)>."""
    z = z0.clone().requires_grad_(True)
    params = list(f.parameters())
    z1 = anodev2.odeint(f, z, 0.0, 1.0, steps=steps, method=method, grad=grad)
    g = torch.autograd.grad((z1 * v).sum(), [z, *params])
    return g[0], torch.cat([x.reshape(-1) for x in g[1:]]), z1.detach()


def measure(act: str, norm: bool, method: str, steps: int, seed: int, scale: float, args) -> dict:
    gen = torch.Generator().manual_seed(seed)
    f = make_field(act, norm, scale, gen, args)
    channels = args.channels if args.block == "field" else next(
        m for m in f.modules() if isinstance(m, nn.Conv2d)).in_channels
    z0 = torch.randn(args.batch, channels, args.size, args.size, generator=gen, dtype=torch.float64)
    v = torch.randn(z0.shape, generator=gen, dtype=torch.float64)
    bp_z, bp_p, z1 = gradients(f, z0, v, method, steps, "backprop")
    ck_z, ck_p, _ = gradients(f, z0, v, method, steps, "checkpoint")
    bs_z, bs_p, _ = gradients(f, z0, v, method, steps, "backsolve")
    with torch.no_grad():
        z_rev = anodev2.odeint(f, z1, 1.0, 0.0, steps=steps, method=method, grad="backprop")
    return {"block": args.block_label, "activation": act, "batchnorm": norm, "method": method, "steps": steps,
            "seed": seed, "weight_scale": scale,
            "bs_err_input": rel(bs_z, ck_z), "bs_err_params": rel(bs_p, ck_p),
            "ck_err_input": rel(ck_z, bp_z), "ck_err_params": rel(ck_p, bp_p),
            "reverse_err": rel(z_rev, z0), "z1_norm_ratio": (z1.norm() / z0.norm()).item()}


def summarise(rows: list[dict]) -> list[dict]:
    """Median and max over seeds of every metric, per configuration."""
    keys = ("block", "activation", "batchnorm", "method", "steps", "weight_scale")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        d = dict(zip(keys, key))
        d["seeds"] = len(rs)
        for m in METRICS:
            vals = [r[m] for r in rs]
            d[f"{m}_median"], d[f"{m}_max"] = statistics.median(vals), max(vals)
        out.append(d)
    return out


def plot(summary: list[dict], path: Path, title: str) -> None:
    """Rows: backsolve error (input grad), (param grad), reversal error (medians over seeds),
    checkpoint vs backprop (max over seeds);
    columns: activations; lines: method (colour) x BatchNorm (solid: without, dashed: with)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acts = [a for a in ACTIVATIONS if any(s["activation"] == a for s in summary)]
    panels = [("bs_err_input_median", "backsolve vs exact: dJ/dz(0)"),
              ("bs_err_params_median", "backsolve vs exact: dJ/dθ"),
              ("reverse_err_median", "reversal: |z_rev(0) - z(0)| / |z(0)|"),
              ("ck_err_params_max", "checkpoint vs backprop: dJ/dθ (max; 0 at 1e-17)")]
    colors = {"euler": "tab:blue", "rk2": "tab:orange", "rk4": "tab:green"}
    fig, axes = plt.subplots(len(panels), len(acts), figsize=(4.2 * len(acts), 2.9 * len(panels)), squeeze=False)
    for j, act in enumerate(acts):
        for i, (metric, label) in enumerate(panels):
            ax = axes[i][j]
            for method, norm in product(METHODS, (False, True)):
                pts = sorted((s["steps"], s[metric]) for s in summary
                             if s["activation"] == act and s["method"] == method and s["batchnorm"] == norm)
                if pts:
                    ax.plot([p[0] for p in pts], [max(p[1], 1e-17) for p in pts], "o-" if not norm else "s--",
                            color=colors[method], label=f"{method}{' +BN' if norm else ''}", markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{act}: {label}", fontsize=9)
            if i == len(panels) - 1:
                ax.set_xlabel("Nt (steps on [0, 1])")
            if j == 0:
                ax.set_ylabel("relative error")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=80)
    plt.close(fig)


def parse_list(text: str, allowed=None, cast=str) -> list:
    vals = [cast(v.strip()) for v in text.split(",") if v.strip()]
    if not vals or (allowed is not None and any(v not in allowed for v in vals)):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {list(allowed)}, got {text!r}")
    return vals


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", choices=("model", "field"),
                   help="model: the networks' ODE function f (default; field with --quick); "
                        "field: generic conv-[BN]-act-conv")
    p.add_argument("--model", default="resnet4", choices=tuple(models.MODELS),
                   help="--block model: network whose first ODE block's f is used (default resnet4)")
    p.add_argument("--width", type=float, default=0.5,
                   help="--block model: channel multiplier of that network (default 0.5: resnet4's f on 8 channels)")
    p.add_argument("--weights", help="--block model: a training run's checkpoint (RUN_DIR/last.pt); its network's "
                                     "first ODE block's trained f replaces the random weights")
    p.add_argument("--activations", type=lambda s: parse_list(s, ACTIVATIONS), default=list(ACTIVATIONS),
                   help="--block field: comma-separated subset of relu,leaky_relu,tanh (default all)")
    p.add_argument("--methods", type=lambda s: parse_list(s, METHODS), default=list(METHODS),
                   help="comma-separated subset of euler,rk2,rk4 (default all)")
    p.add_argument("--steps", type=lambda s: parse_list(s, None, int), default=[1, 2, 4, 8, 16],
                   help="Nt values (default 1,2,4,8,16)")
    p.add_argument("--batchnorm", choices=("both", "yes", "no"), default="both",
                   help="--block field: BatchNorm in f: both (default), yes, no")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..n-1 (default 3)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--channels", type=int, default=8, help="--block field: channels (default 8)")
    p.add_argument("--size", type=int, default=16, help="spatial size H = W (default 16)")
    p.add_argument("--weight-scale", type=lambda s: parse_list(s, None, float),
                   help="comma-separated multipliers of the He-normal conv weights, one figure per value "
                        "(default: 1,2 for --block field; 1 for --block model, whose f ends in BatchNorm, "
                        "which undoes any scale of the conv weights before it)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--no-plot", action="store_true", help="do not write grad_accuracy.png")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: relu,tanh; euler,rk4; Nt 1,4; 1 seed; batch 2, 4 channels, 8x8")
    p.add_argument("--out", default="runs/grad_accuracy", help="output directory (default runs/grad_accuracy)")
    args = p.parse_args(argv)
    if args.quick:
        args.activations, args.methods, args.steps = ["relu", "tanh"], ["euler", "rk4"], [1, 4]
        args.seeds, args.batch, args.channels, args.size, args.weight_scale = 1, 2, 4, 8, [1.0]
    if args.block is None:
        args.block = "field" if args.quick else "model"
    if args.weight_scale is None:
        args.weight_scale = [1.0, 2.0] if args.block == "field" else [1.0]
    if args.weights and args.block != "model":
        p.error("--weights needs --block model (it takes the networks' f from the checkpoint)")
    if args.block == "model":
        args.model_f = model_f(args)
        names = {type(m).__name__ for m in args.model_f.modules()}
        # the model's activation (for the He gain) and BatchNorm are fixed by its f
        args.activations = ["tanh" if "Tanh" in names else "relu"]
        args.batchnorm = "yes" if any("BatchNorm" in n for n in names) else "no"
        if args.weights:
            args.weight_scale = [1.0]
        args.block_label = f"trained:{args.weights}" if args.weights else f"{args.model}.f"
    else:
        args.block_label = "field"
    for name in ("seeds", "batch", "channels", "size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(s < 1 for s in args.steps):
        p.error(f"--steps must be ints >= 1, got {args.steps}")
    if not all(w > 0 and math.isfinite(w) for w in args.weight_scale):
        p.error(f"--weight-scale values must be positive numbers, got {args.weight_scale}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    norms = {"both": (False, True), "yes": (True,), "no": (False,)}[args.batchnorm]
    start = time.time()
    rows = [measure(act, norm, method, nt, seed, scale, args)
            for scale, act, norm, method, nt, seed in product(args.weight_scale, args.activations, norms,
                                                              args.methods, args.steps, range(args.seeds))]
    summary = summarise(rows)
    write_csv(out / "grad_accuracy.csv", rows)
    write_csv(out / "grad_accuracy_summary.csv", summary)
    figures = []
    for scale in args.weight_scale:
        weights = "trained weights" if args.weights else f"He weights x {scale:g}"
        title = (f"f = {args.block_label}; float64, batch {args.batch}, {args.size}x{args.size}, {weights}, "
                 f"{args.seeds} seed(s); J = <v, z(1)>")
        if not args.no_plot:
            figures.append(f"grad_accuracy_w{scale:g}.png")
            plot([s for s in summary if s["weight_scale"] == scale], out / figures[-1], title)
    cols = " | ".join(f"Nt={n}" for n in args.steps)
    lines = [f"| scale | act | BN | method | metric (median) | {cols} |",
             "|---|---|---|---|---|" + "---|" * len(args.steps)]
    for scale, act, norm, method in product(args.weight_scale, args.activations, norms, args.methods):
        for m in ("bs_err_input", "bs_err_params", "reverse_err"):
            vals = [next(s[f"{m}_median"] for s in summary if (s["weight_scale"], s["activation"], s["batchnorm"],
                                                                 s["method"], s["steps"]) == (scale, act, norm, method, n))
                    for n in args.steps]
            lines.append(f"| {scale:g} | {act} | {'yes' if norm else 'no'} | {method} | {m} | "
                         + " | ".join(f"{x:.2e}" for x in vals) + " |")
    ck = max(max(r["ck_err_input"], r["ck_err_params"]) for r in rows)
    weights = ("trained weights" if args.weights else
               f"He-normal weights x {', '.join(f'{w:g}' for w in args.weight_scale)}")
    head = (f"f = {args.block_label}; float64, batch {args.batch}, {args.size}x{args.size}, {weights}, "
            f"seeds 0..{args.seeds - 1}; J = <v, z(1)>; median over seeds")
    text = "\n".join(lines) + f"\n\nmax relative error checkpoint vs backprop over all rows: {ck:.2e}"
    print(head + "\n\n" + text + f"\n\n{len(rows)} solves in {time.time() - start:.0f} s")
    with open(out / "grad_accuracy.md", "w") as fh:
        fh.write(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n\n{head}\n\n{text}\n")
    print(f"wrote {out}/grad_accuracy.csv, grad_accuracy_summary.csv, grad_accuracy.md"
          + "".join(f", {f}" for f in figures))
    return rows


if __name__ == "__main__":
    main()
