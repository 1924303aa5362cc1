"""Learnable scaling and curvature, and the lift of Euclidean features onto the Lorentz hyperboloid."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import lorentz
from .._validation import expected

__all__ = ["LorentzLift"]


def _clamp_passthrough(x: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    """Clamp values but pass the gradient through unchanged, also at and beyond the bounds.

    A plain clamp zeroes the gradient of a parameter sitting on its bound (a float32 parameter clamped
    to ``log(10)`` even rounds to just above it), so it could never move back inside. This matches the
    authors' code, which clamps the raw parameter in place and never masks its gradient.
    """
    return x.detach().clamp(low, high) + (x - x.detach())  # exact clamped value, identity gradient


class LorentzLift(nn.Module):
    """Scale features per modality and map them onto the hyperboloid with :func:`hyperst.lorentz.exp_map0`.

    ``x = exp_map0(alpha_m * features, curv)``. Each modality ``m`` has a learnable scale ``alpha_m``
    (stored as a log, initial ``dim**-0.5``, kept ``<= 1``); all modalities share one learnable curvature
    ``curv`` (stored as a log, kept in ``curv_bounds``), as in HyperST. The bounds hold on every read, with
    the gradient passed through the clamp; :meth:`clamp_parameters_` pulls the raw parameters back into
    their bands (call it after each optimiser step; :class:`HyperSTModule` also calls it when training).

    Parameters
    ----------
    dim
        Size of the features (the tangent space).
    modalities
        Names of the modalities, one learnable scale each.
    curv_init
        Initial curvature magnitude (the curvature is ``-curv``).
    learn_curv
        Learn the curvature; otherwise it stays at ``curv_init``.
    curv_bounds
        ``(low, high)`` band of the curvature magnitude.
    alpha_init
        Initial scale; defaults to ``dim**-0.5``.

    Raises
    ------
    ValueError
        If ``dim`` is not positive, ``modalities`` is empty or repeats a name, the bounds are not
        ``0 < low <= high``, ``curv_init`` lies outside them, or ``alpha_init`` is not in ``(0, 1]``.
    """

    def __init__(
        self,
        dim: int,
        modalities: Sequence[str] = ("image", "gene"),
        *,
        curv_init: float = 1.0,
        learn_curv: bool = True,
        curv_bounds: tuple[float, float] = (0.1, 10.0),
        alpha_init: float | None = None,
    ) -> None:
        super().__init__()
        if not dim > 0:
            raise ValueError(expected("dim", "positive", dim))
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(expected("modalities", "distinct names", tuple(modalities)))
        low, high = curv_bounds
        if not 0 < low <= high:
            raise ValueError(expected("curv_bounds", "a pair with 0 < low <= high", curv_bounds))
        if not low <= curv_init <= high:
            raise ValueError(expected("curv_init", f"within `curv_bounds` {curv_bounds}", curv_init))
        alpha_init = dim**-0.5 if alpha_init is None else alpha_init
        if not 0 < alpha_init <= 1:
            raise ValueError(expected("alpha_init", "in (0, 1]", alpha_init))
        self.log_curv_bounds = (math.log(low), math.log(high))
        self.log_curv = nn.Parameter(torch.tensor(math.log(curv_init)), requires_grad=learn_curv)
        self.log_alpha = nn.ParameterDict(
            {name: nn.Parameter(torch.tensor(math.log(alpha_init))) for name in modalities}
        )

    @property
    def curv(self) -> Tensor:
        """Curvature magnitude, a scalar tensor inside ``curv_bounds`` (gradient passed through the clamp)."""
        return _clamp_passthrough(self.log_curv, *self.log_curv_bounds).exp()

    def alpha(self, modality: str) -> Tensor:
        """Return the scale of ``modality``, a scalar tensor ``<= 1`` (differentiable).

        Parameters
        ----------
        modality
            One of the names given at construction.

        Returns
        -------
        The scale (gradient passed through the clamp).

        Raises
        ------
        KeyError
            If ``modality`` is unknown.
        """
        if modality not in self.log_alpha:
            available = list(self.log_alpha)
            msg = f"Key `{modality!r}` not found in the lift's modalities. Available keys: {available}."
            raise KeyError(msg)
        return _clamp_passthrough(self.log_alpha[modality], high=0.0).exp()

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Clamp the raw log-curvature and log-scales into their bands, in place (call after each step)."""
        # .data: an in-place edit that does not bump autograd's version counter, so a graph built before
        # this call can still be backpropagated (its saved values are the clamped ones anyway)
        self.log_curv.data.clamp_(*self.log_curv_bounds)
        for log_alpha in self.log_alpha.values():
            log_alpha.data.clamp_(max=0)

    def scale(self, features: Tensor, modality: str) -> Tensor:
        """Multiply features by the scale of their modality (the tangent vectors at the origin).

        Parameters
        ----------
        features
            ``(..., dim)`` Euclidean features.
        modality
            One of the names given at construction.

        Returns
        -------
        ``(..., dim)`` scaled features.
        """
        return self.alpha(modality).to(features.dtype) * features

    def forward(self, features: Tensor, modality: str) -> Tensor:
        """Lift features onto the hyperboloid, in float32 even under autocast.

        Parameters
        ----------
        features
            ``(..., dim)`` Euclidean features.
        modality
            One of the names given at construction.

        Returns
        -------
        ``(..., dim)`` space components of the points (float32, or float64 for float64 input).
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float() if features.dtype != torch.float64 else features
            return lorentz.exp_map0(self.scale(features, modality), self.curv)
