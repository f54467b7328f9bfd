"""Conservative finite-volume operators on conv-kernel grids.

A weight ``W`` of shape ``[..., H, W]`` (normally ``[O, I, kH, kW]``) is read as a batch of
fields on an ``H x W`` grid of unit cells. Orientation: **x is the last dimension** (column
index ``j``), **y the second-to-last** (row index ``i``). All operators are in flux form,
``dw_c/dt = -(sum of fluxes out of cell c)``, so the sum of every slice is conserved exactly:

* **Diffusion** ``L``: 5-point Laplacian with zero-flux (Neumann) walls, face flux
  ``w_c - w_nb``. Symmetric, rows and columns sum to 0.
* **Advection** with velocity ``a`` along x (resp. y): first-order upwind flux
  ``F_{j+1/2} = a (w_j + w_{j+1})/2 - |a| (w_{j+1} - w_j)/2`` (= ``a w_upwind``) on a *periodic*
  line, i.e. the flux leaving one edge of the slice enters the opposite edge; a positive ``a``
  moves the pattern towards larger index. Written as ``-a C + |a| L_1/2`` with ``C`` the
  central difference and ``L_1`` the 1-D second difference, both periodic.

Why periodic advection: an operator ``A`` whose Euler step ``I + hA`` is a convex combination
(rows sum to 1, entries >= 0) *and* conserves the sum (columns sum to 1) has ``A 1 = 0`` and
``1^T A = 0`` with non-negative off-diagonal entries; on a line with walls and nearest-neighbour
coupling (a path graph) that forces ``A`` symmetric, i.e. pure diffusion. Wrapping the line
is the only nearest-neighbour way to transport a kernel pattern that keeps both properties.

Every linear operator here is returned as a dense matrix over the ``H*W`` cells
(:func:`stencil_matrices`), so that all slices of every kernel of one shape are evolved by
a single matmul (cheap in kernel launches on every device). The pad-based functions
:func:`neumann_laplacian` and :func:`upwind_advection` are independent reference
implementations (used by the tests). ANODEV2: Zhang et al. 2019, arXiv 1906.04596, Sec. 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["STENCILS", "stencil_matrices", "neumann_laplacian", "upwind_advection"]

#: order of the stencil matrices returned by :func:`stencil_matrices`; the coefficient each one
#: is multiplied by is ``D, a_x, |a_x|, a_y, |a_y|``.
STENCILS: tuple[str, ...] = ("laplacian", "advect_x", "upwind_x", "advect_y", "upwind_y")


def _check(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() < 2:
        raise ValueError(f"w must have at least 2 dims [..., H, W], got shape {tuple(w.shape)}")


def _line_operators(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Neumann second difference, periodic central difference, periodic second difference)``
    on a line of ``n`` cells, each ``[n, n]`` (all zero for ``n == 1``)."""
    eye = torch.eye(n, dtype=dtype)
    if n == 1:
        zero = torch.zeros(1, 1, dtype=dtype)
        return zero, zero, zero
    up, down = torch.roll(eye, 1, dims=1), torch.roll(eye, -1, dims=1)  # (up w)_j = w_{j+1}
    neumann = torch.diag(torch.ones(n - 1, dtype=dtype), 1) + torch.diag(torch.ones(n - 1, dtype=dtype), -1)
    neumann = neumann - torch.diag(neumann.sum(dim=1))
    return neumann, 0.5 * (up - down), up + down - 2 * eye


def stencil_matrices(height: int, width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The linear operators of ``STENCILS`` as matrices over a row-major ``height x width`` grid.

    Returns ``[5, H*W, H*W]``: ``S[k] @ w.flatten()`` is stencil ``k`` applied to one slice.
    ``q = D S[0] + a_x S[1] + |a_x| S[2] + a_y S[3] + |a_y| S[4]`` is diffusion plus upwind
    advection; every ``S[k]`` has zero column sums (conservation) and zero row sums.
    """
    if min(height, width) < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    ly, cy, py = _line_operators(height, dtype)
    lx, cx, px = _line_operators(width, dtype)
    iy, ix = torch.eye(height, dtype=dtype), torch.eye(width, dtype=dtype)
    return torch.stack([
        torch.kron(ly, ix) + torch.kron(iy, lx),
        -torch.kron(iy, cx), 0.5 * torch.kron(iy, px),
        -torch.kron(cy, ix), 0.5 * torch.kron(py, ix),
    ])


def neumann_laplacian(w: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian over the last two dims with zero-flux walls (ghost = edge value).

    ``w``: ``[..., H, W]`` -> same shape; every slice sums to 0.
    """
    _check(w)
    lead, (h, wd) = w.shape[:-2], w.shape[-2:]
    flat = w.reshape(-1, 1, h, wd)
    g = F.pad(flat, (1, 1, 1, 1), mode="replicate")
    out = g[..., :-2, 1:-1] + g[..., 2:, 1:-1] + g[..., 1:-1, :-2] + g[..., 1:-1, 2:] - 4 * flat
    return out.reshape(*lead, h, wd)


def upwind_advection(w: torch.Tensor, a_x: torch.Tensor, a_y: torch.Tensor) -> torch.Tensor:
    """First-order upwind, periodic, flux-form advection ``-∂x(a_x w) - ∂y(a_y w)``.

    ``w``: ``[O, ..., H, W]``; ``a_x``, ``a_y``: ``[O]`` velocities (positive = towards larger
    index). Returns ``[O, ..., H, W]``.
    """
    _check(w)
    shape = (-1,) + (1,) * (w.dim() - 1)
    out = torch.zeros_like(w)
    for a, dim in ((a_x.reshape(shape), -1), (a_y.reshape(shape), -2)):
        if w.shape[dim] == 1:
            continue
        nxt = torch.roll(w, -1, dims=dim)  # w_{j+1}
        flux = torch.clamp(a, min=0) * w + torch.clamp(a, max=0) * nxt  # F_{j+1/2} = a w_upwind
        out = out - (flux - torch.roll(flux, 1, dims=dim))
    return out
