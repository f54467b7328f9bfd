"""Per-example test predictions of a finished run, with the weight evolution on and off.

    python -m experiments.predictions RUN_DIR      # writes RUN_DIR/predictions.npz

Reads ``RUN_DIR/last.pt`` (the model after the final epoch), rebuilds the run's test set and
test loader exactly as the trainer does (same data set, subset, seed, batch size, order; eval
mode), and stores for every test example its label and the predicted class (``pred``) and,
for a network whose ODE blocks have an evolution-off switch, the predicted class with every
evolution switched off (``pred_off``; what "off" means is the family's ``off_meaning``, e.g.
θ(t) = θ0, or t frozen at t0). Also stored: the accuracy the trainer logged for the final epoch
(``trainer_test_acc``) so the two can be checked to agree, the number of parameters, and the
off meanings. For a network with BatchNorm, ``pred_batch_stats`` are the predictions with every
BatchNorm normalising by the test batch's own statistics instead of its running averages: a
diagnostic of the running statistics, which an ODE block shares across every time t although
time-varying weights change the activations' statistics with t (a large gap between ``pred`` and
``pred_batch_stats`` accuracy means the running averages do not fit any single t; the batch
statistics depend on the batch composition, so this is a diagnostic, not a result).
``families.py`` runs this after every training run of its grid (McNemar's test and the
evolution-off accuracy come from these files).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

FILE = "predictions.npz"


@contextlib.contextmanager
def evolution_off(model: torch.nn.Module) -> Iterator[list[str]]:
    """Within the context every weight evolution of ``model`` that has an off switch is off;
    yields their distinct ``off_meaning`` sentences (empty: nothing to switch off)."""
    from anodev2.evolution import WeightEvolution

    evos = [m for m in model.modules() if isinstance(m, WeightEvolution) and getattr(m, "off_meaning", None)]
    with contextlib.ExitStack() as stack:
        for evo in evos:
            stack.enter_context(evo.off())
        yield sorted({evo.off_meaning for evo in evos})


@contextlib.contextmanager
def batch_statistics(model: torch.nn.Module) -> Iterator[int]:
    """Within the context every BatchNorm of ``model`` (in eval mode) normalises by the batch's
    own statistics and leaves its running averages untouched; yields how many there are."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.running_mean, m.running_var) for m in norms]
    for m in norms:
        m.train()
        m.running_mean = m.running_var = None  # F.batch_norm then uses (and updates) nothing else
    try:
        yield len(norms)
    finally:
        for m, (training, mean, var) in zip(norms, saved):
            m.running_mean, m.running_var = mean, var
            m.train(training)


@torch.no_grad()
def _predict(model: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    labels, preds = [], []
    for x, y in loader:
        preds.append(model(x).argmax(1))
        labels.append(y)
    return torch.cat(labels).numpy(), torch.cat(preds).numpy()


def predict(run_dir: Path) -> dict:
    """The arrays and facts stored in ``predictions.npz`` (module docstring) of ``run_dir``."""
    from anodev2.training.data import BatchLoader, load_datasets
    from experiments.grid import read_metrics
    from experiments.trained import load_run_or_exit

    cfg, model, _ = load_run_or_exit(run_dir)  # last.pt: the model after the final epoch
    _, test_set = load_datasets(cfg.data.name, cfg.data.root, download=False, subset_train=cfg.data.subset_train,
                                subset_test=cfg.data.subset_test, seed=cfg.train.seed)
    loader = BatchLoader(test_set, 2 * cfg.train.batch_size, shuffle=False, augment=False, workers=0, pad=False,
                         seed=cfg.train.seed, rank=0, world_size=1)  # the trainer's test loader
    model.eval()
    labels, pred = _predict(model, loader)
    out = {"labels": labels, "pred": pred, "params": sum(p.numel() for p in model.parameters())}
    with evolution_off(model) as meanings:
        if meanings:
            _, out["pred_off"] = _predict(model, loader)
            out["off_meaning"] = " / ".join(meanings)
    with batch_statistics(model) as n_norms:
        if n_norms:
            _, out["pred_batch_stats"] = _predict(model, loader)
    hist = read_metrics(run_dir)
    last = hist[-1] if hist else {}
    out["trainer_test_acc"] = last.get("test_acc") if last.get("test_acc") is not None else float("nan")
    out["epoch"] = last.get("epoch", -1)
    return out


def load(run_dir: Path) -> Optional[dict]:
    """``predictions.npz`` of ``run_dir`` as a dict (None when absent)."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished train_coupled.py run directory (with last.pt)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rec = predict(args.run_dir)
    tmp = args.run_dir / (FILE + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in rec.items()})
    os.replace(tmp, args.run_dir / FILE)
    acc = float((rec["pred"] == rec["labels"]).mean())
    off = "" if "pred_off" not in rec else f", evolution off {float((rec['pred_off'] == rec['labels']).mean()):.4f}"
    if "pred_batch_stats" in rec:
        off += f", BatchNorm with batch statistics {float((rec['pred_batch_stats'] == rec['labels']).mean()):.4f}"
    print(json.dumps({"run": str(args.run_dir), "test_acc": acc, "trainer_test_acc": rec["trainer_test_acc"]})
          + f"  # test acc {acc:.4f}{off}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
