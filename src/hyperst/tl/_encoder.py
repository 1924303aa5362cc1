"""The image encoder of a model, in one place: built for a fit, described by its record, rebuilt for predict.

:func:`make_extractor` builds a frozen encoder for cached features and :func:`lora_encoder` one with LoRA
adapters (the adapters are trained, as in the authors' code: one encoder shared by spot and niche patches,
LoRA on its last blocks, every other weight frozen). :func:`encoder_record` describes either for the model
file, and :func:`extractor_for` is the one way back from a :class:`~hyperst._records.EncoderRecord` to
features.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import TYPE_CHECKING

from .._records import HANDCRAFTED, EncoderRecord
from .._utils import file_sha256, state_fingerprint
from .._validation import expected
from ._features import FeatureExtractor

if TYPE_CHECKING:
    import torch

    from .._config import HyperSTConfig
    from ..nn import ImageEncoder

__all__ = ["encoder_record", "extractor_for", "lora_encoder", "make_extractor"]

#: Cache fingerprint of the hand-crafted features (bump when they change).
_HANDCRAFTED_FINGERPRINT = "squidpy-v1"
#: The settings of :func:`hyperst.nn.apply_lora` that rebuild the adapters (besides the target list).
_LORA_KEYS = ("last_n_blocks", "r", "alpha", "dropout")


def _handcrafted() -> FeatureExtractor:
    from .._data._handcrafted import handcrafted_feature_names

    n = len(handcrafted_feature_names())
    return FeatureExtractor(EncoderRecord(name=HANDCRAFTED, n_features=n, fingerprint=_HANDCRAFTED_FINGERPRINT))


def _described(module: ImageEncoder, weights: str | os.PathLike | None) -> EncoderRecord:
    spec = module.spec.to_dict()
    digest = file_sha256(weights) if weights is not None and os.path.isfile(weights) else None
    return EncoderRecord.from_dict(
        {**spec, "weights_sha256": digest, "fingerprint": state_fingerprint(module.state_dict())}
    )


def make_extractor(
    encoder: str | torch.nn.Module, *, weights: str | os.PathLike | None = "DEFAULT", device: str = "cpu"
) -> FeatureExtractor:
    """Build the frozen feature extractor of ``encoder`` (a registry name, ``"squidpy"`` or an ``nn.Module``)."""
    if isinstance(encoder, str) and encoder == HANDCRAFTED:
        return _handcrafted()
    from ..nn import build_encoder

    module = build_encoder(encoder, weights=weights)
    module.freeze()
    module.to(device)
    return FeatureExtractor(_described(module, weights), module, device)


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
    import torch

    from ..nn import ImageEncoder, apply_lora, build_encoder, count_blocks

    if isinstance(encoder, str) and encoder == HANDCRAFTED:
        what = "a neural network with `finetune='lora'` (hand-crafted features have no weights to fine-tune)"
        msg = f"{expected('encoder', what, encoder)} Use e.g. `encoder='resnet50'`, or `finetune=None`."
        raise ValueError(msg)
    if isinstance(encoder, torch.nn.Module):
        if isinstance(encoder, ImageEncoder) and encoder.lora_config is not None:
            what = "an encoder without LoRA adapters with `finetune='lora'`"
            raise ValueError(expected("encoder", what, encoder.lora_config))
        encoder = copy.deepcopy(encoder)
    module = build_encoder(encoder, weights=weights)
    n_blocks = count_blocks(module)
    if config.lora_blocks > n_blocks:
        what = f"at most {n_blocks}, the number of blocks of `{module.name}`"
        msg = (
            f"{expected('lora_blocks', what, config.lora_blocks)} The default 11 is the paper's setting for UNI's "
            f"24 blocks; pass a smaller `lora_blocks=` (e.g. `lora_blocks={max(1, n_blocks // 2)}`)."
        )
        raise ValueError(msg)
    return apply_lora(
        module, last_n_blocks=config.lora_blocks, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout
    )


def encoder_record(
    extractor: FeatureExtractor | None,
    lora: ImageEncoder | None,
    *,
    encoder: str | torch.nn.Module,
    weights: str | os.PathLike | None,
) -> EncoderRecord:
    """Describe the encoder a fit used, with the weights that must be stored to rebuild it.

    Weights are stored when the name and ``weights`` alone cannot rebuild them: random, a local file, a
    user's module, or fine-tuned adapters. The user's module itself is kept (not saved) for custom encoders.
    """
    user_module = encoder if not isinstance(encoder, str) else None
    if lora is not None:
        state = {k: v.detach().cpu().clone() for k, v in lora.state_dict().items()}
        record = _described(lora, weights)
        return replace(record, lora=dict(lora.lora_config), state=state, module=user_module)
    record = extractor.record
    store = extractor.module is not None and (user_module is not None or weights is None or os.path.exists(weights))
    state = {k: v.detach().cpu().clone() for k, v in extractor.module.state_dict().items()} if store else None
    return replace(record, state=state, module=user_module)


def _rebuild_lora(record: EncoderRecord) -> ImageEncoder:
    from ..nn import apply_lora, build_encoder

    if record.state is None:
        msg = (
            f"This model's `{record.name}` encoder was fine-tuned with LoRA, but its weights are not stored with it. "
            "Load the model from a folder that holds `encoder.safetensors`."
        )
        raise ValueError(msg)
    source = copy.deepcopy(record.module) if record.module is not None else record.name
    encoder = build_encoder(source, weights=None)
    apply_lora(encoder, **{k: record.lora[k] for k in _LORA_KEYS})
    if list(encoder.lora_config["target_modules"]) != list(record.lora["target_modules"]):
        msg = (
            f"The LoRA layers of the rebuilt `{record.name}` ({encoder.lora_config['target_modules'][:3]}...) "
            f"differ from the stored ones ({list(record.lora['target_modules'])[:3]}...): the backbone's "
            "architecture changed."
        )
        raise ValueError(msg)
    encoder.load_state_dict(record.state)
    return encoder.freeze()


def _rebuild(record: EncoderRecord) -> ImageEncoder:
    from ..nn import build_encoder

    if record.module is not None:
        module = build_encoder(record.module)
    elif record.state is not None:
        module = build_encoder(record.name, weights=None)
    elif record.weights is None:
        msg = (
            f"This model's `{record.name}` encoder had random weights that are not stored with it, so its "
            "features cannot be reproduced. Load the model from a folder that holds `encoder.safetensors`, or "
            "refit it."
        )
        raise ValueError(msg)
    else:
        module = build_encoder(record.name, weights=record.weights)
    if record.state is not None:
        module.load_state_dict(record.state)
    return module.freeze()


def extractor_for(record: EncoderRecord, n_features: int) -> FeatureExtractor:
    """Rebuild the frozen feature extractor a model's predictions read, from its record (on the GPU if present).

    ``n_features`` is the width the model's module reads; the rebuilt encoder must give it.

    Raises
    ------
    ValueError
        If the encoder cannot be rebuilt (a custom module not passed to :meth:`hyperst.HyperST.load`, or
        weights that were not stored), or it gives another feature width than the model reads.
    """
    if record.handcrafted:
        extractor = _handcrafted()
        _check_width(extractor.n_features, n_features)
        return extractor
    if record.custom and record.module is None:  # stored weights alone cannot rebuild a user's architecture
        msg = (
            f"This model was trained with a custom encoder module (`{record.name}`): pass it with "
            "`HyperST.load(path, encoder=...)`."
        )
        raise ValueError(msg)
    module = _rebuild_lora(record) if record.lora is not None else _rebuild(record)
    _check_width(module.n_features, n_features)  # before the move: a user's module is not left on the GPU
    fingerprint = state_fingerprint(module.state_dict())
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # as `fit` extracts: on the GPU when there is one
    return FeatureExtractor(replace(record, fingerprint=fingerprint), module.to(device), device)


def _check_width(width: int, n_features: int) -> None:
    if width != n_features:
        msg = (
            f"The encoder gives {width} features but the model reads {n_features}: the encoder does not match "
            "the one the model was trained with. Load the model with its own encoder "
            "(`HyperST.load(path, encoder=...)` for a custom one), or refit it."
        )
        raise ValueError(msg)
