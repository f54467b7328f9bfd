"""Finite-volume operators on conv-kernel grids (diffusion, one-sided upwind advection).

A weight ``W`` of shape ``[..., H, W]`` (normally ``[O, I, kH, kW]``) is read as a batch of
fields on an ``H x W`` grid of unit cells. Orientation: **x is the last dimension** (column
index ``j``, "right" = larger ``j``), **y the second-to-last** (row index ``i``, "down" = larger
``i``). All operators are in flux form, ``dw_c/dt = -(sum of fluxes out of cell c)``:

* **Diffusion** ``L``: 5-point Laplacian with zero-flux (Neumann) walls, face flux
  ``w_c - w_nb``. Symmetric, rows and columns sum to 0 (the slice's sum is conserved).
* **Advection**, one operator per direction (right, left, down, up), each scaled by its own
  non-negative speed: first-order upwind transport with **outflow walls** -- for "right",
  ``dw_j/dt = w_{j-1} - w_j`` with ``w_{-1} = 0``: nothing enters at the upwind wall and what
  reaches the downwind wall leaves the kernel (no wrap-around: opposite edges of a filter are
  never mixed). Every row sums to 0 except the upwind wall's, which sums to -1, and all
  off-diagonal entries are >= 0, so an Euler step ``I + hA`` with ``h·speed <= 1`` is
  entrywise non-negative with row sums <= 1: max-norm non-increasing (the sum is *not*
  conserved: mass leaves through the outflow wall). A velocity ``a`` of either sign is the
  pair (right, left) = (a⁺, a⁻); both non-zero add 1-D diffusion ``min(right, left)`` along x.

Why one-sided speeds rather than a signed velocity with ``|a|``: the upwind scheme written with
a signed ``a`` is ``-a C + |a| L_1/2``, which has a kink at ``a = 0`` (the initial value), where
plain gradient descent can settle on the wrong sign. With the speeds as separate
non-negative coefficients, ``q`` is *linear* in every coefficient (the loss is smooth in each),
the feasible set is a box, and the sign of the net transport is chosen by which of the two
speeds the gradient increases -- no kink, no wrong-sign local minimum of the operator itself.

Every linear operator here is returned as a dense matrix over the ``H*W`` cells
(:func:`stencil_matrices`), so that all slices of every kernel of one shape are evolved by a
single matmul. The pad-based functions :func:`neumann_laplacian` and :func:`upwind_advection`
are independent reference implementations (used by the tests). ANODEV2: Zhang et al. 2019,
arXiv 1906.04596, Sec. 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["STENCILS", "stencil_matrices", "neumann_laplacian", "upwind_advection"]

#: order of the stencil matrices returned by :func:`stencil_matrices`.
STENCILS: tuple[str, ...] = ("laplacian", "right", "left", "down", "up")


def _check(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() < 2:
        raise ValueError(f"w must have at least 2 dims [..., H, W], got shape {tuple(w.shape)}")


def _line_operators(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Neumann second difference, outflow upwind towards larger index, towards smaller index)``
    on a line of ``n`` cells, each ``[n, n]`` (all zero for ``n == 1``: nothing can move)."""
    if n == 1:
        zero = torch.zeros(1, 1, dtype=dtype)
        return zero, zero, zero
    eye = torch.eye(n, dtype=dtype)
    below = torch.diag(torch.ones(n - 1, dtype=dtype), -1)  # (below w)_j = w_{j-1}
    above = torch.diag(torch.ones(n - 1, dtype=dtype), 1)  # (above w)_j = w_{j+1}
    neumann = below + above
    neumann = neumann - torch.diag(neumann.sum(dim=1))
    return neumann, below - eye, above - eye


def stencil_matrices(height: int, width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The linear operators of ``STENCILS`` as matrices over a row-major ``height x width`` grid.

    Returns ``[5, H*W, H*W]``: ``S[k] @ w.flatten()`` is stencil ``k`` applied to one slice.
    ``q = D S[0] + right S[1] + left S[2] + down S[3] + up S[4]`` is diffusion plus upwind
    advection with outflow walls.
    """
    if min(height, width) < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    ly, dy, uy = _line_operators(height, dtype)
    lx, rx, lfx = _line_operators(width, dtype)
    iy, ix = torch.eye(height, dtype=dtype), torch.eye(width, dtype=dtype)
    return torch.stack([
        torch.kron(ly, ix) + torch.kron(iy, lx),
        torch.kron(iy, rx), torch.kron(iy, lfx),
        torch.kron(dy, ix), torch.kron(uy, ix),
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


def upwind_advection(w: torch.Tensor, right: torch.Tensor, left: torch.Tensor,
                     down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """First-order upwind advection with outflow walls (zero inflow), one speed per direction.

    ``w``: ``[O, ..., H, W]``; ``right, left, down, up``: ``[O]`` non-negative speeds.
    Returns ``[O, ..., H, W]``: ``Σ_dir speed_dir (w shifted one cell along dir, zero-filled - w)``.
    """
    _check(w)
    shape = (-1,) + (1,) * (w.dim() - 1)
    out = torch.zeros_like(w)
    h, wd = w.shape[-2:]
    for speed, dim, pad in ((right, -1, (1, 0, 0, 0)), (left, -1, (0, 1, 0, 0)),
                            (down, -2, (0, 0, 1, 0)), (up, -2, (0, 0, 0, 1))):
        if w.shape[dim] == 1:
            continue
        flat = w.reshape(-1, 1, h, wd)
        g = F.pad(flat, pad)  # zero ghost cell on the upwind side
        if pad[0]:
            shifted = g[..., :, :-1]
        elif pad[1]:
            shifted = g[..., :, 1:]
        elif pad[2]:
            shifted = g[..., :-1, :]
        else:
            shifted = g[..., 1:, :]
        out = out + speed.reshape(shape) * (shifted.reshape(w.shape) - w)
    return out
