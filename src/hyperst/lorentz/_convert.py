"""Conversions: Poincaré ball, full (time-first) coordinates, the hyperboloid residual, geoopt."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._validation import expected_to
from ._core import _as_curv, time_component

if TYPE_CHECKING:
    import geoopt


def to_poincare(x: Tensor, curv: float | Tensor) -> Tensor:
    """Project points to the Poincaré ball of radius ``1 / sqrt(curv)``: ``x / (1 + sqrt(curv) x_t)``.

    Parameters
    ----------
    x
        ``(..., D)`` space components.
    curv
        Positive curvature magnitude.

    Returns
    -------
    ``(..., D)`` ball coordinates, of norm ``tanh(sqrt(curv) dist0(x) / 2) / sqrt(curv)``.
    """
    c = _as_curv(curv, x)
    return x / (1 + torch.sqrt(c) * time_component(x, c, keepdim=True))


def to_lorentz_full(x: Tensor, curv: float | Tensor) -> Tensor:
    """Prepend the time component to space components.

    Parameters
    ----------
    x
        ``(..., D)`` space components.
    curv
        Positive curvature magnitude.

    Returns
    -------
    ``(..., D + 1)`` full coordinates, time first (``obsm`` storage; geoopt's convention).
    """
    return torch.cat([time_component(x, curv, keepdim=True), x], dim=-1)


def from_lorentz_full(x_full: Tensor) -> Tensor:
    """Drop the time component of full coordinates.

    Parameters
    ----------
    x_full
        ``(..., D + 1)`` full coordinates, time first.

    Returns
    -------
    ``(..., D)`` space components.

    Raises
    ------
    ValueError
        If the last dimension has fewer than 2 entries.
    """
    if x_full.ndim == 0 or x_full.shape[-1] < 2:
        found = f"shape {tuple(x_full.shape)}"
        raise ValueError(expected_to("x_full", "have a last dimension of at least 2", found))
    return x_full[..., 1:]


def hyperboloid_residual(x_full: Tensor, curv: float | Tensor) -> Tensor:
    """Compute the constraint residual ``<x, x>_L + 1/curv`` of full coordinates (zero on the hyperboloid).

    Parameters
    ----------
    x_full
        ``(..., D + 1)`` full coordinates, time first.
    curv
        Positive curvature magnitude.

    Returns
    -------
    ``(...)`` residuals. The sheet is not checked: test ``x_full[..., 0] > 0`` for that.
    """
    space = from_lorentz_full(x_full)
    return torch.sum(space * space, dim=-1) - x_full[..., 0] ** 2 + 1 / _as_curv(curv, x_full)


def geoopt_manifold(curv: float, *, dtype: torch.dtype | None = None) -> geoopt.Lorentz:
    """Return the :class:`geoopt.Lorentz` manifold of curvature ``-curv`` (geoopt's ``k = 1 / curv``).

    Points from :func:`to_lorentz_full` lie on it; use it for geoopt's Riemannian optimisers or maps.

    Parameters
    ----------
    curv
        Positive curvature magnitude.
    dtype
        Dtype of ``k``, which must match the points (geoopt recommends float64). Defaults to
        :func:`torch.get_default_dtype`.

    Returns
    -------
    The manifold, with a fixed ``k``.
    """
    import geoopt  # lazy: on recent torch, importing geoopt emits torch.jit deprecation warnings

    c = float(_as_curv(curv, torch.empty(0, dtype=torch.float64)))
    return geoopt.Lorentz(k=torch.tensor(1.0 / c, dtype=dtype or torch.get_default_dtype()))
