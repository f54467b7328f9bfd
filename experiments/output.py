"""Writing results: CSV files, small PNG figures, ratio formatting (shared by every script)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Optional


def write_csv(path: Path, rows: list[dict], fieldnames: Optional[Iterable[str]] = None) -> None:
    """Write ``rows`` (flat dicts) as CSV with a header, creating the parent directory.

    The columns are ``fieldnames`` if given, else the keys of the first row followed by any key
    that only later rows have (so rows need not share their keys; missing cells are empty).

    Raises:
        ValueError: ``rows`` is empty and no ``fieldnames`` are given (no header to write).
    """
    if fieldnames is None:
        if not rows:
            raise ValueError(f"write_csv({path}): no rows and no fieldnames")
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fieldnames))
        w.writeheader()
        w.writerows(rows)


def save_png(fig, path: Path, dpi: int = 80) -> None:
    """Save a matplotlib figure as a small PNG (256-colour palette when Pillow is available)."""
    fig.savefig(path, dpi=dpi)
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)


def fmt_ratio(x: Optional[float]) -> str:
    """``x`` with three decimals, ``-`` for None."""
    return "-" if x is None else f"{x:.3f}"
