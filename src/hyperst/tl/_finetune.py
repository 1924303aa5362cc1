"""``hst.tl.fit(..., finetune="lora")``: train HyperST together with LoRA adapters of the image encoder.

The frozen path encodes every patch once and caches the features; here the encoder changes while it trains,
so spot and niche patches are cropped from the slides on the fly (:class:`PatchDataset`) and encoded in each
training step. As in the authors' code (HYPERST.md §1.3, §1.11): one encoder shared by spot and niche patches,
LoRA (peft) on its last blocks, every other encoder weight frozen, and per spot and epoch one random dihedral
view, the same for the spot and its niche; no augmentation in validation.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._data import PatchReader, dihedral
from .._settings import settings
from .._train import train
from ._features import FeatureExtractor, _state_fingerprint
from ._prepare import geometry_from

if TYPE_CHECKING:
    import os

    from .._config import HyperSTConfig
    from ..nn import HyperSTModule, ImageEncoder
    from ._prepare import SlideInput

__all__ = ["PatchDataset", "fit_lora", "lora_encoder", "lora_extractor"]

logger = logging.getLogger(__name__)

#: The settings of :func:`hyperst.nn.apply_lora` kept in ``encoder.lora_config`` (besides the target list).
_LORA_KEYS = ("last_n_blocks", "r", "alpha", "dropout")


def lora_encoder(
    encoder: str | torch.nn.Module, *, weights: str | os.PathLike | None, config: HyperSTConfig
) -> ImageEncoder:
    """Build ``encoder`` and add LoRA adapters to its last ``config.lora_blocks`` blocks.

    A module passed by the user is copied first, so that it is never modified.

    Raises
    ------
    ValueError
        If ``encoder`` is ``"squidpy"`` or ``config.lora_blocks`` exceeds the backbone's blocks.
    TypeError
        If the backbone is not an architecture LoRA knows (:mod:`hyperst.nn._lora`).
    """
    from ..nn import ImageEncoder, apply_lora, build_encoder
    from ..nn._lora import _blocks

    if isinstance(encoder, str) and encoder == "squidpy":
        msg = (
            "Expected a neural `encoder` with `finetune='lora'`, found `'squidpy'` (hand-crafted features have "
            "no weights to fine-tune). Use e.g. `encoder='resnet50'`, or `finetune=None`."
        )
        raise ValueError(msg)
    if isinstance(encoder, torch.nn.Module):
        if isinstance(encoder, ImageEncoder) and encoder.lora_config is not None:
            msg = "Expected `encoder` to have no LoRA adapters yet with `finetune='lora'`; pass the plain encoder."
            raise ValueError(msg)
        encoder = copy.deepcopy(encoder)
    module = build_encoder(encoder, weights=weights)
    n_blocks = len(_blocks(module.backbone)[0])
    if config.lora_blocks > n_blocks:
        msg = (
            f"Expected `lora_blocks` to be at most {n_blocks}, the number of blocks of `{module.name}`, found "
            f"`{config.lora_blocks}`. The default 11 is the paper's setting for UNI's 24 blocks; pass a smaller "
            f"`lora_blocks=` (e.g. `lora_blocks={max(1, n_blocks // 2)}`)."
        )
        raise ValueError(msg)
    return apply_lora(
        module, last_n_blocks=config.lora_blocks, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout
    )


def lora_extractor(
    spec: dict[str, Any], state: dict[str, torch.Tensor] | None, module: torch.nn.Module | None = None
) -> FeatureExtractor:
    """Rebuild the fine-tuned encoder of a model: architecture, adapters, then the stored weights.

    Parameters
    ----------
    spec
        The model's encoder spec, with its ``"lora"`` settings.
    state
        The model's ``encoder_state`` (backbone and adapter weights).
    module
        The user's encoder module, for custom architectures (copied, never modified).

    Returns
    -------
    A frozen extractor on CPU.
    """
    from ..nn import apply_lora, build_encoder

    name = spec["name"]
    if state is None:
        msg = (
            f"This model's `{name}` encoder was fine-tuned with LoRA, but its weights are not stored with it "
            "(`encoder_state` is None). Load the model from a folder that holds `encoder.safetensors`."
        )
        raise ValueError(msg)
    lora = spec["lora"]
    encoder = build_encoder(copy.deepcopy(module) if module is not None else name, weights=None)
    apply_lora(encoder, **{k: lora[k] for k in _LORA_KEYS})
    if list(encoder.lora_config["target_modules"]) != list(lora["target_modules"]):
        msg = (
            f"The LoRA layers of the rebuilt `{name}` ({encoder.lora_config['target_modules'][:3]}...) differ from "
            f"the stored ones ({list(lora['target_modules'])[:3]}...): the backbone's architecture changed."
        )
        raise ValueError(msg)
    encoder.load_state_dict(state)
    encoder.freeze()
    return FeatureExtractor(
        encoder.name, dict(spec), encoder.n_features, _state_fingerprint(encoder), False, encoder, "cpu"
    )


class PatchDataset(Dataset):
    """Spot and niche patches cropped from the slides on the fly, with the spots' gene inputs and targets.

    Items are ``(spot, niche, spot_gene, niche_gene, target)``: two ``(3, P, P)`` uint8 patches and three
    ``(G,)`` float32 vectors. With ``augment``, every spot gets one random dihedral view per epoch
    (:meth:`set_epoch`), applied to both its patches; otherwise view 0 (the identity).

    Parameters
    ----------
    parts
        ``(slide, rows)`` pairs: the spots (table row positions) taken from each slide.
    genes_data
        Per slide name, the ``(spot gene, niche gene, target)`` arrays of all its spots
        (:func:`~hyperst.tl._prepare.slide_gene_arrays`).
    config
        Patch geometry and the number of views to draw from.
    augment
        Draw random views (training) or not (validation, features).
    """

    def __init__(
        self,
        parts: list[tuple[SlideInput, np.ndarray]],
        genes_data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        config: HyperSTConfig,
        *,
        augment: bool,
    ) -> None:
        geometry = geometry_from(config)
        self.readers = [PatchReader(s.sdata, s.layout, geometry) for s, _ in parts]
        self.slide = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, (_, r) in enumerate(parts)])
        self.row = np.concatenate([np.asarray(r, dtype=np.int64) for _, r in parts])
        self.spot_gene, self.niche_gene, self.target = (
            np.concatenate([genes_data[s.name][k][r] for s, r in parts]) for k in range(3)
        )
        self.n_views = config.views if augment else 1
        self.seed = config.random_state
        self.views = np.zeros(len(self.row), dtype=np.int64)
        self.set_epoch(0)  # the loader may fetch the first batch before the epoch-start hook runs

    def set_epoch(self, epoch: int) -> None:
        """Draw the dihedral view of every spot for ``epoch`` (reproducibly from the seed)."""
        if self.n_views > 1:
            self.views = np.random.default_rng((self.seed, epoch)).integers(0, self.n_views, len(self))

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """Read the patches of a whole batch with one crop call per slide (the DataLoader's batched path)."""
        idx = np.asarray(indices, dtype=np.int64)
        spot = np.empty((len(idx), 3, *self._patch_shape()), dtype=np.uint8)
        niche = np.empty_like(spot)
        for s in np.unique(self.slide[idx]):
            mine = np.flatnonzero(self.slide[idx] == s)
            spot[mine], niche[mine] = self.readers[s].read(self.row[idx[mine]])
        out = []
        for j, i in enumerate(idx):
            v = int(self.views[i])
            out.append(
                (
                    torch.from_numpy(dihedral(spot[j], v)),
                    torch.from_numpy(dihedral(niche[j], v)),
                    torch.from_numpy(self.spot_gene[i]),
                    torch.from_numpy(self.niche_gene[i]),
                    torch.from_numpy(self.target[i]),
                )
            )
        return out

    def _patch_shape(self) -> tuple[int, int]:
        out = self.readers[0].geometry.out_px
        return out, out


def _encode(
    encoder: ImageEncoder, dataset: PatchDataset, *, batch_size: int, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, F)`` spot and niche features of ``dataset``'s spots (its current views), in eval mode."""
    encoder.eval().to(device)
    extract = FeatureExtractor(encoder.name, {}, encoder.n_features, "", False, encoder, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=settings.num_workers)
    spot, niche = [], []
    for spot_px, niche_px, *_ in loader:
        spot.append(extract(spot_px.numpy()))
        niche.append(extract(niche_px.numpy()))
    encoder.cpu()
    return np.concatenate(spot), np.concatenate(niche)


def fit_lora(
    encoder: ImageEncoder,
    train_part: list[tuple[SlideInput, np.ndarray]],
    val_part: list[tuple[SlideInput, np.ndarray]] | None,
    genes_data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    config: HyperSTConfig,
    *,
    n_genes: int,
    feature_batch_size: int,
    device: str,
    **trainer: Any,
) -> tuple[HyperSTModule, list[dict[str, float]], int, tuple[np.ndarray, np.ndarray] | None]:
    """Train a new :class:`HyperSTModule` and ``encoder``'s adapters (in place) on patches read on the fly.

    The module's input standardisation comes from the encoder's features of the training patches (view 0)
    before training, as in the frozen path.

    Returns
    -------
    The module, the per-epoch history, the best epoch, and the validation predictions and targets (or
    ``None`` without validation spots), computed with the trained encoder.
    """
    from ..nn import HyperSTModule

    train_ds = PatchDataset(train_part, genes_data, config, augment=True)
    val_ds = PatchDataset(val_part, genes_data, config, augment=False) if val_part else None
    if val_ds is not None and len(val_ds) < 2:
        val_ds = None
    stats_ds = PatchDataset(train_part, genes_data, config, augment=False)
    spot, niche = _encode(encoder, stats_ds, batch_size=feature_batch_size, device=device)
    feats = np.concatenate([spot, niche])
    torch.manual_seed(config.random_state)
    module = HyperSTModule(encoder.n_features, n_genes, config.module)
    module.set_input_stats(
        torch.from_numpy(feats.mean(0)), torch.from_numpy(feats.std(0)), torch.from_numpy(train_ds.target.mean(0))
    )
    n_lora = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    logger.info("Fine-tuning %s with LoRA: %d trainable encoder parameters", encoder.name, n_lora)
    history, best_epoch = train(module, train_ds, val_ds, config, encoder=encoder, **trainer)
    if val_ds is None:
        return module, history, best_epoch, None
    spot, niche = _encode(encoder, val_ds, batch_size=feature_batch_size, device=device)
    with torch.inference_mode():
        pred = module.predict(torch.from_numpy(spot), torch.from_numpy(niche)).numpy()
    return module, history, best_epoch, (pred, val_ds.target)
