"""Shared test problems and helpers, imported by every test folder (``from helpers import rel_err``)."""
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / max(||b||, tiny)."""
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
