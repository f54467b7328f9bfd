"""Sizes a run cannot have: a network whose parameters alone do not fit in the device's memory.

``model.width=100000`` asks for a ResNet-10 of about 2.7e15 parameters; building it fails deep inside
torch's allocator (or, with memory overcommit, much later). :func:`check_model_memory` estimates the
parameter count before anything is allocated (the network built at width 1 on the ``meta`` device,
scaled by width², an upper bound for width >= 1: convolutions grow with width², norms and the
classifier with width) and refuses a network whose float32 weights, gradients, optimiser state and
checkpoint copy (4 copies) exceed the device's memory, naming the largest width that fits.
"""
from __future__ import annotations

import math
import os

import torch

from .config import Config, ConfigError
from .datasets import dataset_info

__all__ = ["check_model_memory", "device_memory_bytes", "COPIES"]

#: float32 copies of the parameters a training run holds: weights, gradients, optimiser state, checkpoint.
COPIES = 4


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device``: the GPU's for CUDA, else physical RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_model_memory(cfg: Config, device: torch.device, memory: int | None = None) -> None:
    """ConfigError when ``cfg``'s network cannot fit in ``memory`` bytes (default: the device's); see the module."""
    m = cfg.model
    if m.width <= 1:
        return
    from .. import models
    facts = dataset_info(cfg.data.name)
    try:
        opts = {**m.build_options(), "width": 1.0}
        with torch.device("meta"):
            unit = models.build(m.name, m.variant, num_classes=facts.classes, in_channels=facts.channels, **opts)
    except Exception:  # noqa: BLE001 - the real build reports what is wrong with the options
        return
    params = sum(p.numel() for p in unit.parameters()) * m.width ** 2
    need = params * 4 * COPIES
    memory = device_memory_bytes(device) if memory is None else memory
    if need > memory:
        fits = math.sqrt(memory / (sum(p.numel() for p in unit.parameters()) * 4 * COPIES))
        raise ConfigError(f"model.width={m.width:g} gives a {m.name} of about {params:.2g} parameters, "
                          f"{need / 2**30:.3g} GiB for weights, gradients, optimiser state and a checkpoint "
                          f"(float32), more than the {device.type} memory ({memory / 2**30:.3g} GiB); "
                          f"allowed: a network that fits, here model.width <= {max(1.0, math.floor(fits)):g}")
