"""Entailment cones on the hyperboloid: half-aperture and exterior angle (MERU)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._core import EPS, _as_curv, _check_same_dim, _norm, _rowwise_geometry, time_component


def half_aperture(x: Tensor, curv: float | Tensor, *, min_radius: float = 0.1, eps: float = EPS) -> Tensor:
    """Compute the half-aperture ``asin(2 min_radius / (sqrt(curv) ||x||))`` of the cone rooted at ``x``.

    Parameters
    ----------
    x
        ``(..., D)`` space components of the cone roots (parents).
    curv
        Positive curvature magnitude.
    min_radius
        Constant ``K`` of the cone; within ``2 K / sqrt(curv)`` of the origin the cone is widest (``pi/2``).
    eps
        Added to the divisor (finite at the origin), and margin of the ``asin`` argument clamp to
        ``[-1 + eps, 1 - eps]``, raised to the dtype's machine epsilon so that the margin exists.

    Returns
    -------
    ``(...)`` half-apertures in ``(0, pi / 2)``.
    """
    c = _as_curv(curv, x)
    margin = max(eps, torch.finfo(x.dtype).eps)  # 1 - 1e-8 == 1 in float32, where asin' is infinite
    asin_arg = 2 * min_radius / (torch.sqrt(c) * _norm(x) + eps)
    return torch.asin(asin_arg.clamp(min=-1 + margin, max=1 - margin))


def oxy_angle(x: Tensor, y: Tensor, curv: float | Tensor, *, eps: float = EPS) -> Tensor:
    """Compute the exterior angle at parent ``x`` towards child ``y`` in the triangle origin-``x``-``y``.

    The angle between the geodesic ``origin -> x`` continued past ``x`` and the geodesic ``x -> y``: 0 when
    ``y`` lies further out on the ray of ``x``, ``pi`` when ``y`` lies between ``x`` and the origin. MERU's
    ``acos((y_t + L x_t) / (||x|| sqrt(L**2 - 1)))``, ``L = curv <x, y>_L``, is evaluated as
    ``atan2(sqrt(curv) ||x|| ||y|| sin(theta), y_t + L x_t)`` (law of sines; ``theta`` is the angle at the
    origin), which stays accurate near 0 and ``pi`` where ``acos`` does not. ``L = -(1 + 2q)`` comes from
    :func:`dist`'s half-chord and ``y_t - x_t`` from ``(y - x) . (y + x) / (x_t + y_t)``.

    Parameters
    ----------
    x
        ``(..., D)`` space components of the parents.
    y
        ``(..., D)`` space components of the children, broadcastable with ``x``.
    curv
        Positive curvature magnitude.
    eps
        Where ``||x|| sqrt(L**2 - 1) < eps`` (``y == x``, or ``x`` at the origin) the angle is undefined;
        it is returned as ``pi / 2`` with zero gradient, the value MERU's ``eps``-regularised quotient gives.

    Returns
    -------
    ``(...)`` angles in ``[0, pi]``.
    """
    _check_same_dim(x, y)
    x, y = torch.broadcast_tensors(x, y)
    c = _as_curv(curv, x)
    q, x_norm, y_sin = _rowwise_geometry(x, y, c)
    x_time = time_component(x, c)
    time_gap = torch.sum((y - x) * (y + x), dim=-1) / (x_time + time_component(y, c))
    cos_part = time_gap - 2 * q * x_time  # y_t + L x_t
    sin_part = torch.sqrt(c) * x_norm * y_sin  # sqrt(c) |x| |y| sin(theta)
    with torch.no_grad():
        undefined = x_norm * 2 * torch.sqrt(q * (1 + q)) < eps  # ||x|| sqrt(L**2 - 1) < eps
    sin_part = torch.where(undefined, torch.ones_like(sin_part), sin_part)
    cos_part = torch.where(undefined, torch.zeros_like(cos_part), cos_part)
    return torch.atan2(sin_part, cos_part)
