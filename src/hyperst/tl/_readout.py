"""The ridge read-out that ``readout="blend"`` mixes with the decoder: fitted after training, on cached features.

The ridge is fitted on the training spots' view-0 spot and niche features, standardised as the module
standardises them, from sufficient statistics gathered block by block from the feature caches (memory
``(2F)^2``, not the cohort's features). Its penalty is chosen by generalised cross-validation on the same
spots, from a grid fixed in advance (``ALPHAS``), one penalty for all genes. The decoder's share ``mix`` is
chosen on the validation slide of the held-out run (grid ``MIXES``, lowest mean squared error; ties go to the
decoder), so no choice sees a slide that is scored later. The refit's ridge is fitted afresh on all training
spots with the same rules and keeps the held-out run's ``mix``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .._data._dataset import GeneArrays, Parts
    from ..nn import HyperSTModule
    from ._training import TrainedRun

__all__ = ["ALPHAS", "MIXES", "RidgeFit", "blend_held_out", "blend_refit", "ridge_gcv"]

logger = logging.getLogger(__name__)

#: Ridge penalties tried (the accuracy benchmark's ridge baseline uses the same grid).
ALPHAS = np.logspace(-2, 5, 15)
#: Decoder shares tried for the blend.
MIXES = np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True)
class RidgeFit:
    """``(P, G)`` coefficients, ``(G,)`` intercept and the chosen penalty."""

    weight: np.ndarray
    bias: np.ndarray
    alpha: float


def _chunks(part: Parts, genes: GeneArrays, module: HyperSTModule):
    """``(x, y)`` blocks of the part's spots in dataset order: standardised ``(n, 2F)`` features, ``(n, G)`` targets."""
    import torch

    from .._data._dataset import FeatureDataset

    data = FeatureDataset(part, genes, augment=False, seed=0)
    for idx in data.blocks(lambda i: i):
        spot, niche = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in data.features(idx))
        with torch.inference_mode():
            x = module.standardised(spot, niche).double().numpy()
        yield x, np.asarray(data.genes(idx)[2], dtype=np.float64)


def ridge_gcv(chunks, alphas: np.ndarray = ALPHAS) -> RidgeFit:
    """Ridge regression with an intercept, its penalty chosen by generalised cross-validation.

    Parameters
    ----------
    chunks
        Iterable of ``(x, y)`` pairs, ``(n_i, P)`` and ``(n_i, G)`` arrays; only sums over them are kept.
    alphas
        Penalties to try; the one with the lowest GCV score summed over genes is used.

    Returns
    -------
    The fit on all rows with the chosen penalty.
    """
    n, sx, sy, xtx, xty, yy = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    for x, y in chunks:
        n += len(x)
        sx, sy = sx + x.sum(0), sy + y.sum(0)
        xtx, xty, yy = xtx + x.T @ x, xty + x.T @ y, yy + (y * y).sum()
    if n < 2:
        msg = f"A ridge read-out needs at least 2 training spots; got {n}."
        raise ValueError(msg)
    mx, my = sx / n, sy / n
    cxx = xtx - n * np.outer(mx, mx)
    cxy = xty - n * np.outer(mx, my)
    cyy = yy - n * float(my @ my)
    s, v = np.linalg.eigh(cxx)
    s = np.clip(s, 0.0, None)
    z2 = ((v.T @ cxy) ** 2).sum(1)  # (P,): squared projections of X'y on the eigenvectors, summed over genes
    scores = []
    for alpha in alphas:
        shrink = 1.0 / (s + alpha)
        rss = cyy - 2 * (z2 * shrink).sum() + (s * z2 * shrink**2).sum()
        dof = (s * shrink).sum() + 1  # + the intercept
        scores.append(max(rss, 0.0) / n / max(1 - dof / n, 1e-12) ** 2)
    alpha = float(alphas[int(np.argmin(scores))])
    weight = v @ ((v.T @ cxy) / (s + alpha)[:, None])
    return RidgeFit(weight, my - mx @ weight, alpha)


def _ridge_predict(fit: RidgeFit, part: Parts, genes: GeneArrays, module: HyperSTModule) -> np.ndarray:
    return np.concatenate([x @ fit.weight + fit.bias for x, _ in _chunks(part, genes, module)])


def _choose_mix(decoder: np.ndarray, ridge: np.ndarray, target: np.ndarray) -> float:
    errors = [np.mean((m * decoder + (1 - m) * ridge - target) ** 2) for m in MIXES]
    best = min(errors)
    return float(max(m for m, e in zip(MIXES, errors, strict=True) if e <= best * (1 + 1e-9)))


def _set(module: HyperSTModule, fit: RidgeFit, mix: float) -> None:
    import torch

    weight, bias = (torch.from_numpy(a.astype(np.float32)) for a in (fit.weight, fit.bias))
    module.set_readout(weight, bias, mix)


def blend_held_out(
    run: TrainedRun, train_part: Parts, val_part: Parts, genes: GeneArrays
) -> tuple[TrainedRun, float | None]:
    """Fit and set the ridge read-out of a ``readout="blend"`` held-out run and choose the mix on its validation.

    Returns the run, its validation predictions now the blend's, and the decoder's share ``mix`` (``None``: not a
    blend module, or no validation slide to choose it on, when the decoder is used alone, logged). Other
    modules come back unchanged.
    """
    if run.module.config.readout != "blend":
        return run, None
    if run.validation is None:
        logger.warning("`readout='blend'` needs a validation slide to choose the mix; using the decoder alone")
        return run, None
    fit = ridge_gcv(_chunks(train_part, genes, run.module))
    val_ridge = _ridge_predict(fit, val_part, genes, run.module)
    mix = _choose_mix(run.validation.pred, val_ridge, run.validation.target)
    _set(run.module, fit, mix)
    blended = mix * run.validation.pred + (1 - mix) * val_ridge
    logger.info("Ridge read-out (alpha %.3g) blended with the decoder, decoder share %.2f", fit.alpha, mix)
    return replace(run, validation=replace(run.validation, pred=blended.astype(run.validation.pred.dtype))), mix


def blend_refit(refit: TrainedRun, mix: float, parts: Parts, genes: GeneArrays) -> None:
    """Set the refit's ridge read-out, fitted afresh on all its training spots ``parts``, with the held-out ``mix``."""
    _set(refit.module, ridge_gcv(_chunks(parts, genes, refit.module)), mix)
