"""Finite-difference operators on conv-kernel grids (pure functions).

A weight ``W`` of shape ``[..., H, W]`` (normally ``[O, I, k, k]``) is read as a
batch of fields on an ``H x W`` grid with unit spacing. Orientation:

* **x is the last dimension** (column index ``j``, increasing to the right),
* **y is the second-to-last dimension** (row index ``i``, increasing downwards).

Boundaries are zero-flux (homogeneous Neumann): the ghost cell outside the grid
equals the adjacent edge value. In finite-volume form the Laplacian is the
difference of face fluxes with the two boundary fluxes set to zero, so the sum
of every slice is conserved exactly (the sum telescopes).

Gradients use central differences ``(w[j+1] - w[j-1]) / 2`` in the interior and
one-sided differences at the edges (``w[1] - w[0]`` and ``w[-1] - w[-2]``).
Choice: with the Neumann ghost cells a central difference at an edge would give
half the slope; the one-sided form is instead exact for linear ramps, so a ramp
has its constant slope at *every* point, edges included. Along a dimension of
size 1 (e.g. 1x1 convs) all differences are 0.

Every function is differentiable, loop-free, dtype/device agnostic and returns a
tensor of the input's shape. ANODEV2: Zhang et al. 2019, arXiv 1906.04596, Sec. 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "forward_differences",
    "laplacian",
    "grad_x",
    "grad_y",
    "laplacian_and_gradients",
]


def _check(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() < 2:
        raise ValueError(f"w must have at least 2 dims [..., H, W], got shape {tuple(w.shape)}")


def forward_differences(w: torch.Tensor, dim: int) -> torch.Tensor:
    """``w[i+1] - w[i]`` along ``dim``: shape of ``w`` with ``dim`` shortened by 1."""
    n = w.shape[dim]
    return w.narrow(dim, 1, n - 1) - w.narrow(dim, 0, n - 1)


def _laplacian_1d(w: torch.Tensor, d: torch.Tensor, dim: int) -> torch.Tensor:
    """Second difference along ``dim`` from forward differences ``d`` (zero-flux ends)."""
    if w.shape[dim] == 1:
        return torch.zeros_like(w)
    # Face fluxes with zero flux through both boundaries: [0, d_0, ..., d_{n-2}, 0].
    pad = [0, 0] * (w.dim() - 1 - (dim % w.dim())) + [1, 1]
    flux = F.pad(d, pad)
    n = w.shape[dim]
    return flux.narrow(dim, 1, n) - flux.narrow(dim, 0, n)


def _gradient_1d(w: torch.Tensor, d: torch.Tensor, dim: int) -> torch.Tensor:
    """First derivative along ``dim``: central inside, one-sided at the two edges."""
    if w.shape[dim] == 1:
        return torch.zeros_like(w)
    n = w.shape[dim]
    # Repeat the edge differences: [d_0, d_0, ..., d_{n-2}, d_{n-2}], then average neighbours.
    ext = torch.cat([d.narrow(dim, 0, 1), d, d.narrow(dim, n - 2, 1)], dim=dim)
    return 0.5 * (ext.narrow(dim, 0, n) + ext.narrow(dim, 1, n))


def laplacian(w: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian over the last two dims with zero-flux boundaries.

    ``w``: ``[..., H, W]``. Returns ``[..., H, W]``; each slice sums to 0.
    """
    _check(w)
    dy, dx = forward_differences(w, -2), forward_differences(w, -1)
    return _laplacian_1d(w, dy, -2) + _laplacian_1d(w, dx, -1)


def grad_x(w: torch.Tensor) -> torch.Tensor:
    """``dW/dx`` along the last dim (columns). ``w``: ``[..., H, W]`` -> same shape."""
    _check(w)
    return _gradient_1d(w, forward_differences(w, -1), -1)


def grad_y(w: torch.Tensor) -> torch.Tensor:
    """``dW/dy`` along the second-to-last dim (rows). ``w``: ``[..., H, W]`` -> same shape."""
    _check(w)
    return _gradient_1d(w, forward_differences(w, -2), -2)


def laplacian_and_gradients(
    w: torch.Tensor, need_laplacian: bool = True, need_gradients: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(laplacian(w), grad_x(w), grad_y(w))`` sharing one set of differences.

    Entries not requested are ``None``. Used by the RDA operator at every RK stage.
    """
    _check(w)
    dy, dx = forward_differences(w, -2), forward_differences(w, -1)
    lap = _laplacian_1d(w, dy, -2) + _laplacian_1d(w, dx, -1) if need_laplacian else None
    gx = _gradient_1d(w, dx, -1) if need_gradients else None
    gy = _gradient_1d(w, dy, -2) if need_gradients else None
    return lap, gx, gy
