"""``hst.tl.fit``: train HyperST on one or more slides."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._config import HyperSTConfig
from .._docs import doc_params
from .._model import HyperST
from .._train import TrainArrays, train
from .._validation import expected
from ._evaluate import gene_metrics
from ._fit_setup import checkpoint_folder, choose_genes, split_slides
from ._prepare import SlideInput, check_counts, check_spots, load_slide, slide_features, slide_gene_arrays
from ._trust import calibration, reference_qc, spot_radius, stain_od

if TYPE_CHECKING:
    import torch
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["fit"]

logger = logging.getLogger(__name__)


def _as_list(sdata: Any) -> list[Any]:
    from anndata import AnnData
    from spatialdata import SpatialData

    if isinstance(sdata, SpatialData | AnnData):
        return [sdata]
    if isinstance(sdata, Sequence) and not isinstance(sdata, str) and len(sdata) > 0:
        return list(sdata)
    msg = f"Expected `sdata` to be a SpatialData, an AnnData or a non-empty list of them, found `{sdata!r}`."
    raise TypeError(msg)


def _arrays(parts: list[tuple[SlideInput, np.ndarray]], genes_data: dict[str, tuple]) -> TrainArrays:
    def cat(key: int | str) -> np.ndarray:
        out = []
        for s, r in parts:
            src = getattr(s, key) if isinstance(key, str) else genes_data[s.name][key]
            out.append(src[r])
        return np.concatenate(out)

    return TrainArrays(spot=cat("spot"), niche=cat("niche"), spot_gene=cat(0), niche_gene=cat(1), target=cat(2))


def _fit_frozen(
    train_part: list[tuple[SlideInput, np.ndarray]],
    val_part: list[tuple[SlideInput, np.ndarray]],
    genes_data: dict[str, tuple],
    cfg: HyperSTConfig,
    n_features: int,
    *,
    keep_last: bool = False,
    **trainer: Any,
) -> tuple[Any, list[dict[str, float]], int, tuple[np.ndarray, ...] | None]:
    """Train a new module on the cached features.

    Returns the module, the history, the best epoch and, with validation slides, their predictions, targets and
    embedding radii.
    """
    import torch

    from ..nn import HyperSTModule

    train_arrays = _arrays(train_part, genes_data)
    val_arrays = _arrays(val_part, genes_data) if val_part and sum(len(r) for _, r in val_part) > 1 else None
    torch.manual_seed(cfg.random_state)
    module = HyperSTModule(n_features, train_arrays.target.shape[1], cfg.module)
    feats = np.concatenate([train_arrays.spot[:, 0], train_arrays.niche[:, 0]])
    module.set_input_stats(
        torch.from_numpy(feats.mean(0)), torch.from_numpy(feats.std(0)), torch.from_numpy(train_arrays.target.mean(0))
    )
    history, best_epoch = train(module, train_arrays, val_arrays, cfg, keep_last=keep_last, **trainer)
    if val_arrays is None:
        return module, history, best_epoch, None
    with torch.inference_mode():
        pred = module.predict(torch.from_numpy(val_arrays.spot[:, 0]), torch.from_numpy(val_arrays.niche[:, 0]))
    radius = spot_radius(module, val_arrays.spot[:, 0], val_arrays.niche[:, 0])
    return module, history, best_epoch, (pred.numpy(), val_arrays.target, radius)


@doc_params
def fit(
    sdata: SpatialData | AnnData | Sequence[SpatialData | AnnData],
    *,
    genes: int | Sequence[str] = 200,
    encoder: str | torch.nn.Module = "resnet50",
    weights: str | os.PathLike | None = "DEFAULT",
    finetune: Literal["lora"] | None = None,
    layer: str | None = None,
    table_key: str | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    microns_per_pixel: float | None = None,
    config: HyperSTConfig | None = None,
    cache: bool | str | os.PathLike = True,
    feature_batch_size: int = 32,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    **kwargs: Any,
) -> HyperST:
    """Train a HyperST model on one or more slides with raw counts.

    Spot and niche patches are encoded by a frozen image encoder, with the features of their 8 dihedral views
    computed once and cached (or, with ``finetune="lora"``, by an encoder whose last blocks are fine-tuned with
    LoRA on patches cropped on the fly); the four streams (spot/niche x image/gene) are aligned in the Lorentz model of
    hyperbolic space (contrastive and entailment-cone losses) while a decoder learns expression from the
    spot + niche image features. Slides are never modified.

    Parameters
    ----------
    {sdata}
        A list trains on several slides; validation uses held-out slides.
    genes
        Number of genes to predict, chosen by the HMHVG rule on the training slides' raw counts, or a list
        of gene names.
    encoder
        Image encoder: a torchvision backbone (``"resnet18"``, ``"resnet50"``, ``"densenet121"``,
        ``"vit_b_16"``), ``"timm:<name>"`` / ``"hf-hub:<repo>"`` (e.g. UNI, with the ``timm`` extra),
        ``"squidpy"`` (squidpy's hand-crafted features, weight-free) or any ``torch.nn.Module`` mapping
        ``(B, 3, 224, 224)`` images to ``(B, F)`` features.
    weights
        Encoder weights: ``"DEFAULT"`` (downloaded by torchvision/timm), ``None`` (random) or a local file.
    finetune
        ``None`` keeps the encoder frozen (cached features); ``"lora"`` trains LoRA adapters on its last
        ``lora_blocks`` blocks (a :class:`hyperst.HyperSTConfig` field, default 11 as for UNI's 24 blocks;
        ``resnet18`` has only 8 blocks, so lower it there), with ``lora_r``, ``lora_alpha`` and
        ``lora_dropout``. Patches are then cropped and encoded in every step: use a GPU.
    layer
        Layer of the tables holding raw counts (``None``: ``X``).
    {table_key}
    {image_key}
    {shapes_key}
    microns_per_pixel
        Pixel size of the images; derived from the spot diameter when ``None``.
    config
        A :class:`hyperst.HyperSTConfig`; ``kwargs`` override its fields.
    cache
        Feature cache of the frozen encoder: ``True`` (under ``hyperst.settings.cache_dir``), a folder, or
        ``False``; unused with ``finetune="lora"``.
    feature_batch_size
        Spots per batch when computing features (with ``finetune="lora"``: the standardisation and validation
        passes).
    accelerator
        Passed to :class:`lightning.pytorch.Trainer` (``"auto"``: GPU if present, else CPU).
    devices
        Passed to the Trainer.
    num_nodes
        Passed to the Trainer.
    strategy
        Passed to the Trainer (e.g. ``"ddp"``).
    precision
        Passed to the Trainer; ``None``: 16-bit mixed on GPU, 32-bit on CPU.
    checkpoint_dir
        Folder for training checkpoints, rewritten after every epoch (one sub-folder per training run:
        ``select`` with validation, ``refit``). Nothing is written there without it.
    resume
        Continue an interrupted fit from ``checkpoint_dir``: finished runs are reused and an interrupted one
        continues from its last epoch. The data, genes and settings must be those of the interrupted call
        (checked against ``checkpoint_dir/fit.json``). Batches after the restart are shuffled afresh, so the
        weights are close to, not equal to, those of an uninterrupted fit.
    **kwargs
        Fields of :class:`hyperst.HyperSTConfig` (``max_epochs``, ``lr``, ``views``, ``target``,
        ``random_state``, ``lora_blocks``…) or of :class:`hyperst.nn.ModuleConfig` (``embed_dim``, ``geometry``,
        ``entailment``…).

    Returns
    -------
    The trained :class:`hyperst.HyperST`. With ``finetune="lora"``, its ``encoder_state`` holds the whole
    encoder (backbone and adapters) and ``encoder["lora"]`` the adapter settings, so that predictions rebuild it.

    Raises
    ------
    ValueError
        If ``finetune`` is not ``None`` or ``"lora"``, or LoRA is asked of ``encoder="squidpy"`` or of more
        blocks than the encoder has.

    Examples
    --------
    >>> import hyperst as hst
    >>> slides = hst.datasets.synthetic(n_slides=3, n_spots=300)
    >>> model = hst.tl.fit(slides, genes=50, encoder="squidpy", max_epochs=5)  # doctest: +SKIP
    """
    import torch

    cfg = HyperSTConfig.build(config, **kwargs)
    if finetune not in (None, "lora"):
        raise ValueError(expected("finetune", "None or 'lora'", finetune))
    lora = None
    if finetune == "lora":  # built first: a `lora_blocks` too large for the backbone fails before any work
        from ._finetune import lora_encoder

        torch.manual_seed(cfg.random_state)  # random backbone weights (`weights=None`) and adapters are seeded
        lora = lora_encoder(encoder, weights=weights, config=cfg)
    inputs = _as_list(sdata)
    slides = []
    for i, data in enumerate(inputs):
        slide = load_slide(
            data, table_key=table_key, image_key=image_key, shapes_key=shapes_key, microns_per_pixel=microns_per_pixel
        )
        if any(s.name == slide.name for s in slides):
            slide.name = f"{slide.name}_{i}"
        check_counts(slide, layer)
        slides.append(slide)
    names = choose_genes(slides, genes, layer)
    logger.info("Training on %d slide(s), %d genes", len(slides), len(names))

    from ..pp import niche_graph
    from ._features import make_extractor

    device = "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"
    extractor = None
    if lora is None:
        torch.manual_seed(cfg.random_state)  # a randomly initialised encoder (`weights=None`) is seeded too
        extractor = make_extractor(encoder, weights=weights, device=device)
    n_features = lora.n_features if lora is not None else extractor.n_features
    genes_data, rows = {}, []
    for s in slides:
        conn, _ = niche_graph(s.sdata, table_key=s.layout.elements.table_key, n_rings=cfg.n_rings, inplace=False)
        genes_data[s.name] = slide_gene_arrays(s, names, cfg, layer=layer, connectivities=conn)
        keep = np.flatnonzero(genes_data[s.name][0].sum(1) > 0)  # spots with no count of any model gene
        if len(keep) < len(s.layout.centres_px):
            logger.info(
                "Slide `%s`: %d spots without counts of the model genes are not used",
                s.name,
                len(s.layout.centres_px) - len(keep),
            )
        rows.append(keep)
        if extractor is not None:
            slide_features(s, extractor, cfg, views=cfg.views, batch_size=feature_batch_size, cache=cache)
    check_spots(slides, rows)
    cfg = cfg.with_encoder_width(n_features)
    train_part, val_part = split_slides(slides, rows, cfg)
    trainer = {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "precision": precision,
    }
    ckpt = checkpoint_folder(checkpoint_dir, resume, cfg, names, slides, n_features)
    if ckpt is not None:
        trainer |= {"checkpoint_dir": ckpt / "select", "resume": resume}
    refit_history: list[dict[str, float]] | None = None
    if lora is not None:
        from ._finetune import fit_lora

        module, history, best_epoch, val = fit_lora(
            lora,
            train_part,
            val_part,
            genes_data,
            cfg,
            n_genes=len(names),
            feature_batch_size=feature_batch_size,
            device=device,
            **trainer,
        )
        if cfg.refit:
            logger.info("`refit` is ignored with `finetune='lora'`: the weights of the best validation epoch are kept")
    else:
        module, history, best_epoch, val = _fit_frozen(train_part, val_part, genes_data, cfg, n_features, **trainer)
        if cfg.refit and val is not None:
            n_epochs = best_epoch + 1
            logger.info("Refitting on all %d training slide(s) for %d epochs (`refit=True`)", len(slides), n_epochs)
            if ckpt is not None:
                trainer["checkpoint_dir"] = ckpt / "refit"
            module, refit_history, _, _ = _fit_frozen(
                train_part + val_part,
                [],
                genes_data,
                replace(cfg, max_epochs=n_epochs),
                n_features,
                keep_last=True,
                **trainer,
            )
    val_pcc = None if val is None else gene_metrics(val[1], val[0])["pearson"]
    if lora is not None:
        spec = {**lora.spec.to_dict(), "lora": lora.lora_config}
        encoder_state = {k: v.detach().cpu().clone() for k, v in lora.state_dict().items()}
    else:
        spec = extractor.spec
        store_encoder = extractor.module is not None and (
            not isinstance(encoder, str) or weights is None or os.path.exists(str(weights))
        )
        encoder_state = (
            {k: v.detach().cpu().clone() for k, v in extractor.module.state_dict().items()} if store_encoder else None
        )
    training = {
        "slides": [s.name for s in slides],
        "validation_slides": sorted({s.name for s, _ in val_part} - {s.name for s, _ in train_part}),
        "n_spots": {s.name: int(len(r)) for s, r in zip(slides, rows, strict=True)},
        "microns_per_pixel": {s.name: float(s.layout.microns_per_pixel) for s in slides},
        "technology": sorted({s.layout.technology for s in slides}),
        "spot_side_um": cfg.spot_um,
        "niche_side_um": {
            s.name: float(
                2 * (cfg.n_rings * s.layout.grid.pitch + s.layout.spot_diameter_px / 2) * s.layout.microns_per_pixel
            )
            if cfg.niche_um is None
            else cfg.niche_um
            for s in slides
        },
        "best_epoch": int(best_epoch),
        "refit_epochs": None if refit_history is None else len(refit_history),
        "refit_history": refit_history,
        "val_pcc": None if val_pcc is None else [None if np.isnan(v) else float(v) for v in val_pcc],
        "val_mean_pcc": None if val_pcc is None else float(np.nanmean(val_pcc)),
    }
    if val is not None:  # split-conformal calibration on the held-out run's residuals (docs/trust.md)
        training["calibration"] = calibration(val[0], val[1], val[2] if len(val) > 2 else None)
    if lora is None:
        parts = train_part + val_part
        training["qc"] = reference_qc(
            module, slides, [s.spot[r, 0] for s, r in parts], [s.niche[r, 0] for s, r in parts]
        )
    else:  # no cached features to summarise: the stain only
        training["qc"] = {"stain_od": {s.name: stain_od(s) for s in slides}}
    return HyperST(
        module=module,
        config=cfg,
        genes=names,
        encoder=spec,
        training=training,
        history=history,
        encoder_state=encoder_state,
        encoder_module=encoder if not isinstance(encoder, str) else None,
    )
