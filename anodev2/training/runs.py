"""Trained runs as library objects: the network a config describes, and a run directory read back.

The one place that rebuilds a network from a config: the trainer builds its model here, and
every experiment that reads a trained run (evolution_report, evolution_pictures,
grad_accuracy --weights, predictions; through ``experiments.trained.load_run_or_exit``, which
turns the errors below into the scripts' one-line ``error:`` exit) loads it with
:func:`load_run`::

    from anodev2.training.runs import build_model, load_run

    cfg, model, metrics = load_run("runs/aconnect")                # last.pt, model in eval mode
    cfg, model, metrics = load_run("runs/aconnect", which="best")  # best.pt
    cfg, model, metrics = load_run("runs/aconnect/best.pt")        # a checkpoint file itself

    model = build_model(cfg)   # the untrained network of cfg (initialised from the current RNG state)

Input channels and class count come from the data set's entry in
:data:`anodev2.training.datasets.DATASETS`; the ``model`` section's ``grad`` object and
``evolution`` mapping reach ``anodev2.models.build`` unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from torch import nn

from .config import Config, ConfigError, config_from_dict
from .datasets import dataset_info
from .run_files import CheckpointError, load_checkpoint

__all__ = ["build_model", "load_run", "CHECKPOINT_NAMES"]

#: ``which`` -> the checkpoint file of a run directory.
CHECKPOINT_NAMES = {"last": "last.pt", "best": "best.pt"}


def build_model(config: Config) -> nn.Module:
    """The network of ``config`` (``anodev2.models.build`` with the data set's channels and classes).

    Raises:
        ConfigError: the model section is refused by ``models.build`` (message names the option).
    """
    from .. import models
    facts = dataset_info(config.data.name)
    m = config.model
    try:
        return models.build(m.name, m.variant, num_classes=facts.classes, in_channels=facts.channels,
                            **m.build_options())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model section rejected by anodev2.models.build: {e}") from None


def _checkpoint_path(path: Path, which: str) -> Path:
    if which not in CHECKPOINT_NAMES:
        raise ValueError(f"which={which!r} is not allowed; allowed: {' | '.join(CHECKPOINT_NAMES)}")
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist; allowed: a run directory written by train_coupled.py "
                              f"(holding {' / '.join(CHECKPOINT_NAMES.values())}) or one of those files")
    file = path / CHECKPOINT_NAMES[which]
    if not file.is_file():
        present = [n for n in CHECKPOINT_NAMES.values() if (path / n).is_file()]
        raise CheckpointError(f"{path} has no {file.name} (which={which!r}); "
                              f"{'it holds ' + ', '.join(present) if present else 'is it a train_coupled.py run directory?'}")
    return file


def load_run(path: Union[str, os.PathLike], which: str = "last") -> tuple[Config, nn.Module, list[dict]]:
    """Read a trained run: ``(config, model, metrics)``.

    Args:
        path: a run directory of ``train_coupled.py``, or one of its checkpoint files.
        which: with a directory, "last" (last.pt, the end of training so far) or "best" (best.pt,
            best test accuracy).
    Returns:
        the run's validated :class:`Config` (its ``out_dir`` as stored), the network with the
        checkpoint's weights in eval mode, on the CPU, and the per-epoch metrics records up to the
        checkpoint's epoch (the ``metrics.jsonl`` records of those epochs).
    Raises:
        CheckpointError: no such run or checkpoint, a checksum mismatch, or a file that is not a
            ``train_coupled.py`` checkpoint.
        ConfigError: the stored config is not valid for this version of the code.
    """
    file = _checkpoint_path(Path(path), which)
    ck = load_checkpoint(file)
    missing = [k for k in ("config", "model") if k not in ck]
    if missing:
        raise CheckpointError(f"{file} is not a train_coupled.py checkpoint (no {' / '.join(missing)} entry)")
    config = config_from_dict(ck["config"], name=file.parent.name)
    model = build_model(config)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{file}: the stored weights do not fit the network its config describes "
                              f"({' '.join(str(e).split())[:200]})") from None
    return config, model.eval(), list(ck.get("history", []))
