"""Lorentz-model core: inner products, distances and the exponential/logarithmic maps at the origin."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import expected, expected_to

#: Default floor for divisors and trigonometric-clamp margins (the value used by MERU and HyperST).
EPS = 1e-8
#: Floor on a norm used as a divisor: far below the 1e-12 norms we support, yet ``1 / _MIN_NORM**2`` is
#: finite in float32, so no backward pass divides by zero.
_MIN_NORM = 1e-15
#: Floor on ``q = sinh(sqrt(curv) d / 2)**2`` before its square root: coincident points get distance
#: ~1e-12 and a finite gradient (the same as an ``acosh`` argument >= 1 + 2e-24).
_EPS_DIST = 1e-24
#: Cap on the ``sinh`` argument of :func:`exp_map0`: space norms stay <= 2**15 / sqrt(curv), so squared
#: norms (<= 2**30 / curv) are far from float32 overflow.
_MAX_SINH_ARG = math.asinh(2.0**15)


def _as_curv(curv: float | Tensor, like: Tensor) -> Tensor:
    """Return ``curv`` as a scalar tensor on ``like``'s dtype and device (differentiable for tensors)."""
    if isinstance(curv, Tensor):
        return curv.to(dtype=like.dtype, device=like.device)
    if not (math.isfinite(curv) and curv > 0):
        raise ValueError(expected("curv", "positive and finite", curv))
    return torch.tensor(curv, dtype=like.dtype, device=like.device)


def _norm(x: Tensor, *, keepdim: bool = False) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1, keepdim=keepdim)


def _check_same_dim(x: Tensor, y: Tensor) -> None:
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(expected_to("y", f"have the last dimension of `x` ({x.shape[-1]})", y.shape[-1]))


def time_component(x: Tensor, curv: float | Tensor, *, keepdim: bool = False) -> Tensor:
    """Compute the time component ``x_t = sqrt(1/curv + ||x||**2)``.

    Parameters
    ----------
    x
        ``(..., D)`` space components.
    curv
        Positive curvature magnitude (the curvature is ``-curv``).
    keepdim
        Keep the reduced last dimension (size 1).

    Returns
    -------
    ``(...)`` time components, or ``(..., 1)`` with ``keepdim=True``.
    """
    c = _as_curv(curv, x)
    return torch.sqrt(1 / c + torch.sum(x * x, dim=-1, keepdim=keepdim))


def inner(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Compute the Lorentz inner product ``<x, y>_L = x . y - x_t y_t`` row by row.

    Parameters
    ----------
    x
        ``(..., D)`` space components.
    y
        ``(..., D)`` space components, broadcastable with ``x``.
    curv
        Positive curvature magnitude.

    Returns
    -------
    ``(...)`` inner products; ``<x, x>_L = -1/curv``.
    """
    _check_same_dim(x, y)
    return torch.sum(x * y, dim=-1) - time_component(x, curv) * time_component(y, curv)


def pairwise_inner(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Compute Lorentz inner products between every row of ``x`` and every row of ``y``.

    Parameters
    ----------
    x
        ``(..., N, D)`` space components.
    y
        ``(..., M, D)`` space components.
    curv
        Positive curvature magnitude.

    Returns
    -------
    ``(..., N, M)`` inner products.
    """
    _check_same_dim(x, y)
    x_time = time_component(x, curv, keepdim=True)
    y_time = time_component(y, curv, keepdim=True)
    return x @ y.transpose(-1, -2) - x_time @ y_time.transpose(-1, -2)


def _scaled_radius(norm: Tensor, c: Tensor) -> Tensor:
    # sqrt(curv) * dist0; exact in float32, unlike acosh(sqrt(curv) * x_t) near the origin
    return torch.asinh(torch.sqrt(c) * norm)


def _direction(x: Tensor, norm: Tensor) -> Tensor:
    return x / norm.unsqueeze(-1).clamp_min(_MIN_NORM)  # the origin gets direction 0


def _pairwise_half_chord_sq(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """Return ``q = sinh(sqrt(c) d / 2)**2 = (-c <x, y>_L - 1) / 2`` for all pairs.

    Hyperbolic law of cosines at the origin: ``q = sinh((r_x - r_y) / 2)**2 + c |x| |y| sin(theta/2)**2``,
    ``r = asinh(sqrt(c) |.|)``, ``2 sin(theta / 2) = ||x/|x| - y/|y|||`` (from :func:`torch.cdist` without
    its matmul shortcut). Two non-negative terms replace the cancelling ``x_t y_t - x . y``.
    """
    x_norm, y_norm = _norm(x), _norm(y)
    chord = torch.cdist(_direction(x, x_norm), _direction(y, y_norm), compute_mode="donot_use_mm_for_euclid_dist")
    x_norm, y_norm = x_norm.unsqueeze(-1), y_norm.unsqueeze(-2)
    radial = torch.sinh((_scaled_radius(x_norm, c) - _scaled_radius(y_norm, c)) / 2)
    return radial * radial + c * x_norm * y_norm * chord * chord / 4


def _rowwise_geometry(x: Tensor, y: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``q`` (as above), ``|x|`` and ``|y| sin(theta)`` for paired rows, all from ``delta = y - x``.

    ``|y| sin(theta)`` is the norm of ``delta`` orthogonal to ``x``; ``sin(theta/2)**2`` is
    ``sin(theta)**2 / (2 (1 + cos(theta)))`` if ``cos(theta) >= 0``, else ``(1 - cos(theta)) / 2``;
    ``r_x - r_y = asinh((|x|**2 - |y|**2) / (|x| y_t + |y| x_t))``, ``|x|**2 - |y|**2 = -delta . (x + y)``.
    Nearby points far from the origin thus keep float32 accuracy.
    """
    x_norm, y_norm = _norm(x), _norm(y)
    x_dir = _direction(x, x_norm)
    delta = y - x
    along = torch.sum(delta * x_dir, dim=-1)
    y_sin = _norm(delta - along.unsqueeze(-1) * x_dir)
    safe_y_norm = y_norm.clamp_min(_MIN_NORM)  # y at the origin: every use below is multiplied by |y| = 0
    cos_theta = ((x_norm + along) / safe_y_norm).clamp(-1, 1)
    # both branches are finite everywhere (1 + cos >= 1 where the first is used), so where() has no NaN
    sin_half_sq = torch.where(
        cos_theta >= 0,
        (y_sin / safe_y_norm) ** 2 / (2 * (1 + cos_theta).clamp_min(1)),
        (1 - cos_theta) / 2,
    )
    denom = x_norm * time_component(y, c) + y_norm * time_component(x, c)
    # both points at the origin give 0 / 0, with a numerator of exactly 0
    gap = torch.asinh(-torch.sum(delta * (x + y), dim=-1) / denom.clamp_min(_MIN_NORM**2))
    radial = torch.sinh(gap / 2)
    return radial * radial + c * x_norm * y_norm * sin_half_sq, x_norm, y_sin


def _dist_from_half_chord(q: Tensor, c: Tensor, eps: float) -> Tensor:
    # acosh(1 + 2q) == 2 asinh(sqrt(q)); eps floors q so that sqrt has a finite gradient at q == 0
    return 2 * torch.asinh(torch.sqrt(q.clamp_min(eps))) / torch.sqrt(c)


def dist(x: Tensor, y: Tensor, curv: float | Tensor, *, eps: float = _EPS_DIST) -> Tensor:
    """Compute the geodesic distance ``acosh(-curv <x, y>_L) / sqrt(curv)`` row by row.

    Evaluated as ``2 asinh(sqrt(q)) / sqrt(curv)``, ``q = (-curv <x, y>_L - 1) / 2``, with ``q`` built
    from ``y - x``, radii and directions: accurate in float32 for nearby points far from the origin.

    Parameters
    ----------
    x
        ``(..., D)`` space components.
    y
        ``(..., D)`` space components, broadcastable with ``x``.
    curv
        Positive curvature magnitude.
    eps
        Floor on ``q`` before its square root (finite gradient when ``x == y``).

    Returns
    -------
    ``(...)`` distances.
    """
    _check_same_dim(x, y)
    x, y = torch.broadcast_tensors(x, y)
    c = _as_curv(curv, x)
    return _dist_from_half_chord(_rowwise_geometry(x, y, c)[0], c, eps)


def pairwise_dist(x: Tensor, y: Tensor, curv: float | Tensor, *, eps: float = _EPS_DIST) -> Tensor:
    """Compute geodesic distances between every row of ``x`` and every row of ``y``.

    Same quantity as :func:`dist`, from radii and direction chords; ``pairwise_dist(x, x)`` has a zero
    diagonal to float32 precision, and off-diagonal errors are ~1e-7 of the radii.

    Parameters
    ----------
    x
        ``(..., N, D)`` space components.
    y
        ``(..., M, D)`` space components.
    curv
        Positive curvature magnitude.
    eps
        Floor on ``q`` before its square root (finite gradient for coincident points).

    Returns
    -------
    ``(..., N, M)`` distances.
    """
    _check_same_dim(x, y)
    c = _as_curv(curv, x)
    return _dist_from_half_chord(_pairwise_half_chord_sq(x, y, c), c, eps)


def dist0(x: Tensor, curv: float | Tensor) -> Tensor:
    """Compute the geodesic distance to the origin, ``asinh(sqrt(curv) ||x||) / sqrt(curv)``.

    Parameters
    ----------
    x
        ``(..., D)`` space components.
    curv
        Positive curvature magnitude.

    Returns
    -------
    ``(...)`` distances; equal to the norm of :func:`log_map0`.
    """
    c = _as_curv(curv, x)
    return _scaled_radius(_norm(x), c) / torch.sqrt(c)


def exp_map0(v: Tensor, curv: float | Tensor, *, eps: float = EPS) -> Tensor:
    """Map tangent vectors at the origin onto the hyperboloid: ``sinh(t) v / t``, ``t = sqrt(curv) ||v||``.

    Parameters
    ----------
    v
        ``(..., D)`` tangent vectors at the origin (their time component is zero).
    curv
        Positive curvature magnitude.
    eps
        Floor on ``t`` in the ``sinh`` argument and the divisor (``x = v`` for tiny ``v``). The ``sinh``
        argument is also capped at ``asinh(2**15)`` to stay finite in float32.

    Returns
    -------
    ``(..., D)`` space components.
    """
    c = _as_curv(curv, v)
    scaled_norm = torch.sqrt(c) * _norm(v, keepdim=True)
    sinh_arg = scaled_norm.clamp(min=eps, max=_MAX_SINH_ARG)
    return torch.sinh(sinh_arg) * v / scaled_norm.clamp_min(eps)


def log_map0(x: Tensor, curv: float | Tensor, *, eps: float = EPS) -> Tensor:
    """Map points to tangent vectors at the origin: ``asinh(t) x / t``, ``t = sqrt(curv) ||x||``.

    The inverse of :func:`exp_map0`; MERU's ``acosh(sqrt(curv) x_t)`` form is equal but cancels in float32
    near the origin.

    Parameters
    ----------
    x
        ``(..., D)`` space components.
    curv
        Positive curvature magnitude.
    eps
        Below this ``t`` the ratio ``asinh(t) / t`` is its limit 1 (``t`` is floored at ``eps`` in the
        other branch so that neither divides by zero).

    Returns
    -------
    ``(..., D)`` tangent vectors; their norm is :func:`dist0`.
    """
    c = _as_curv(curv, x)
    scaled_norm = torch.sqrt(c) * _norm(x, keepdim=True)
    safe = scaled_norm.clamp_min(eps)
    return torch.where(scaled_norm < eps, torch.ones_like(safe), torch.asinh(safe) / safe) * x
