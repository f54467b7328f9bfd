"""Reading a trained run in a script: :func:`anodev2.training.runs.load_run` with its errors
turned into the scripts' one-line ``error:`` exit (shared by evolution_pictures, evolution_report,
grad_accuracy and predictions)."""
from __future__ import annotations

import os
from typing import Union

from torch import nn

from anodev2.training.config import Config, ConfigError
from anodev2.training.run_files import CheckpointError
from anodev2.training.runs import load_run


def load_run_or_exit(path: Union[str, os.PathLike], which: str = "last") -> tuple[Config, nn.Module, list[dict]]:
    """``load_run(path, which)``: (config, model in eval mode, metrics) of a run directory or
    checkpoint file.

    Raises:
        SystemExit: ``error: <reason>`` when there is no such run or checkpoint, it is not a
            train_coupled.py checkpoint, or its config does not load (exit status 1).
    """
    try:
        return load_run(path, which)
    except (CheckpointError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
