"""How far to trust a prediction: split-conformal intervals, per-gene predictability, domain-shift checks.

At fit time, :func:`calibration` turns the held-out (validation) residuals into per-gene quantiles and
:func:`reference_qc` summarises what the model saw (pixel size, stain, image features, embedding radius). At
predict time, :func:`conformal_bounds` turns those into per-spot, per-gene bounds and :func:`domain_qc`
compares the new slide with the reference. Everything stored is JSON-friendly (it lives in the model's
:class:`~hyperst._records.TrainingRecord`).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from .._records import TrainingRecord
    from ._prepare import SlideInput

__all__ = [
    "CALIBRATION_LEVELS",
    "RELIABLE_PCC",
    "calibration",
    "conformal_bounds",
    "domain_qc",
    "feature_distance",
    "reference_qc",
    "spot_radius",
    "stain_od",
]

#: Empirical quantile levels stored per gene (0, 0.01, ..., 1); bounds interpolate between them.
CALIBRATION_LEVELS = np.linspace(0.0, 1.0, 101)
#: Default validation PCC from which a gene counts as reliably predicted (``var["hyperst_reliable"]``).
RELIABLE_PCC = 0.3
#: Normalised intervals scale each spot's half-width by its difficulty relative to the validation median,
#: clipped to this band so that one odd spot cannot get a zero-width or unbounded interval.
_DIFFICULTY_CLIP = (0.5, 2.0)
# domain-shift thresholds (documented in docs/trust.md)
# pixel size outside [min / 1.5, max * 2] of the training slides: on HER2ST, predictions from images resampled
# up to 2x coarser and 1.5x finer kept a per-gene correlation >= 0.95 with those of the original scan for both
# encoders measured (squidpy features and ImageNet MobileNetV2); 3x coarser fell to 0.94 (`benchmarks/scale.py`)
_MPP_FINER, _MPP_COARSER = 1.5, 2.0
_STAIN_REL = 0.25  # mean optical density of a channel differs by > 25 % from every training slide
_FEATURE_Q = 95  # median feature distance beyond the 95th percentile of the training spots
_RADIUS_Q = (5, 95)  # median radius outside the 5th-95th percentile band of the training spots


def _round(a: np.ndarray) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 5).tolist()


def spot_radius(module: torch.nn.Module, spot: np.ndarray, niche: np.ndarray) -> np.ndarray | None:
    """Geodesic distance from the origin of each spot's image embedding (``None`` without a Lorentz space)."""
    import torch

    from ..lorentz import dist0

    cfg = module.config
    if not (cfg.alignment and cfg.geometry == "lorentz"):
        return None
    out = []
    with torch.inference_mode():
        for i in range(0, len(spot), 1024):
            emb = module.embed(torch.from_numpy(spot[i : i + 1024]), torch.from_numpy(niche[i : i + 1024]))
            out.append(dist0(emb["spot_image"], module.curv.detach()).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def feature_distance(module: torch.nn.Module, spot: np.ndarray) -> np.ndarray:
    """Root-mean-square z-score of each spot's image features under the model's training standardisation."""
    shift = module.feature_shift.detach().cpu().numpy()
    scale = module.feature_scale.detach().cpu().numpy()
    return np.sqrt((((spot - shift) / scale) ** 2).mean(1))


def calibration(pred: np.ndarray, target: np.ndarray, difficulty: np.ndarray | None) -> dict[str, Any]:
    """Per-gene quantiles of the absolute validation residuals (and of the difficulty-normalised ones).

    Parameters
    ----------
    pred, target
        ``(n, G)`` validation predictions and targets.
    difficulty
        ``(n,)`` per-spot difficulty (the hyperbolic radius), or ``None``.

    Returns
    -------
    ``n`` (validation spots), ``plain`` (``G`` lists of quantiles at :data:`CALIBRATION_LEVELS`) and, with a
    difficulty, ``normalised`` and ``difficulty_median``.
    """
    from ._evaluate import column_blocks

    n, n_genes = np.shape(pred)
    med = float(np.median(difficulty)) if difficulty is not None and len(difficulty) else 0.0
    relative = np.clip(difficulty / med, *_DIFFICULTY_CLIP)[:, None] if difficulty is not None and med > 0 else None
    plain, normalised = np.empty((n_genes, len(CALIBRATION_LEVELS))), np.empty((n_genes, len(CALIBRATION_LEVELS)))
    for cols in column_blocks(n, n_genes):  # per gene, so by blocks of genes: one block's float64 residuals
        resid = np.abs(np.asarray(target[:, cols], dtype=np.float64) - np.asarray(pred[:, cols], dtype=np.float64))
        plain[cols] = np.quantile(resid, CALIBRATION_LEVELS, axis=0).T
        if relative is not None:
            normalised[cols] = np.quantile(resid / relative, CALIBRATION_LEVELS, axis=0).T
    out: dict[str, Any] = {"n": int(n), "plain": _round(plain)}
    if relative is not None:
        out["normalised"] = _round(normalised)
        out["difficulty"] = "radius"
        out["difficulty_median"] = med
    return out


def conformal_bounds(
    pred: np.ndarray,
    cal: dict[str, Any],
    coverage: float,
    difficulty: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Split-conformal lower and upper bounds at ``coverage`` for ``(N, G)`` predictions.

    The half-width of gene ``g`` is the ``ceil((n + 1) * coverage) / n`` empirical quantile of its ``n``
    validation residuals (the finite-sample correction of split conformal prediction), times the spot's clipped
    relative difficulty when ``difficulty`` is given and the calibration holds normalised quantiles. Bounds
    below 0 are raised to 0 (every target is non-negative), which can only add coverage.
    """
    n = cal["n"]
    level = math.ceil((n + 1) * coverage) / n
    info = {"coverage": float(coverage), "n_calibration": int(n), "level": float(min(level, 1.0))}
    if level > 1:
        warnings.warn(
            f"{n} validation spots are too few for {coverage:.0%} split-conformal coverage (it needs at least "
            f"{math.ceil(coverage / (1 - coverage))}): the largest validation residual is used, so the intervals "
            "may cover less than asked. Validate on more spots (more slides) or lower `coverage`.",
            UserWarning,
            stacklevel=3,
        )
        level = 1.0
    normalised = difficulty is not None and "normalised" in cal
    table = np.asarray(cal["normalised" if normalised else "plain"], dtype=np.float64)  # (G, L)
    half = np.array([np.interp(level, CALIBRATION_LEVELS, row) for row in table])[None, :]
    if normalised:
        half = half * np.clip(difficulty / cal["difficulty_median"], *_DIFFICULTY_CLIP)[:, None]
    info["normalised"] = bool(normalised)
    lower = np.maximum(pred - half, 0.0).astype(np.float32)
    upper = np.maximum(pred + half, 0.0).astype(np.float32)
    return lower, upper, info


def stain_od(slide: SlideInput) -> list[float]:
    """Mean optical density (R, G, B) of the slide's tissue, read from a low-resolution copy of the image."""
    from .._data._tissue import low_res, tissue_mask

    key = slide.layout.elements.image_key
    rgb, _, _ = low_res(slide.sdata.images[key], key)
    mask, _ = tissue_mask(rgb, min_object_px=16)
    pixels = rgb[:, mask] if mask.any() else rgb.reshape(3, -1)
    od = -np.log10(np.clip(pixels, 1.0, 255.0) / 255.0)
    return _round(od.mean(1))


def reference_qc(
    module: torch.nn.Module, slides: list[SlideInput], features: list[np.ndarray], niches: list[np.ndarray]
) -> dict[str, Any]:
    """Summarise what the model saw: per-slide stain; feature distance and radius percentiles of its spots."""
    spot, niche = np.concatenate(features), np.concatenate(niches)
    ref: dict[str, Any] = {
        "stain_od": {s.name: stain_od(s) for s in slides},
        "feature_distance": _round(np.percentile(feature_distance(module, spot), [5, 50, 95])),
    }
    radius = spot_radius(module, spot, niche)
    if radius is not None:
        ref["radius"] = _round(np.percentile(radius, [*_RADIUS_Q[:1], 50, *_RADIUS_Q[1:]]))
    return ref


def domain_qc(
    training: TrainingRecord,
    slide: SlideInput,
    feature_dist: np.ndarray,
    radius: np.ndarray | None,
) -> dict[str, Any]:
    """Compare a slide with the training reference; warn once, naming every check that fails.

    Returns
    -------
    ``{"checks": {name: {"value", "expected", "ok"}}, "ok": bool}``, for ``uns["hyperst"]["qc"]``. Models
    saved before the reference existed get the pixel-size check only.
    """
    ref = training.qc
    checks: dict[str, dict[str, Any]] = {}
    mpps = training.microns_per_pixel_range
    if mpps is not None:
        mpp = float(slide.layout.microns_per_pixel)
        lo, hi = mpps[0] / _MPP_FINER, mpps[1] * _MPP_COARSER
        checks["microns_per_pixel"] = {"value": mpp, "expected": [lo, hi], "ok": bool(lo <= mpp <= hi)}
    if "stain_od" in ref and ref["stain_od"]:
        od = np.asarray(stain_od(slide))
        train_od = np.asarray(list(ref["stain_od"].values()))
        rel = np.abs(od[None] - train_od) / np.maximum(train_od, 1e-3)  # (slides, 3)
        closest = float(rel.max(1).min())
        checks["stain_od"] = {
            "value": _round(od),
            "expected": f"within {_STAIN_REL:.0%} of a training slide per channel",
            "relative_difference": closest,
            "ok": bool(closest <= _STAIN_REL),
        }
    if "feature_distance" in ref and len(feature_dist):
        med = float(np.median(feature_dist))
        limit = float(ref["feature_distance"][-1])
        checks["feature_distance"] = {"value": med, "expected": [0.0, limit], "ok": bool(med <= limit)}
    if "radius" in ref and radius is not None and len(radius):
        med = float(np.median(radius))
        lo, hi = float(ref["radius"][0]), float(ref["radius"][-1])
        checks["radius"] = {"value": med, "expected": [lo, hi], "ok": bool(lo <= med <= hi)}
    failed = [name for name, c in checks.items() if not c["ok"]]
    if failed:
        lines = []
        for name in failed:
            c = checks[name]
            if name == "microns_per_pixel":
                lo, hi = c["expected"]
                lines.append(
                    f"pixel size {c['value']:.3f} µm/px, outside the accepted {lo:.3f}-{hi:.3f} µm/px (the "
                    f"training slides' {mpps[0]:.3f}-{mpps[1]:.3f} µm/px, to {_MPP_FINER:g}x finer and "
                    f"{_MPP_COARSER:g}x coarser pixels, as far as predictions were measured to hold)"
                )
            elif name == "stain_od":
                lines.append(f"stain colour differs by {c['relative_difference']:.0%} from the closest training slide")
            elif name == "feature_distance":
                lines.append(
                    f"image features: median distance {c['value']:.2f} beyond the training spots' 95th percentile "
                    f"{c['expected'][1]:.2f}"
                )
            else:
                lines.append(
                    f"median embedding radius {c['value']:.2f} outside the training band "
                    f"{c['expected'][0]:.2f}-{c['expected'][1]:.2f}"
                )
        warnings.warn(
            f"Slide `{slide.name}` (image `{slide.layout.elements.image_key}`) is unlike the slides this model was "
            "trained on: "
            + "; ".join(lines)
            + ". Expect less accurate predictions; details in `uns['hyperst']['qc']`.",
            UserWarning,
            stacklevel=3,
        )
    return {"checks": checks, "ok": not failed}
