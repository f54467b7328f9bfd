"""Networks a run cannot have: one whose parameters alone do not fit in the device's memory
(:func:`check_model_memory`), an ANODEV2 network that evolves no weight (:func:`check_evolution_targets`).

``model.width=100000`` asks for a ResNet-10 of about 2.7e15 parameters; building it fails deep inside
torch's allocator (or, with memory overcommit, much later). :func:`check_model_memory` estimates the
parameter count before anything is allocated (the network built at width 1 on the ``meta`` device,
scaled by width², an upper bound for width >= 1: convolutions grow with width², norms and the
classifier with width) and refuses a network whose float32 weights, gradients, optimiser state and
checkpoint copy (4 copies) exceed the device's memory, naming the largest width that fits.
"""
from __future__ import annotations

import dataclasses
import math
import os

import torch

from .config import Config, ConfigError, yaml_text

__all__ = ["check_model_memory", "check_evolution_targets", "device_memory_bytes", "COPIES"]

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
    from .runs import build_model
    try:
        with torch.device("meta"):
            unit = build_model(dataclasses.replace(cfg, model=dataclasses.replace(m, width=1.0)))
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


def check_evolution_targets(cfg: Config, model: torch.nn.Module) -> None:
    """ConfigError when an ANODEV2 network (or one with an evolution set) evolves no weight at all: an empty or
    non-matching target list would silently train a plain ANODE network under the anodev2 name."""
    from anodev2 import ODEBlock
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    evolving = [t for b in blocks if b.evolution is not None and not getattr(b.evolution, "is_static", False)
                for t in b.evolution.targets]
    ev = cfg.model.evolution  # None (the variant's default) or the resolved mapping {"kind": ..., ...}
    kind = None if ev is None else ev["kind"]
    wants = kind not in (None, "static") or (kind is None and cfg.model.variant == "anodev2")
    if blocks and wants and not evolving:
        targets = None if ev is None else ev.get("targets")
        shown = yaml_text(list(targets) if isinstance(targets, (list, tuple)) else targets)
        raise ConfigError(f"model.evolution.targets={shown} selects no weight of any ODE block: this {cfg.model.variant} network would "
                          f"evolve nothing; allowed: null (the variant's default targets) or names/patterns of "
                          f"parameters of f, or model.variant=anode for static weights")
