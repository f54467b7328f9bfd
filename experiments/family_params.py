"""Parameters each time-varying-weight family adds to every network (docs/MODELS.md's family table).

For every network of ``anodev2.models`` and every kind of the evolution registry, the network is
built as ``models.build(name, "anodev2", evolution=kind)`` (the family's default options and
default targets, the variant's solver: euler x 3, so ``untied`` has 3 pieces) and
``models.param_counts`` gives its ``evolution`` parameters; the table shows them and their share of
the ANODE network (``models.build(name, "anode")``, the same network with static weights).

    python experiments/family_params.py                 # width 1, every network (about a minute on one CPU)
    python experiments/family_params.py --width 0.25 --models resnet4
"""
from __future__ import annotations

import argparse
import sys

import torch

from anodev2 import models
from anodev2.evolution import EVOLUTION_KINDS

#: the kinds shown (static adds nothing)
KINDS: tuple[str, ...] = tuple(k for k in EVOLUTION_KINDS if k != "static")


def family_table(names, width: float = 1.0) -> list[dict]:
    """One row per network: ``{"name", "anode": total, kind: evolution parameters, ...}``."""
    rows = []
    for name in names:
        row = {"name": name, "anode": models.param_counts(models.build(name, "anode", width=width))["total"]}
        for kind in KINDS:
            row[kind] = models.param_counts(models.build(name, "anodev2", width=width, evolution=kind))["evolution"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| network | ANODE parameters | " + " | ".join(KINDS) + " |",
             "|---|---:|" + "---:|" * len(KINDS)]
    for r in rows:
        cells = [f"{r[k]:,} ({100 * r[k] / r['anode']:.2f} %)" for k in KINDS]
        lines.append(f"| {r['name']} | {r['anode']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(models.MODELS), help="comma-separated networks (default: all)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    bad = [n for n in names if n not in models.MODELS]
    if bad or not names:
        p.error(f"--models: unknown {bad}; allowed: {','.join(models.MODELS)}")
    if args.width <= 0:
        p.error(f"--width must be > 0, got {args.width}")
    torch.set_num_threads(1)
    print(f"Parameters added by each family (width {args.width:g}; share of the ANODE network):\n")
    print(format_table(family_table(names, args.width)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
