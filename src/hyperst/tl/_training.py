"""Training runs of ``hst.tl.fit``: one entry point for a frozen and a LoRA encoder, and what the fit records.

:func:`train_run` builds the datasets (cached features, or patches read on the fly for LoRA), a new module
standardised on the training spots, trains it (:func:`hyperst._train.train`) and predicts the validation
spots. :func:`train_and_refit` adds the refit on all training spots; :func:`training_record` turns the runs
into the model's :class:`~hyperst._records.TrainingRecord`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .._data._dataset import FeatureDataset, PatchDataset, ViewDataset
from .._records import EncoderRecord, TrainingRecord
from .._settings import settings
from .._train import train
from ._evaluate import gene_metrics
from ._features import FeatureExtractor
from ._prepare import geometry_from
from ._trust import calibration, reference_qc, spot_radius, stain_od

if TYPE_CHECKING:
    from .._config import HyperSTConfig
    from .._data._dataset import GeneArrays, Parts
    from .._train import TrainerSettings
    from ..nn import HyperSTModule, ImageEncoder
    from ._prepare import SlideInput

__all__ = ["TrainedRun", "Validation", "train_and_refit", "train_run", "training_record"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validation:
    """The validation spots as the trained run sees them: ``(n, G)`` predictions, targets, ``(n,)`` radii."""

    pred: np.ndarray
    target: np.ndarray
    radius: np.ndarray | None


@dataclass(frozen=True)
class TrainedRun:
    """A trained module, its per-epoch history, the epoch kept, and its validation (``None`` without)."""

    module: HyperSTModule
    history: list[dict[str, float]]
    best_epoch: int
    validation: Validation | None


def _encode(encoder: ImageEncoder, dataset: PatchDataset, *, batch_size: int, device: str) -> tuple[np.ndarray, ...]:
    """``(N, F)`` spot and niche features of ``dataset``'s spots (its current views), in eval mode."""
    from torch.utils.data import DataLoader

    encoder.eval().to(device)
    extract = FeatureExtractor(EncoderRecord(name=encoder.name, n_features=encoder.n_features), encoder, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=settings.num_workers)
    spot, niche = [], []
    for spot_px, niche_px, *_ in loader:
        spot.append(extract(spot_px.numpy()))
        niche.append(extract(niche_px.numpy()))
    encoder.cpu()
    return np.concatenate(spot), np.concatenate(niche)


def _new_module(features: tuple[np.ndarray, np.ndarray], target: np.ndarray, cfg: HyperSTConfig) -> HyperSTModule:
    """Build a module seeded by ``cfg.random_state`` and standardised on the training spots' view-0 features."""
    import torch

    from ..nn import HyperSTModule

    feats = np.concatenate(features)
    torch.manual_seed(cfg.random_state)
    module = HyperSTModule(feats.shape[1], target.shape[1], cfg.module)
    module.set_input_stats(
        torch.from_numpy(feats.mean(0)), torch.from_numpy(feats.std(0)), torch.from_numpy(target.mean(0))
    )
    return module


def train_run(
    train_part: Parts,
    val_part: Parts,
    genes: GeneArrays,
    cfg: HyperSTConfig,
    trainer_settings: TrainerSettings,
    *,
    encoder: ImageEncoder | None = None,
    feature_batch_size: int = 32,
    keep_last: bool = False,
) -> TrainedRun:
    """Train a new module on ``train_part``, choosing the epoch on ``val_part`` (which may be empty).

    Without ``encoder``, on the slides' cached features (``slide.spot``, ``slide.niche``); with a LoRA-adapted
    ``encoder``, on patches read on the fly, training the adapters too (in place).
    """
    seed = cfg.random_state
    val: ViewDataset | None
    if encoder is None:
        data = FeatureDataset(train_part, genes, augment=True, seed=seed)
        val = FeatureDataset(val_part, genes, augment=False, seed=seed) if val_part else None
        stats = (data.spot[:, 0], data.niche[:, 0])
    else:
        geometry = geometry_from(cfg)
        data = PatchDataset(train_part, genes, geometry, n_views=cfg.views, seed=seed)
        val = PatchDataset(val_part, genes, geometry, n_views=1, seed=seed) if val_part else None
        plain = PatchDataset(train_part, genes, geometry, n_views=1, seed=seed)
        stats = _encode(encoder, plain, batch_size=feature_batch_size, device=trainer_settings.device)
        n_lora = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
        logger.info("Fine-tuning %s with LoRA: %d trainable encoder parameters", encoder.name, n_lora)
    if val is not None and len(val) < 2:
        val = None
    module = _new_module(stats, data.target, cfg)
    history, best_epoch = train(module, data, val, cfg, trainer_settings, encoder=encoder, keep_last=keep_last)
    if val is None:
        return TrainedRun(module, history, best_epoch, None)
    if encoder is None:
        spot, niche = val.spot[:, 0], val.niche[:, 0]
    else:
        spot, niche = _encode(encoder, val, batch_size=feature_batch_size, device=trainer_settings.device)
    import torch

    with torch.inference_mode():
        pred = module.predict(torch.from_numpy(spot), torch.from_numpy(niche)).numpy()
    return TrainedRun(module, history, best_epoch, Validation(pred, val.target, spot_radius(module, spot, niche)))


def train_and_refit(
    train_part: Parts,
    val_part: Parts,
    genes: GeneArrays,
    cfg: HyperSTConfig,
    trainer_settings: TrainerSettings,
    *,
    encoder: ImageEncoder | None = None,
    feature_batch_size: int = 32,
) -> tuple[TrainedRun, TrainedRun | None]:
    """Train the held-out run and, with ``cfg.refit`` (frozen encoder only), the refit on all training spots.

    The refit trains a fresh module for the held-out run's best number of epochs, on training and validation
    spots together, and keeps its last epoch.
    """
    run = train_run(
        train_part, val_part, genes, cfg, trainer_settings, encoder=encoder, feature_batch_size=feature_batch_size
    )
    if not cfg.refit or run.validation is None:
        return run, None
    if encoder is not None:
        logger.info("`refit` is ignored with `finetune='lora'`: the weights of the best validation epoch are kept")
        return run, None
    n_epochs = run.best_epoch + 1
    logger.info("Refitting on all training slides for %d epochs (`refit=True`)", n_epochs)
    refit = train_run(
        [*train_part, *val_part],
        [],
        genes,
        replace(cfg, max_epochs=n_epochs),
        trainer_settings.in_folder("refit"),
        keep_last=True,
    )
    return run, refit


def training_record(
    slides: list[SlideInput],
    rows: list[np.ndarray],
    parts: tuple[Parts, Parts],
    cfg: HyperSTConfig,
    run: TrainedRun,
    refit: TrainedRun | None,
    *,
    cached: bool,
) -> TrainingRecord:
    """Record what the fit saw and decided; ``cached``: the slides hold cached features (frozen encoder)."""
    train_part, val_part = parts
    module = (refit or run).module
    geometry = geometry_from(cfg)
    val = run.validation
    val_pcc = None if val is None else gene_metrics(val.target, val.pred)["pearson"]
    if cached:
        every = [*train_part, *val_part]
        qc = reference_qc(module, slides, [s.spot[r, 0] for s, r in every], [s.niche[r, 0] for s, r in every])
    else:  # no cached features to summarise: the stain only
        qc = {"stain_od": {s.name: stain_od(s) for s in slides}}
    return TrainingRecord(
        slides=tuple(s.name for s in slides),
        validation_slides=tuple(sorted({s.name for s, _ in val_part} - {s.name for s, _ in train_part})),
        n_spots={s.name: int(len(r)) for s, r in zip(slides, rows, strict=True)},
        microns_per_pixel={s.name: float(s.layout.microns_per_pixel) for s in slides},
        technology=tuple(sorted({s.layout.technology for s in slides})),
        spot_side_um=cfg.spot_um,
        niche_side_um={
            s.name: cfg.niche_um
            if cfg.niche_um is not None
            else float(geometry.sides_px(s.layout)[1] * s.layout.microns_per_pixel)
            for s in slides
        },
        best_epoch=int(run.best_epoch),
        refit_epochs=None if refit is None else len(refit.history),
        refit_history=None if refit is None else refit.history,
        val_pcc=None if val_pcc is None else tuple(None if np.isnan(v) else float(v) for v in val_pcc),
        val_mean_pcc=None if val_pcc is None else float(np.nanmean(val_pcc)),
        calibration=None if val is None else calibration(val.pred, val.target, val.radius),
        qc=qc,
    )
