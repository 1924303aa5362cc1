r"""Lorentz-model geometry on tensors (pure functions, no state).

The hyperboloid of curvature ``-curv`` (``curv > 0``) is ``{(x_t, x) : -x_t**2 + ||x||**2 = -1/curv,
x_t > 0}``. As in MERU (Desai et al., 2023), a point is stored by its **space components** ``x`` of shape
``(..., D)`` only; the **time component** ``x_t = sqrt(1/curv + ||x||**2)`` is implicit
(:func:`time_component`). Every ``(..., D)`` tensor is thus a valid point and the origin is ``x = 0``.
Tangent vectors at the origin have time component zero and are also stored as ``(..., D)``.
:func:`to_lorentz_full` gives ``(..., D + 1)`` coordinates, time first: the storage format of ``obsm``
and the convention of :class:`geoopt.Lorentz` with ``k = 1 / curv`` (:func:`geoopt_manifold`).

Every function broadcasts over leading dimensions, keeps the device and dtype of its inputs (float32 or
float64), and takes ``curv`` as a positive number or a scalar tensor (gradients flow to it). Where the
textbook formula cancels in float32 (``acosh`` of ``x_t y_t - x . y`` near 1), an algebraically equal form
is used, and each clamp has a named ``eps`` and a one-line reason. geoopt 0.5.1 has maps and distances for
full coordinates, but its ``expmap0`` overflows in float32 and it has no batched pairwise distance, cone
aperture or exterior angle; the tests check these functions against geoopt in float64.
:func:`euclidean_half_aperture` and :func:`euclidean_oxy_angle` (both at once: :func:`euclidean_cone`) are the
flat cones of the Euclidean ablation.
"""

from ._cones import half_aperture, oxy_angle
from ._convert import from_lorentz_full, geoopt_manifold, hyperboloid_residual, to_lorentz_full, to_poincare
from ._core import EPS, dist, dist0, exp_map0, inner, log_map0, pairwise_dist, pairwise_inner, time_component
from ._euclidean import euclidean_cone, euclidean_half_aperture, euclidean_oxy_angle

__all__ = [
    "EPS",
    "dist",
    "dist0",
    "euclidean_cone",
    "euclidean_half_aperture",
    "euclidean_oxy_angle",
    "exp_map0",
    "from_lorentz_full",
    "geoopt_manifold",
    "half_aperture",
    "hyperboloid_residual",
    "inner",
    "log_map0",
    "oxy_angle",
    "pairwise_dist",
    "pairwise_inner",
    "time_component",
    "to_lorentz_full",
    "to_poincare",
]
