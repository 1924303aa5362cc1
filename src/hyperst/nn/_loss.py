"""HyperST losses as pure functions: contrastive (HCA), entailment cones (HEA) and the decoder MSE.

Stream names: ``is`` spot image, ``in`` niche image, ``gs`` spot gene, ``gn`` niche gene. A contrastive
pair ``"a_b"`` has rows ``a`` and columns ``b``; an entailment pair ``"a_b"`` has parent ``a``, child ``b``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import lorentz
from .._validation import expected, expected_to
from ._distributed import gather_with_offset

__all__ = [
    "CONTRAST_PAIRS",
    "ENTAIL_PAIRS",
    "LossOutput",
    "contrastive_loss",
    "cone_loss",
    "entailment_loss",
    "pair_logits",
    "prediction_loss",
]

Geometry = Literal["lorentz", "euclidean"]

#: HCA pairings (rows_columns): I_s->G_s, G_s->I_s, I_n->G_s, G_n->I_s. Niche->spot runs one way only.
CONTRAST_PAIRS = ("is_gs", "gs_is", "in_gs", "gn_is")
#: HEA pairings (parent_child): image entails gene (spot, niche), spot entails niche (image, gene).
ENTAIL_PAIRS = ("is_gs", "in_gn", "is_in", "gs_gn")
#: Entailment pairs whose margin is ``aperture_scale_intra`` (image -> gene); the others use ``_cross``.
_INTRA_PAIRS = frozenset({"is_gs", "in_gn"})
#: Short stream names of the pairs -> embedding argument names (and keys of the module outputs).
_STREAM_KEYS = {"is": "spot_image", "in": "niche_image", "gs": "spot_gene", "gn": "niche_gene"}


@dataclass(frozen=True)
class LossOutput:
    """A total loss and its named scalar terms.

    Parameters
    ----------
    total
        Scalar tensor to backpropagate.
    terms
        Named scalar tensors that make up ``total`` (and logged values such as the curvature).
    """

    total: Tensor
    terms: Mapping[str, Tensor] = field(default_factory=dict)


def _at_least_float32(x: Tensor) -> Tensor:
    # the losses run in float32 even under autocast (half-precision inputs are upcast); float64 stays
    return x if x.dtype == torch.float64 else x.float()


def _check_geometry(geometry: str, curv: float | Tensor | None) -> None:
    if geometry not in ("lorentz", "euclidean"):
        raise ValueError(expected("geometry", "'lorentz' or 'euclidean'", geometry))
    if geometry == "lorentz" and curv is None:
        raise ValueError(expected("curv", "a positive number or tensor for `geometry='lorentz'`", curv))


def _check_pairs(pairs: Sequence[str], allowed: tuple[str, ...], name: str) -> None:
    unknown = [p for p in pairs if p not in allowed]
    if unknown or not pairs or len(set(pairs)) != len(pairs):
        raise ValueError(expected(name, f"distinct names from {list(allowed)}, at least one", list(pairs)))


def _streams(pairs: Sequence[str], embeddings: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Return the embeddings the pairs use, by short stream name, upcast to float32."""
    needed = {s for pair in pairs for s in pair.split("_")}
    missing = sorted(_STREAM_KEYS[s] for s in needed if embeddings.get(_STREAM_KEYS[s]) is None)
    if missing:
        found = f"keys {sorted(embeddings)}"
        raise ValueError(expected_to("embeddings", f"hold {missing} (used by the selected pairs)", found))
    return {s: _at_least_float32(embeddings[_STREAM_KEYS[s]]) for s in needed}


def pair_logits(
    rows: Tensor,
    cols: Tensor,
    *,
    logit_scale: Tensor | float,
    curv: float | Tensor | None = None,
    geometry: Geometry = "lorentz",
) -> Tensor:
    """Compute contrastive logits: ``-s * d(row, col)`` (Lorentz) or ``s * cos(row, col)`` (Euclidean).

    Runs in float32 (or float64) even under autocast.

    Parameters
    ----------
    rows
        ``(N, D)`` embeddings (Lorentz space components, or Euclidean vectors).
    cols
        ``(M, D)`` embeddings.
    logit_scale
        Multiplier ``s`` (the inverse temperature).
    curv
        Curvature magnitude; required for ``geometry="lorentz"``.
    geometry
        ``"lorentz"``: negative geodesic distance. ``"euclidean"``: cosine similarity (CLIP).

    Returns
    -------
    ``(N, M)`` logits.
    """
    _check_geometry(geometry, curv)
    rows, cols = _at_least_float32(rows), _at_least_float32(cols)
    with torch.autocast(device_type=rows.device.type, enabled=False):
        if geometry == "lorentz":
            return -logit_scale * lorentz.pairwise_dist(rows, cols, curv)
        return logit_scale * F.normalize(rows, dim=-1) @ F.normalize(cols, dim=-1).T


def contrastive_loss(
    embeddings: Mapping[str, Tensor],
    *,
    logit_scale: Tensor | float,
    curv: float | Tensor | None = None,
    geometry: Geometry = "lorentz",
    pairs: Sequence[str] = CONTRAST_PAIRS,
) -> LossOutput:
    """Compute the hierarchical contrastive alignment loss (HCA): the mean of one InfoNCE per pair.

    Each pairing is a cross-entropy over :func:`pair_logits` with matching rows and columns as targets.
    Under :mod:`torch.distributed`, columns are gathered from all processes (with gradients), so the
    negatives are the global batch.

    Parameters
    ----------
    embeddings
        ``(B, D)`` embeddings by stream: ``"spot_image"``, ``"niche_image"``, ``"spot_gene"``,
        ``"niche_gene"``; only those the pairs use are needed, other keys are ignored (the output of
        :meth:`HyperSTModule.forward <hyperst.nn.HyperSTModule.forward>` fits).
    logit_scale
        Multiplier ``s`` of the logits.
    curv
        Curvature magnitude; required for ``geometry="lorentz"``.
    geometry
        ``"lorentz"`` (negative geodesic distance) or ``"euclidean"`` (cosine similarity).
    pairs
        Non-empty subset of :data:`CONTRAST_PAIRS`.

    Returns
    -------
    ``total`` is the mean of the terms ``hca_<pair>``.

    Raises
    ------
    ValueError
        If ``pairs`` is empty or unknown, an embedding it needs is missing, or ``geometry`` is unknown.
    """
    _check_geometry(geometry, curv)
    _check_pairs(pairs, CONTRAST_PAIRS, "pairs")
    streams = _streams(pairs, embeddings)
    gathered = {}
    terms = {}
    for pair in pairs:
        row, col = pair.split("_")
        if col not in gathered:
            gathered[col] = gather_with_offset(streams[col])
        cols, offset = gathered[col]
        rows = streams[row]
        logits = pair_logits(rows, cols, logit_scale=logit_scale, curv=curv, geometry=geometry)
        targets = torch.arange(rows.shape[0], device=rows.device) + offset
        terms[f"hca_{pair}"] = F.cross_entropy(logits, targets)
    return LossOutput(torch.stack(list(terms.values())).mean(), terms)


def cone_loss(
    parent: Tensor,
    child: Tensor,
    *,
    aperture_scale: float = 1.0,
    min_radius: float = 0.1,
    curv: float | Tensor | None = None,
    geometry: Geometry = "lorentz",
) -> Tensor:
    """Penalise children outside their parent's entailment cone: mean of ``max(0, ext - m * aper)``.

    Runs in float32 (or float64) even under autocast.

    Parameters
    ----------
    parent
        ``(B, D)`` parent embeddings (the more general concept).
    child
        ``(B, D)`` child embeddings, paired row by row with the parents.
    aperture_scale
        Margin multiplier ``m`` of the half-aperture.
    min_radius
        Constant ``K`` of the cone (:func:`hyperst.lorentz.half_aperture`).
    curv
        Curvature magnitude; required for ``geometry="lorentz"``.
    geometry
        ``"lorentz"`` (MERU cones) or ``"euclidean"`` (Ganea et al. 2018 cones,
        :func:`hyperst.lorentz.euclidean_half_aperture` and :func:`hyperst.lorentz.euclidean_oxy_angle`).

    Returns
    -------
    Scalar loss.
    """
    _check_geometry(geometry, curv)
    parent, child = _at_least_float32(parent), _at_least_float32(child)
    with torch.autocast(device_type=parent.device.type, enabled=False):
        if geometry == "lorentz":
            aperture = lorentz.half_aperture(parent, curv, min_radius=min_radius)
            angle = lorentz.oxy_angle(parent, child, curv)
        else:
            aperture, angle = lorentz.euclidean_cone(parent, child, min_radius=min_radius)
        return torch.relu(angle - aperture_scale * aperture).mean()


def entailment_loss(
    embeddings: Mapping[str, Tensor],
    *,
    curv: float | Tensor | None = None,
    geometry: Geometry = "lorentz",
    pairs: Sequence[str] = ENTAIL_PAIRS,
    aperture_scale_intra: float = 0.7,
    aperture_scale_cross: float = 1.2,
    min_radius: float = 0.1,
    factor: float = 0.5,
) -> LossOutput:
    """Compute the hierarchical entailment alignment loss (HEA): ``factor`` times the sum of cone terms.

    Parameters
    ----------
    embeddings
        ``(B, D)`` embeddings by stream, as for :func:`contrastive_loss`; only those the pairs use are
        needed.
    curv
        Curvature magnitude; required for ``geometry="lorentz"``.
    geometry
        ``"lorentz"`` or ``"euclidean"`` cones (:func:`cone_loss`).
    pairs
        Subset of :data:`ENTAIL_PAIRS` (``parent_child``).
    aperture_scale_intra
        Margin multiplier of the image -> gene pairs (``"is_gs"``, ``"in_gn"``); 0.7 in the authors' code.
    aperture_scale_cross
        Margin multiplier of the spot -> niche pairs (``"is_in"``, ``"gs_gn"``); 1.2 in the authors' code.
    min_radius
        Constant ``K`` of the cones.
    factor
        Multiplier of the sum: 0.5 in the authors' code, 0.25 (a mean of four) in the paper.

    Returns
    -------
    ``total`` is ``factor`` times the sum of the terms ``hea_<pair>``.

    Raises
    ------
    ValueError
        If ``pairs`` is empty or unknown, an embedding it needs is missing, or ``geometry`` is unknown.
    """
    _check_geometry(geometry, curv)
    _check_pairs(pairs, ENTAIL_PAIRS, "pairs")
    streams = _streams(pairs, embeddings)
    terms = {}
    for pair in pairs:
        parent, child = pair.split("_")
        scale = aperture_scale_intra if pair in _INTRA_PAIRS else aperture_scale_cross
        terms[f"hea_{pair}"] = cone_loss(
            streams[parent],
            streams[child],
            aperture_scale=scale,
            min_radius=min_radius,
            curv=curv,
            geometry=geometry,
        )
    return LossOutput(factor * torch.stack(list(terms.values())).sum(), terms)


def prediction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Compute the decoder loss: mean squared error over spots and genes, in float32.

    Parameters
    ----------
    prediction
        ``(B, G)`` predicted expression.
    target
        ``(B, G)`` observed expression (log2(1 + counts) in HyperST).

    Returns
    -------
    Scalar loss.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if prediction.shape != target.shape:
        shape = tuple(prediction.shape)
        raise ValueError(expected_to("target", f"have the shape of `prediction` {shape}", tuple(target.shape)))
    return F.mse_loss(_at_least_float32(prediction), _at_least_float32(target))
