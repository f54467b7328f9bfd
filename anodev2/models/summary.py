"""Inspection helpers: which blocks are ODE blocks, how they are set up, parameter counts."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..block import ODEBlock

__all__ = ["ode_blocks", "describe", "format_description", "param_counts", "weight_layers"]


def _check_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def ode_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(module path, ODEBlock)]`` in registration order (outermost blocks; none nested)."""
    _check_module(model)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ODEBlock)]


def describe(model: nn.Module) -> list[dict[str, Any]]:
    """One dict per ODE block: ``{"name", "steps", "method", "grad" (the mode's name),
    "grad_options" (its options), "evolution" (kind or None), "evolving" ({param name relative
    to f: shape tuple}), "evolution_params" (the family's own parameter count)}``.

    ``evolving`` lists the weights that actually change in time (empty for "static")."""
    out = []
    for name, block in ode_blocks(model):
        params = dict(block.f.named_parameters())
        out.append({
            "name": name,
            "steps": block.steps,
            "method": block.method,
            "grad": block.grad_mode.name,
            "grad_options": block.grad_mode.options(),
            "evolution": block.evolution_kind,
            "evolving": {n: tuple(params[n].shape) for n in block.evolving_names},
            "evolution_params": 0 if block.evolution is None else block.evolution.parameter_count(),
        })
    return out


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total`` (all), ``evolution`` (coefficients ``p`` of the weight
    evolutions q), ``ode_f`` (parameters of the ODE blocks' functions f)."""
    _check_module(model)
    total = sum(p.numel() for p in model.parameters())
    evolution = ode_f = 0
    for _, block in ode_blocks(model):
        ode_f += sum(p.numel() for p in block.f.parameters())
        if block.evolution is not None:
            evolution += sum(p.numel() for p in block.evolution.parameters())
    return {"total": total, "evolution": evolution, "ode_f": ode_f}


def weight_layers(model: nn.Module) -> int:
    """Depth as He et al. count it: convolutions and linear layers, projection shortcuts
    (modules under a ``shortcut``) left out. resnet4 8, resnet10 20, resnet18 18, alexnet 8."""
    _check_module(model)
    return sum(
        1 for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in name.split(".")
    )


def _grad(name: str, options: dict) -> str:
    """``checkpoint(checkpoints=all, keep_forward=False, ...)``; ``backprop`` for a mode without options."""
    shown = {k: ("all" if k == "checkpoints" and v is None else v) for k, v in options.items()}
    return name + (f"({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")


def _count(row: dict) -> str:
    """`` (N params)`` of a block's evolution, empty without one."""
    return "" if row["evolution"] is None else f" ({row['evolution_params']:,} params)"


def format_description(model: nn.Module) -> str:
    """Human-readable table of the ODE blocks and the parameter counts of ``model``."""
    rows = describe(model)
    counts = param_counts(model)
    lines = [
        f"{type(model).__name__}: {weight_layers(model)} weight layers, {len(rows)} ODE block(s); parameters total={counts['total']:,} "
        f"ode_f={counts['ode_f']:,} evolution={counts['evolution']:,}"
    ]
    if rows:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            evolving = ", ".join(f"{n}{list(s)}" for n, s in r["evolving"].items()) or "-"
            lines.append(
                f"  {r['name']:<{width}}  steps={r['steps']} method={r['method']} "
                f"grad={_grad(r['grad'], r['grad_options'])} evolution={r['evolution']}{_count(r)} "
                f"evolving: {evolving}"
            )
    return "\n".join(lines)
