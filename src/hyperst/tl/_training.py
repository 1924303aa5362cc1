"""Training runs of ``hst.tl.fit``: one entry point for a frozen and a LoRA encoder, and what the fit records.

:func:`train_run` builds the datasets (cached features, or patches read on the fly for LoRA), a new module
standardised on the training spots, trains it (:func:`hyperst._train.train`) and predicts the validation
spots. :func:`train_and_refit` adds the refit on all training spots; :func:`training_record` turns the runs
into the model's :class:`~hyperst._records.TrainingRecord`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .._data._dataset import FeatureDataset, PatchDataset, ViewDataset, stacked
from .._data._store import RunningMoments, column_mean_std
from .._records import EncoderRecord, TrainingRecord
from .._settings import settings
from .._train import train
from ._evaluate import gene_pearson
from ._features import FeatureExtractor
from ._prepare import geometry_from
from ._readout import blend_held_out, blend_refit
from ._trust import _RADIUS_Q, _round, calibration, feature_distance, spot_radius, stain_od

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._config import HyperSTConfig
    from .._data._dataset import GeneArrays, Parts
    from .._train import TrainerSettings
    from ..nn import HyperSTModule, ImageEncoder
    from ._prepare import SlideInput

__all__ = ["TrainedRun", "Validation", "ValidationSummary", "train_and_refit", "train_run", "training_record"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validation:
    """The validation spots as the trained run sees them: ``(n, G)`` predictions, targets, ``(n,)`` radii."""

    pred: np.ndarray
    target: np.ndarray
    radius: np.ndarray | None

    def summary(self) -> ValidationSummary:
        """Return what the model keeps of the validation: per-gene PCC and the calibration."""
        return ValidationSummary(gene_pearson(self.target, self.pred), calibration(self.pred, self.target, self.radius))


@dataclass(frozen=True)
class ValidationSummary:
    """``(G,)`` validation PCC per gene and the calibration; the validation arrays are dropped before the refit."""

    pcc: np.ndarray
    calibration: dict[str, Any]


@dataclass(frozen=True)
class TrainedRun:
    """A trained module, its per-epoch history, the epoch kept, and its validation (``None`` without)."""

    module: HyperSTModule
    history: list[dict[str, float]]
    best_epoch: int
    validation: Validation | ValidationSummary | None


def _encoded(encoder: ImageEncoder, dataset: PatchDataset, *, batch_size: int, device: str) -> Iterator[tuple]:
    """``(n, F)`` spot and niche features of ``dataset``'s spots (its current views), a batch at a time, in eval mode.

    Only one batch of features is held at a time: a cohort's features are never stacked in memory.
    """
    from torch.utils.data import DataLoader

    encoder.eval().to(device)
    extract = FeatureExtractor(EncoderRecord(name=encoder.name, n_features=encoder.n_features), encoder, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=settings.num_workers)
    try:
        for spot_px, niche_px, *_ in loader:
            yield extract(spot_px.numpy()), extract(niche_px.numpy())
    finally:
        encoder.cpu()


def _new_module(stats: _Stats, n_features: int, n_genes: int, cfg: HyperSTConfig) -> HyperSTModule:
    """Build a module seeded by ``cfg.random_state`` and standardised with ``stats`` of the training spots."""
    import torch

    from ..nn import HyperSTModule

    torch.manual_seed(cfg.random_state)
    module = HyperSTModule(n_features, n_genes, cfg.module)
    module.set_input_stats(*(torch.from_numpy(a) for a in stats))
    return module


#: ``(F,)`` mean and standard deviation of the view-0 spot and niche features, ``(G,)`` mean target.
_Stats = tuple[np.ndarray, np.ndarray, np.ndarray]


def _feature_stats(data: FeatureDataset) -> _Stats:
    """Statistics of the training spots, streamed by blocks: the view-0 spot features, then the niche ones."""

    def features() -> Iterator[np.ndarray]:
        for k in range(2):
            yield from data.blocks(lambda i, k=k: data.features(i)[k])

    mean, std = column_mean_std(features)
    target, _ = column_mean_std(lambda: data.blocks(lambda i: data.genes(i)[2]), std=False)
    return mean, std, target


def _patch_stats(plain: PatchDataset, encoder: ImageEncoder, **encode: Any) -> _Stats:
    """Statistics of the training spots for LoRA (``plain``: view 0), from the encoder before training.

    The LoRA path reads patches, so there is no feature cache to read twice: the spot and niche features are
    encoded once, a batch at a time, and merged into running float64 moments (:class:`RunningMoments`).
    """
    moments = RunningMoments()
    for spot, niche in _encoded(encoder, plain, **encode):
        moments.add(spot)
        moments.add(niche)
    mean, std = moments.result()
    target, _ = column_mean_std(lambda: plain.blocks(lambda i: plain.genes(i)[2]), std=False)
    return mean, std, target


def _validate(module: HyperSTModule, val: ViewDataset, encoder: ImageEncoder | None, **encode: Any) -> Validation:
    """Predictions and embedding radii of the validation spots (view 0), by blocks of features.

    The blocks are read from the feature caches, or with a LoRA ``encoder`` encoded a batch at a time.
    """
    import torch

    blocks = val.blocks(val.features) if encoder is None else _encoded(encoder, val, **encode)
    radii = []

    def predicted() -> Iterator[np.ndarray]:
        for spot, niche in blocks:
            radii.append(spot_radius(module, spot, niche))
            with torch.inference_mode():
                block = module.predict(torch.from_numpy(spot), torch.from_numpy(niche)).numpy()
            yield block

    pred = stacked(predicted(), len(val))
    radius = None if radii[0] is None else np.concatenate(radii)
    return Validation(pred, val.target, radius)


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

    Without ``encoder``, on the slides' cached features (``genes[name].spot``, ``.niche``, read by rows); with a
    LoRA-adapted ``encoder``, on patches read on the fly, training the adapters too (in place).
    """
    seed = cfg.random_state
    val: ViewDataset | None
    encode = {"batch_size": feature_batch_size, "device": trainer_settings.device}
    if encoder is None:
        data = FeatureDataset(train_part, genes, augment=True, seed=seed)
        val = FeatureDataset(val_part, genes, augment=False, seed=seed) if val_part else None
        stats = _feature_stats(data)
        n_features = data.arrays[0].spot.shape[-1]
    else:
        geometry = geometry_from(cfg)
        data = PatchDataset(train_part, genes, geometry, n_views=cfg.views, seed=seed)
        val = PatchDataset(val_part, genes, geometry, n_views=1, seed=seed) if val_part else None
        stats = _patch_stats(PatchDataset(train_part, genes, geometry, n_views=1, seed=seed), encoder, **encode)
        n_features = encoder.n_features
        n_lora = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
        logger.info("Fine-tuning %s with LoRA: %d trainable encoder parameters", encoder.name, n_lora)
    if val is not None and len(val) < 2:
        val = None
    module = _new_module(stats, n_features, len(stats[2]), cfg)
    history, best_epoch = train(module, data, val, cfg, trainer_settings, encoder=encoder, keep_last=keep_last)
    validation = None if val is None else _validate(module, val, encoder, **encode)
    return TrainedRun(module, history, best_epoch, validation)


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
    if encoder is not None:
        if cfg.module.readout == "blend":
            logger.warning("`readout='blend'` needs cached features; with `finetune='lora'` the decoder is used alone")
        if cfg.refit and run.validation is not None:
            logger.info("`refit` is ignored with `finetune='lora'`: the weights of the best validation epoch are kept")
        return _summarised(run), None
    run, mix = blend_held_out(run, train_part, val_part, genes)
    run = _summarised(run)  # the refit trains without the validation arrays in memory
    if not cfg.refit or run.validation is None:
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
    if mix is not None:
        blend_refit(refit, mix, [*train_part, *val_part], genes)
    return run, refit


def _summarised(run: TrainedRun) -> TrainedRun:
    if not isinstance(run.validation, Validation):
        return run
    return replace(run, validation=run.validation.summary())


def _reference_qc(module: HyperSTModule, slides: list[SlideInput], data: FeatureDataset) -> dict[str, Any]:
    """:func:`~hyperst.tl._trust.reference_qc` of ``data``'s spots (view 0), streamed by blocks."""
    distance, radii = [], []
    for spot, niche in data.blocks(data.features):
        distance.append(feature_distance(module, spot))
        radii.append(spot_radius(module, spot, niche))
    ref: dict[str, Any] = {
        "stain_od": {s.name: stain_od(s) for s in slides},
        "feature_distance": _round(np.percentile(np.concatenate(distance), [5, 50, 95])),
    }
    if radii[0] is not None:
        ref["radius"] = _round(np.percentile(np.concatenate(radii), [*_RADIUS_Q[:1], 50, *_RADIUS_Q[1:]]))
    return ref


def training_record(
    slides: list[SlideInput],
    rows: list[np.ndarray],
    parts: tuple[Parts, Parts],
    cfg: HyperSTConfig,
    run: TrainedRun,
    refit: TrainedRun | None,
    *,
    arrays: GeneArrays | None,
) -> TrainingRecord:
    """Record what the fit saw and decided; ``arrays``: the slides' cached features (``None``: LoRA, none)."""
    train_part, val_part = parts
    module = (refit or run).module
    geometry = geometry_from(cfg)
    val = _summarised(run).validation
    val_pcc = None if val is None else val.pcc
    if arrays is not None:
        every = FeatureDataset([*train_part, *val_part], arrays, augment=False, seed=cfg.random_state)
        qc = _reference_qc(module, slides, every)
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
        calibration=None if val is None else val.calibration,
        qc=qc,
    )
