"""Entailment cones in Euclidean space (Ganea et al., 2018): half-aperture and exterior angle.

The flat counterparts of :func:`~hyperst.lorentz.half_aperture` and :func:`~hyperst.lorentz.oxy_angle`, used
by the ``geometry="euclidean"`` ablation of the HyperST losses. Points are plain ``(..., D)`` vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._core import EPS, _check_same_dim, _norm


def _aperture(x_norm: Tensor, min_radius: float, eps: float) -> Tensor:
    margin = torch.finfo(x_norm.dtype).eps  # keeps asin' finite at the clamp
    return torch.asin((2 * min_radius / (x_norm + eps)).clamp(max=1 - margin))


def _angle(x: Tensor, y: Tensor, x_norm: Tensor, eps: float) -> Tensor:
    x_dir = x / x_norm.unsqueeze(-1).clamp_min(eps)
    delta = y - x
    along = torch.sum(delta * x_dir, dim=-1)
    across = torch.linalg.vector_norm(delta - along.unsqueeze(-1) * x_dir, dim=-1)
    undefined = (across == 0) & (along == 0)
    return torch.atan2(torch.where(undefined, 1.0, across), torch.where(undefined, 0.0, along))


def euclidean_half_aperture(x: Tensor, *, min_radius: float = 0.1, eps: float = EPS) -> Tensor:
    """Compute the half-aperture ``asin(2 min_radius / ||x||)`` of the Euclidean cone rooted at ``x``.

    Parameters
    ----------
    x
        ``(..., D)`` cone roots (parents).
    min_radius
        Constant ``K`` of the cone; within ``2 K`` of the origin the cone is widest (``pi/2``).
    eps
        Added to the divisor, so that the aperture is finite at the origin.

    Returns
    -------
    ``(...)`` half-apertures in ``(0, pi / 2)``. The ``asin`` argument is clamped to ``1 - m``, ``m`` the
    machine epsilon of ``x``'s dtype, where the derivative of ``asin`` is still finite.
    """
    return _aperture(_norm(x), min_radius, eps)


def euclidean_oxy_angle(x: Tensor, y: Tensor, *, eps: float = EPS) -> Tensor:
    """Compute the exterior angle at parent ``x`` towards child ``y`` in the Euclidean triangle origin-``x``-``y``.

    The angle between the ray ``origin -> x`` continued past ``x`` and the segment ``x -> y``: 0 when ``y``
    lies further out on the ray of ``x``, ``pi`` when ``y`` lies between ``x`` and the origin. It is
    ``atan2(across, along)`` of the components of ``y - x`` across and along the direction of ``x``, which is
    exact near 0 and ``pi``.

    Parameters
    ----------
    x
        ``(..., D)`` parents.
    y
        ``(..., D)`` children, broadcastable with ``x``.
    eps
        Floor on ``||x||`` when dividing by it for the direction of ``x`` (``x`` at the origin has direction 0).

    Returns
    -------
    ``(...)`` angles in ``[0, pi]``; where ``y == x`` (and at the origin with ``y == 0``) the angle is
    undefined and returned as ``pi / 2`` with zero gradient.
    """
    _check_same_dim(x, y)
    return _angle(x, y, _norm(x), eps)


def euclidean_cone(x: Tensor, y: Tensor, *, min_radius: float = 0.1, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Compute :func:`euclidean_half_aperture` of ``x`` and :func:`euclidean_oxy_angle` of ``(x, y)`` together.

    ``||x||`` is computed once and shared by both, as the entailment loss needs them.

    Parameters
    ----------
    x
        ``(..., D)`` parents.
    y
        ``(..., D)`` children.
    min_radius
        Constant ``K`` of the cone.
    eps
        As in the two functions.

    Returns
    -------
    ``(...)`` half-apertures and ``(...)`` angles.
    """
    _check_same_dim(x, y)
    x_norm = _norm(x)
    return _aperture(x_norm, min_radius, eps), _angle(x, y, x_norm, eps)
