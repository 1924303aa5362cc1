"""``hst.tl.fit``: train HyperST on one or more slides."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from .._config import HyperSTConfig
from .._docs import doc_params
from .._model import HyperST
from .._train import TrainerSettings
from .._utils import kept_random_state
from .._validation import expected
from ._encoder import encoder_record, lora_encoder, make_extractor
from ._fit_setup import (
    checkpoint_folder,
    choose_genes,
    load_training_slides,
    prepare_cohort,
    split_slides,
    training_items,
    training_store,
)
from ._prepare import check_spots
from ._training import train_and_refit, training_record

if TYPE_CHECKING:
    import torch
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["fit"]

logger = logging.getLogger(__name__)


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
        A list trains on several slides; validation uses held-out slides. A slide of Visium HD bins or Xenium
        cells with no table of spots is summed into 56 µm pseudo-spots (:func:`hyperst.pp.pseudospots` at its
        defaults; call it first for another size), in a copy that shares the image.
    genes
        Number of genes to predict, chosen by the HMHVG rule on the training slides' raw counts, or a list
        of gene names.
    encoder
        Image encoder: any torchvision classification model by name (``"resnet50"``, ``"mobilenet_v2"``,
        ``"efficientnet_b0"``, ``"convnext_tiny"``…; :func:`hyperst.nn.build_encoder`), ``"timm:<name>"`` /
        ``"hf-hub:<repo>"`` (e.g. UNI, with the ``timm`` extra), ``"squidpy"`` (squidpy's hand-crafted
        features, weight-free) or any ``torch.nn.Module`` mapping ``(B, 3, 224, 224)`` images to ``(B, F)``
        features.
    weights
        Encoder weights: ``"DEFAULT"`` or another weights name (downloaded by torchvision/timm), ``None``
        (random) or a local state-dict file, whose sha256 the model records.
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
    The trained :class:`hyperst.HyperST`: what it saw and decided is ``model.training``
    (:class:`~hyperst._records.TrainingRecord`), its encoder ``model.encoder``
    (:class:`~hyperst._records.EncoderRecord`). With ``finetune="lora"``, ``model.encoder.state`` holds the whole
    encoder (backbone and adapters) and ``model.encoder.lora`` the adapter settings, so that predictions rebuild it.
    The caller's random generators (Python's, NumPy's, torch's) are left as they were.

    Raises
    ------
    ValueError
        If ``finetune`` is not ``None`` or ``"lora"``, LoRA is asked of ``encoder="squidpy"`` or of more
        blocks than the encoder has, or a slide is given twice (the same object, or the same ``.zarr`` store).

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
    run_on = TrainerSettings(accelerator, devices, num_nodes, strategy, precision)
    sdata = training_items(sdata)  # a slide given twice is refused here, before the encoder is built
    with kept_random_state(), training_store(cache if finetune is None else False) as store:
        lora = None
        if finetune == "lora":  # built first: a `lora_blocks` too large for the backbone fails before any work
            torch.manual_seed(cfg.random_state)  # random backbone weights (`weights=None`) and adapters are seeded
            lora = lora_encoder(encoder, weights=weights, config=cfg)
        slides = load_training_slides(
            sdata,
            layer=layer,
            table_key=table_key,
            image_key=image_key,
            shapes_key=shapes_key,
            microns_per_pixel=microns_per_pixel,
        )
        names = choose_genes(slides, genes, layer)
        logger.info("Training on %d slide(s), %d genes", len(slides), len(names))
        extractor = None
        if lora is None:
            torch.manual_seed(cfg.random_state)  # a randomly initialised encoder (`weights=None`) is seeded too
            extractor = make_extractor(encoder, weights=weights, device=run_on.device)
        n_features = lora.n_features if lora is not None else extractor.n_features
        arrays, rows = prepare_cohort(
            slides, names, cfg, extractor, layer=layer, cache=cache, batch_size=feature_batch_size, store=store
        )
        check_spots(slides, rows)
        cfg = cfg.with_encoder_width(n_features)
        parts = split_slides(slides, rows, cfg)
        ckpt = checkpoint_folder(checkpoint_dir, resume, cfg, names, slides, n_features)
        if ckpt is not None:
            run_on = replace(run_on, checkpoint_dir=ckpt / "select", resume=resume)
        run, refit = train_and_refit(*parts, arrays, cfg, run_on, encoder=lora, feature_batch_size=feature_batch_size)
        training = training_record(slides, rows, parts, cfg, run, refit, arrays=arrays if lora is None else None)
    return HyperST(
        module=(refit or run).module,
        config=cfg,
        genes=names,
        encoder=encoder_record(extractor, lora, encoder=encoder, weights=weights),
        training=training,
        history=run.history,
    )
