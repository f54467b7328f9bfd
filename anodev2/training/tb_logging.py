"""TensorBoard views of training and of the weight evolution θ(t) inside ODE blocks.

Tag scheme (global step = epoch number, 1-based, for every tag):

    train/loss, train/acc, test/loss, test/acc      mean cross-entropy, top-1 accuracy in [0, 1]
    opt/lr                                         learning rate of the epoch
    time/epoch_s, time/images_per_s                wall time of the epoch, training throughput
    evolution/{block}/time/t{n}                    the time t_n of index n (scalar)
    evolution/{block}/{weight}/hist/t{n}           histogram of θ(t_n)
    evolution/{block}/{weight}/rel_change/t{n}     ||θ(t_n) - θ(t_0)|| / ||θ(t_0)||
    evolution/{block}/{weight}/kernels             image: row n shows kernels of θ(t_n), one colour
                                                   scale for all n (red > 0, white 0, blue < 0)
    evolution/{block}/{weight}/kernels_delta       image: row n shows θ(t_n) - θ(t_0), one colour scale
    evolution/{block}/{weight}/coef/{kind}/{mean,min,max}   scalars of block.evolution.coefficients()
    evolution/{block}/{weight}/coef/{kind}/hist    histogram of those per-channel coefficients

``{block}`` is the module path of the ODE block (anodev2.models.ode_blocks), ``{weight}``
the evolving parameter name relative to the block's f (e.g. ``conv1.weight``). The views
come from ``block.weights_at("evaluations")`` after one no-grad, eval-mode forward pass on a
fixed batch (ANODEV2, arXiv 1906.04596: the weights θ(t) of a block evolve by dθ/dt = q(θ, p)):
t_0 < t_1 < ... are the distinct times at which f evaluated θ, i.e. the weights the network
actually used (Euler x 3 on [0, 1]: 0, 1/3, 2/3 — f never sees θ(1)); where a Runge-Kutta
method evaluates f twice at one time (rk4's two midpoint stages) the first stage's θ is shown.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import torch
from einops import rearrange

__all__ = ["SCALAR_TAGS", "evolution_tags", "evaluated_weights", "kernel_grid", "collect_evolution", "log_evolution", "log_scalars"]

#: metrics key -> TensorBoard tag
SCALAR_TAGS = {
    "train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss", "test_acc": "test/acc",
    "lr": "opt/lr", "epoch_time": "time/epoch_s", "images_per_sec": "time/images_per_s",
}


def evolution_tags(block: str, weight: str, times: int) -> list[str]:
    """The per-time and image tags logged for one evolving weight of a block whose f evaluated θ
    at ``times`` distinct times (Euler x Nt: Nt; see :func:`evaluated_weights`)."""
    base = f"evolution/{block}/{weight}"
    tags = [f"{base}/hist/t{n}" for n in range(times)]
    tags += [f"{base}/rel_change/t{n}" for n in range(times)]
    return tags + [f"{base}/kernels", f"{base}/kernels_delta"]


def evaluated_weights(block: torch.nn.Module) -> tuple[list[float], dict[str, list[torch.Tensor]]]:
    """``(times, {weight: [θ(t_n)]})`` at the distinct times f evaluated θ in the block's last
    forward (first evaluation at each time), in order. Empty for a block whose weights do not
    evolve (no evolution or a static one)."""
    times = block.evaluation_times() if getattr(block, "evolution", None) is not None else []
    if not times:  # no evolution, a static one (nothing recorded: θ never changes), or no forward yet
        return [], {}
    weights = block.weights_at("evaluations")
    keep = [i for i, t in enumerate(times) if t not in times[:i]]
    return [times[i] for i in keep], {w: [seq[i] for i in keep] for w, seq in weights.items()}


def _slices(theta: torch.Tensor) -> torch.Tensor:
    """A weight as a stack of 2-D slices [K, h, w] (conv [O, I, k, k] -> [O*I, k, k])."""
    if theta.dim() >= 3:
        return theta.reshape(-1, *theta.shape[-2:])
    if theta.dim() == 2:
        return theta.unsqueeze(0)
    return theta.reshape(1, 1, -1)


def kernel_grid(thetas: Sequence[torch.Tensor], max_kernels: int = 16, scale: Optional[float] = None,
                min_pixels: int = 24) -> torch.Tensor:
    """Tile θ(t_0..t_Nt) into one RGB image [3, H, W] with values in [0, 1].

    Row n shows the first ``max_kernels`` 2-D slices of θ(t_n), each upscaled (nearest) to about
    ``min_pixels`` pixels and framed by a 1-pixel black border. All rows share one diverging colour
    scale: value/scale with scale = max |θ(t_n)| over all n (or ``scale``), red positive, blue negative.
    """
    if not thetas:
        raise ValueError("thetas must hold at least one tensor")
    if max_kernels < 1:
        raise ValueError(f"max_kernels={max_kernels} is not allowed; allowed: >= 1")
    v = torch.stack([_slices(t.detach().float().cpu())[:max_kernels] for t in thetas])  # [T, K, h, w]
    s = float(scale) if scale is not None else float(v.abs().max())
    v = (v / s).clamp(-1, 1) if s > 0 else torch.zeros_like(v)
    up = max(1, min_pixels // max(v.shape[-2:]))
    v = v.repeat_interleave(up, dim=-2).repeat_interleave(up, dim=-1)
    rgb = torch.stack([1 - (-v).clamp(min=0), 1 - v.abs(), 1 - v.clamp(min=0)], dim=2)  # [T, K, 3, h, w]
    rgb = torch.nn.functional.pad(rgb, (1, 1, 1, 1), value=0.0)
    return rearrange(rgb, "t k c h w -> c (t h) (k w)")


def collect_evolution(blocks: Iterable[tuple[str, torch.nn.Module]]) -> dict:
    """{block name: {"times": [t_n], "weights": {weight: [θ(t_n)]}, "coefficients": {key: Tensor}}} for
    blocks with evolving weights, at the distinct times f evaluated θ (:func:`evaluated_weights`).

    Call after a forward pass. Blocks whose ``weights_at()`` is empty are left out.
    """
    out = {}
    for name, block in blocks:
        times, weights = evaluated_weights(block)
        if not weights:
            continue
        evo = getattr(block, "evolution", None)
        coefs = evo.coefficients() if evo is not None and hasattr(evo, "coefficients") else {}
        out[name or "block"] = {"times": times, "weights": weights, "coefficients": dict(coefs)}
    return out


@torch.no_grad()
def log_evolution(writer, model: torch.nn.Module, blocks: Sequence[tuple[str, torch.nn.Module]],
                  batch: torch.Tensor, step: int, max_kernels: int = 16) -> dict:
    """Forward ``batch`` through ``model`` (eval mode, no grad) and write the evolution views of ``blocks``.

    Returns what :func:`collect_evolution` found (also handy for tests). The model's training
    mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        model(batch)
    finally:
        model.train(was_training)
    found = collect_evolution(blocks)
    for bname, info in found.items():
        for n, t in enumerate(info["times"]):
            writer.add_scalar(f"evolution/{bname}/time/t{n}", float(t), step)
        for wname, thetas in info["weights"].items():
            base = f"evolution/{bname}/{wname}"
            t0 = thetas[0].detach().float()
            norm0 = t0.norm()
            for n, th in enumerate(thetas):
                th = th.detach().float()
                if bool(torch.isfinite(th).all()):  # TensorBoard cannot bin NaN/inf ("histogram is empty")
                    writer.add_histogram(f"{base}/hist/t{n}", th.cpu(), step)
                diff = (th - t0).norm()
                rel = diff / norm0 if norm0 > 0 else diff
                writer.add_scalar(f"{base}/rel_change/t{n}", float(rel), step)
            writer.add_image(f"{base}/kernels", kernel_grid(thetas, max_kernels), step)
            writer.add_image(f"{base}/kernels_delta", kernel_grid([t - thetas[0] for t in thetas], max_kernels), step)
        for key, value in info["coefficients"].items():
            weight, _, kind = key.rpartition("/")
            base = f"evolution/{bname}/{weight}/coef/{kind}" if weight else f"evolution/{bname}/coef/{kind}"
            value = value.detach().float().cpu()
            writer.add_scalar(f"{base}/mean", float(value.mean()), step)
            writer.add_scalar(f"{base}/min", float(value.min()), step)
            writer.add_scalar(f"{base}/max", float(value.max()), step)
            if value.numel() > 1 and bool(torch.isfinite(value).all()):
                writer.add_histogram(f"{base}/hist", value, step)
    return found


def log_scalars(writer, metrics: Mapping, step: int) -> None:
    """Write the entries of ``metrics`` named in :data:`SCALAR_TAGS` (None values are skipped)."""
    for key, tag in SCALAR_TAGS.items():
        if metrics.get(key) is not None:
            writer.add_scalar(tag, float(metrics[key]), step)
