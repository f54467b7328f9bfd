"""Optimiser, parameter groups and learning-rate schedule of a training run.

Two parameter groups (ANODEV2, Zhang et al. 2019, arXiv 1906.04596, §3: the evolution
coefficients of q(θ, p) are parameters of a different kind than the network weights):

    "network":   every parameter that is not an evolution coefficient; lr = schedule,
                 weight decay = ``optim.weight_decay``;
    "evolution": the parameters of every :class:`anodev2.evolution.WeightEvolution` module;
                 lr = schedule * ``optim.evolution_lr_mult``, weight decay =
                 ``optim.evolution_weight_decay`` (0 by default: decaying the coefficients pulls
                 q towards 0, i.e. towards ANODE's static weights).

A group is omitted when it would be empty (e.g. the evolution group of an ANODE network).
Each group carries its ``name`` and ``lr_mult``; :func:`set_lr` is the one place that turns the
scheduled rate into per-group rates, so every schedule scales both groups alike.

Optimisers and schedules are registries (:data:`OPTIMIZERS`, :data:`SCHEDULES`): adding one is
one entry here; the config reads their names from these tables (``optim.name`` /
``optim.schedule`` choices). This module does not import the config module (the config imports
it, lazily, for those names): ``OptimConfig`` is only a type annotation here.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..evolution import WeightEvolution

if TYPE_CHECKING:  # annotation only: config -> optim is the one direction of import
    from .config import OptimConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "GROUP_NAMES", "evolution_parameters", "param_groups", "build_optimizer", "apply_group_settings",
           "set_lr", "lr_at"]

#: parameter-group names, in the order the optimiser holds them
GROUP_NAMES = ("network", "evolution")


def _sgd(groups: list[dict], c: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)


def _adam(groups: list[dict], c: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=c.lr)


def _multistep(c: OptimConfig, epoch: int, epochs: int) -> float:
    return c.lr * c.gamma ** sum(epoch >= m for m in c.milestones)


def _cosine(c: OptimConfig, epoch: int, epochs: int) -> float:
    w = c.warmup_epochs
    return c.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / max(1, epochs - w)))


#: optim.name -> factory(param groups, optim config) -> optimiser
OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {"sgd": _sgd, "adam": _adam}
#: optim.schedule -> base lr of 0-based epoch after the warm-up: fn(optim config, epoch, epochs)
SCHEDULES: dict[str, Callable[[OptimConfig, int, int], float]] = {"multistep": _multistep, "cosine": _cosine}


def evolution_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every WeightEvolution module in ``model`` (each once, registration order)."""
    seen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, WeightEvolution):
            for p in m.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


def _group_settings(optim_cfg: OptimConfig, name: str) -> dict:
    """lr multiplier and weight decay of group ``name`` from the config."""
    if name == "evolution":
        return {"lr_mult": optim_cfg.evolution_lr_mult, "weight_decay": optim_cfg.evolution_weight_decay}
    return {"lr_mult": 1.0, "weight_decay": optim_cfg.weight_decay}


def param_groups(model: nn.Module, optim_cfg: OptimConfig) -> list[dict]:
    """Disjoint groups covering every trainable parameter of ``model`` once (see module docstring)."""
    evo = [p for p in evolution_parameters(model) if p.requires_grad]
    evo_ids = {id(p) for p in evo}
    seen: set[int] = set()
    net = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in evo_ids and id(p) not in seen:
            seen.add(id(p))
            net.append(p)
    groups = []
    for name, params in zip(GROUP_NAMES, (net, evo)):
        if params:
            groups.append({"name": name, "params": params, "lr": optim_cfg.lr,
                           **_group_settings(optim_cfg, name)})
    return groups


def build_optimizer(optim_cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam over :func:`param_groups`; lr is set per epoch by :func:`set_lr`."""
    if optim_cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={optim_cfg.name!r} is not allowed; allowed: {' | '.join(OPTIMIZERS)}")
    return OPTIMIZERS[optim_cfg.name](param_groups(model, optim_cfg), optim_cfg)


def apply_group_settings(opt: torch.optim.Optimizer, optim_cfg: OptimConfig) -> None:
    """Re-apply the config's hyperparameters to every group (after loading a checkpoint's optimiser state,
    the config wins over the stored momentum, weight decay and multipliers)."""
    for g in opt.param_groups:
        if g.get("name") not in GROUP_NAMES:
            raise ValueError(f"optimiser group named {g.get('name')!r}; allowed: {' | '.join(GROUP_NAMES)}")
        g.update(_group_settings(optim_cfg, g["name"]))
        g.update({k: v for k, v in opt.defaults.items() if k not in ("lr", "weight_decay")})


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group['lr_mult']``."""
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]


def lr_at(optim_cfg: OptimConfig, epoch: int, epochs: int) -> float:
    """Scheduled base learning rate of 0-based ``epoch``: linear warm-up, then multistep or cosine.

    multistep: lr * gamma ** #(milestones <= epoch)  (as torch MultiStepLR);
    cosine: lr * (1 + cos(pi * (epoch - warmup) / (epochs - warmup))) / 2;
    warm-up: lr * (epoch + 1) / (warmup_epochs + 1) for epoch < warmup_epochs.
    """
    w = optim_cfg.warmup_epochs
    if epoch < w:
        return optim_cfg.lr * (epoch + 1) / (w + 1)
    if optim_cfg.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={optim_cfg.schedule!r} is not allowed; allowed: {' | '.join(SCHEDULES)}")
    return SCHEDULES[optim_cfg.schedule](optim_cfg, epoch, epochs)
