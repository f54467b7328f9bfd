"""Print the parameter counts of every (name, variant): ``python -m anodev2.models [--width W]``.

Columns: weight layers (convs outside shortcuts + linear layers), ODE blocks, total
parameters, parameters of the ODE functions f, evolution coefficients p (ANODEV2 only) and
their share of the ANODE network.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from . import MODELS, VARIANTS, build, ode_blocks, param_counts
from .summary import weight_layers


def param_table(width: float = 1.0) -> list[dict]:
    """One row per (name, variant): name, variant, weight_layers, ode_blocks, total, ode_f, evolution, evolution_pct."""
    rows = []
    for name in MODELS:
        static_total = None
        for variant in VARIANTS:
            model = build(name, variant, width=width)
            counts = param_counts(model)
            if static_total is None:
                static_total = counts["total"]
            rows.append({
                "name": name,
                "variant": variant,
                "weight_layers": weight_layers(model),
                "ode_blocks": len(ode_blocks(model)),
                **counts,
                "evolution_pct": 100.0 * counts["evolution"] / static_total,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`param_table` rows."""
    lines = [
        "| model | variant | weight layers | ODE blocks | parameters | in ODE f | evolution p | p / network |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['variant']} | {r['weight_layers']} | {r['ode_blocks']} | {r['total']:,} | "
            f"{r['ode_f']:,} | {r['evolution']:,} | {r['evolution_pct']:.2f}% |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m anodev2.models", description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    args = parser.parse_args(argv)
    print(format_table(param_table(args.width)))


if __name__ == "__main__":
    main()
