#!/usr/bin/env python3
"""What the weight evolution of trained ANODEV2 runs learned and how much the network uses it.

For every run directory (a ``train_coupled.py`` output with ``best.pt`` or ``last.pt``;
``--checkpoint last`` takes the end of training):

* **coefficients**: per ODE block and term, the distribution (mean, std, min, max over every
  output channel of every evolving weight) after training and of the untrained model built with
  the same seed (the initialisation);
* **drift**: ``||θ(t) - θ(0)|| / ||θ(0)||`` of every evolving weight at the *last time f uses θ*
  (the last evaluation of f in the block's solve: t = 2/3 for the networks' euler x 3 on [0, 1],
  which never evaluates f at θ(1); ``drift_time`` records that t), trained vs untrained;
* **accuracy**: test accuracy of the trained model, and with its evolution switched off
  (``evolution.off()`` of every evolving block: θ(t) = θ(t0) for the ODE kinds, i.e. ANODE with
  the same weights; what "off" means for each family is its ``off_meaning``); the drop says how
  much the network uses θ(t);
* **history**: from the run's TensorBoard events (``log.evolution_every``), the largest
  coefficient magnitude ``max(|min|, |max|)`` of every weight and term at every logged epoch, and
  the drift ``||θ(t_N) - θ(0)|| / ||θ(0)||`` per logged epoch: whether the coefficients moved during
  training, not only where they ended;
* **pictures** (``--pictures``): per evolving weight, the kernels θ(t) f saw (one row per
  evaluation of f, labelled with its t; first input-channel slice of the first ``--max-kernels``
  output channels) and ``θ(t) - θ(0)``, each with a colour bar; and a histogram of each term's
  coefficients, init vs trained.

Writes ``evolution_report.json`` (and the pictures) into ``--out`` and prints Markdown tables.

    python experiments/evolution_report.py runs/grid/anodev2_s0 runs/grid/anodev2_s1 --out docs/figures/evolution
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

import torch

from anodev2 import models
from anodev2.training.data import BatchLoader, load_datasets
from anodev2.training.datasets import dataset_info
from anodev2.training.runs import build_model
from experiments.trained import load_run_or_exit


def load_run(run_dir: Path, checkpoint: str = "best") -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(trained model, untrained model of the same seed, config) of one run directory;
    ``checkpoint`` "best" reads best.pt (else last.pt), "last" reads last.pt (the end of training)."""
    which = "best" if checkpoint == "best" and (run_dir / "best.pt").is_file() else "last"
    cfg, trained, _ = load_run_or_exit(run_dir, which)
    torch.manual_seed(cfg.train.seed)  # the trainer's initialisation of this seed
    untrained = build_model(cfg).eval()
    return trained, untrained, cfg


def evolving_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, ODE block) of every block whose weights evolve (non-static evolution)."""
    return [(n, b) for n, b in models.ode_blocks(model) if b.evolving_names]


def coefficient_stats(model: torch.nn.Module) -> dict[str, dict[str, dict[str, float]]]:
    """{block: {term: {mean, std, min, max, n}}} over all output channels of all evolving weights."""
    out = {}
    for name, block in evolving_blocks(model):
        per_term: dict[str, list[torch.Tensor]] = {}
        for key, value in block.evolution.coefficients().items():
            per_term.setdefault(key.rsplit("/", 1)[1], []).append(value.double().flatten())
        out[name] = {}
        for term, values in per_term.items():
            v = torch.cat(values)
            out[name][term] = {"mean": v.mean().item(), "std": v.std().item() if v.numel() > 1 else 0.0,
                               "min": v.min().item(), "max": v.max().item(), "n": v.numel()}
    return out


@torch.no_grad()
def trajectories(model: torch.nn.Module, image_shape: tuple[int, int, int]
                 ) -> tuple[dict[str, dict[str, list]], dict[str, list[float]]]:
    """({block: {weight: [θ seen by f at each evaluation]}}, {block: [evaluation times]}): exactly
    the weights f used, in order (every RK stage; euler x 3 on [0, 1]: t = 0, 1/3, 2/3). θ(t) does
    not depend on the activations, so one forward of a zero image suffices."""
    model(torch.zeros(1, *image_shape))
    blocks = evolving_blocks(model)
    return ({name: block.weights_at("evaluations") for name, block in blocks},
            {name: block.evaluation_times() for name, block in blocks})


def drift(thetas: list[torch.Tensor]) -> float:
    """``||θ_last - θ_first|| / ||θ_first||`` of a list of weights (the last and first time f used them)."""
    return float((thetas[-1].double() - thetas[0].double()).norm() / thetas[0].double().norm())


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: BatchLoader) -> float:
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += y.shape[0]
    return correct / total


def evolution_off(model: torch.nn.Module) -> contextlib.ExitStack:
    """A context in which every evolving block of ``model`` has its evolution switched off
    (``evolution.off()``; for the ODE kinds θ(t) = θ(t0): the static-weight network)."""
    stack = contextlib.ExitStack()
    for _, block in evolving_blocks(model):
        stack.enter_context(block.evolution.off())
    return stack


def tensorboard_history(run_dir: Path) -> dict[str, list[list[float]]]:
    """{"<block>/<weight>/<term>": [[epoch, max |coefficient|], ...],
    "<block>/<weight>/drift": [[epoch, ||θ(t_N) - θ(0)|| / ||θ(0)||], ...]} from the run's TensorBoard
    events (tags of ``anodev2.training.tb_logging``); {} when the run logged none."""
    if not any(run_dir.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    out: dict[str, list[list[float]]] = {}
    for tag in sorted(tags):
        m = re.fullmatch(r"evolution/(.+)/coef/([^/]+)/max", tag)
        if m and f"{tag[:-4]}/min" in tags:
            lows = {e.step: e.value for e in acc.Scalars(f"{tag[:-4]}/min")}
            out[f"{m.group(1)}/{m.group(2)}"] = [[e.step, max(abs(e.value), abs(lows.get(e.step, 0.0)))]
                                                 for e in acc.Scalars(tag)]
        m = re.fullmatch(r"evolution/(.+)/rel_change/t(\d+)", tag)
        if m and f"evolution/{m.group(1)}/rel_change/t{int(m.group(2)) + 1}" not in tags:  # the last t_n
            out[f"{m.group(1)}/drift"] = [[e.step, e.value] for e in acc.Scalars(tag)]
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def kernel_rows(thetas: list[torch.Tensor], max_kernels: int) -> torch.Tensor:
    """``[T*kH, K*kW]`` scalar image: row n = the first input slice of the first K kernels of θ(t_n),
    separated by NaN gaps (drawn blank)."""
    rows = []
    for th in thetas:
        k = th[:max_kernels, 0].float().cpu()  # [K, kH, kW]
        k = torch.nn.functional.pad(k, (0, 1, 0, 1), value=float("nan"))
        rows.append(torch.cat(list(k), dim=1))
    return torch.cat(rows, dim=0)


def draw(run_name: str, trained: torch.nn.Module, untrained: torch.nn.Module, traj: dict, times: dict, out: Path,
         max_kernels: int) -> list[str]:
    """Kernel pictures with colour bars and coefficient histograms; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for bname, weights in traj.items():
        for wname, thetas in weights.items():
            fig, axes = plt.subplots(1, 2, figsize=(12, 1.5 + 0.8 * len(thetas)))
            panels = ((kernel_rows(thetas, max_kernels), "θ(t) seen by f"),
                      (kernel_rows([t - thetas[0] for t in thetas], max_kernels), "θ(t) − θ(0)"))
            for ax, (img, title) in zip(axes, panels):
                s = float(img.nan_to_num(0).abs().max()) or 1.0
                im = ax.imshow(img.numpy(), cmap="RdBu_r", vmin=-s, vmax=s, interpolation="nearest")
                fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
                ax.set_title(f"{run_name} {bname}.{wname}: {title}", fontsize=9)
                ax.set_xticks([])
                h = img.shape[0] / len(thetas)
                ax.set_yticks([h * (n + 0.45) for n in range(len(thetas))], [f"t={t:.2f}" for t in times[bname]],
                              fontsize=8)
            fig.tight_layout()
            name = f"kernels_{_safe(run_name)}_{_safe(bname)}_{_safe(wname)}.png"
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            files.append(name)
    blocks = dict(evolving_blocks(trained))
    init_blocks = dict(evolving_blocks(untrained))
    for bname, block in blocks.items():
        terms = list(dict.fromkeys(k.rsplit("/", 1)[1] for k in block.evolution.coefficients()))
        fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.6), squeeze=False)
        for ax, term in zip(axes[0], terms):
            for label, b in (("init", init_blocks[bname]), ("trained", block)):
                v = torch.cat([c.flatten() for k, c in b.evolution.coefficients().items() if k.endswith("/" + term)])
                ax.hist(v.float().numpy(), bins=30, range=block.evolution.bounds().get(term), alpha=0.6, label=label)
            ax.set_title(f"{bname}: {term}", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"coefficients_{_safe(run_name)}_{_safe(bname)}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def report_run(run_dir: Path, args: argparse.Namespace) -> dict:
    trained, untrained, cfg = load_run(run_dir, args.checkpoint)
    if not evolving_blocks(trained):
        raise SystemExit(f"error: {run_dir}: no ODE block has evolving weights (variant {cfg.model.variant!r}, "
                         f"evolution {cfg.model.evolution!r}); give anodev2 runs with a non-static evolution")
    image = dataset_info(cfg.data.name).image_shape
    (traj, times), (traj0, _) = trajectories(trained, image), trajectories(untrained, image)
    rec = {"run": str(run_dir), "seed": cfg.train.seed, "checkpoint": args.checkpoint,
           "coefficients": coefficient_stats(trained), "coefficients_init": coefficient_stats(untrained),
           "drift": {f"{b}.{w}": drift(th) for b, ws in traj.items() for w, th in ws.items()},
           "drift_untrained": {f"{b}.{w}": drift(th) for b, ws in traj0.items() for w, th in ws.items()},
           "drift_time": {f"{b}.{w}": times[b][-1] for b, ws in traj.items() for w in ws}}
    rec["history"] = tensorboard_history(run_dir)
    if args.pictures:  # before the accuracy block, which zeroes the coefficients
        rec["pictures"] = draw(run_dir.name, trained, untrained, traj, times, args.out, args.max_kernels)
    if not args.no_accuracy:
        _, test = load_datasets(cfg.data.name, root=args.data_root or cfg.data.root, download=False,
                                subset_test=cfg.data.subset_test if args.subset_test is None else args.subset_test,
                                seed=cfg.train.seed)
        loader = BatchLoader(test, args.batch_size, shuffle=False, augment=False)
        rec["test_acc"] = accuracy(trained, loader)
        with evolution_off(trained):
            rec["test_acc_evolution_off"] = accuracy(trained, loader)
    return rec


def print_tables(records: list[dict]) -> None:
    print("\n| run | seed | test acc | acc, evolution off | drop |")
    print("|---|---|---|---|---|")
    for r in records:
        if "test_acc" in r:
            print(f"| {Path(r['run']).name} | {r['seed']} | {r['test_acc']:.4f} | {r['test_acc_evolution_off']:.4f} "
                  f"| {r['test_acc'] - r['test_acc_evolution_off']:+.4f} |")
    print("\n| run | weight | at t (last time f uses θ) | drift trained | drift untrained |")
    print("|---|---|---|---|---|")
    for r in records:
        for w, d in r["drift"].items():
            print(f"| {Path(r['run']).name} | {w} | {r['drift_time'][w]:.4g} | {d:.3e} | {r['drift_untrained'][w]:.3e} |")
    print("\n| run | block | term | init mean ± std | trained mean ± std | trained min .. max |")
    print("|---|---|---|---|---|---|")
    for r in records:
        for block, terms in r["coefficients"].items():
            for term, s in terms.items():
                i = r["coefficients_init"][block][term]
                print(f"| {Path(r['run']).name} | {block} | {term} | {i['mean']:.2e} ± {i['std']:.1e} "
                      f"| {s['mean']:.2e} ± {s['std']:.1e} | {s['min']:.2e} .. {s['max']:.2e} |")
    if any(r.get("history") for r in records):
        print("\n| run | weight / term | max abs coefficient (or drift) at the logged epochs |")
        print("|---|---|---|")
        for r in records:
            for key, points in r.get("history", {}).items():
                values = ", ".join(f"e{int(e)}: {v:.2e}" for e, v in points)
                print(f"| {Path(r['run']).name} | {key} | {values} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories of anodev2 train_coupled.py runs")
    p.add_argument("--out", type=Path, required=True, help="output directory (evolution_report.json, pictures)")
    p.add_argument("--pictures", action="store_true", help="also draw kernel pictures and coefficient histograms")
    p.add_argument("--max-kernels", type=int, default=16, help="kernels per picture row (default 16)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best.pt (default; last.pt where there is none) or last.pt (the end of training)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the test-set evaluations")
    p.add_argument("--data-root", help="data directory (default: the run's data.root)")
    p.add_argument("--subset-test", type=int, help="test images to use (default: the run's data.subset_test)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    args = p.parse_args(argv)
    if args.max_kernels < 1 or args.batch_size < 1:
        p.error("--max-kernels and --batch-size must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    records = [report_run(run, args) for run in args.runs]
    (args.out / "evolution_report.json").write_text(json.dumps(records, indent=1))
    print_tables(records)
    print(f"\nwrote {args.out / 'evolution_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
