"""Rebuilding a trained network from a ``train_coupled.py`` checkpoint (shared by
evolution_pictures and grad_accuracy)."""
from __future__ import annotations

from pathlib import Path

import torch

from anodev2 import models
from anodev2.training.config import config_from_dict
from anodev2.training.datasets import dataset_info
from anodev2.training.run_files import load_checkpoint


def load_model(path: Path) -> tuple[torch.nn.Module, object]:
    """(model in eval mode with the checkpoint's weights, its config) of checkpoint ``path``.

    Raises:
        SystemExit: ``path`` is missing or is not a train_coupled.py checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: checkpoint {path} does not exist (expected RUN_DIR/last.pt or best.pt)")
    ck = load_checkpoint(path)
    if "config" not in ck or "model" not in ck:
        raise SystemExit(f"error: {path} is not a train_coupled.py checkpoint (needs keys 'config' and 'model')")
    cfg = config_from_dict(ck["config"])
    facts = dataset_info(cfg.data.name)
    model = models.build(cfg.model.name, cfg.model.variant, num_classes=facts.classes,
                         in_channels=facts.channels, **cfg.model.build_options())
    model.load_state_dict(ck["model"])
    return model.eval(), cfg
