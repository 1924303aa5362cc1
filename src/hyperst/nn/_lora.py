"""LoRA fine-tuning of the last blocks of an :class:`~hyperst.nn.ImageEncoder`, through peft.

HyperST adapts UNI with LoRA on ``blocks.{i}.attn.qkv`` of the last 11 of its 24 blocks (rank 8, alpha 16,
dropout 0.1, no bias) and freezes every other weight. The same recipe is applied to the other backbones:

- timm vision transformers: ``blocks.{i}.attn.qkv``;
- torchvision ``vit_b_16``: the two MLP linears ``mlp.0`` and ``mlp.3`` of the last ``encoder.layers``
  (its attention is an :class:`torch.nn.MultiheadAttention`, whose fused in-projection is a bare parameter,
  and whose ``out_proj`` weight is read directly, so LoRA on it would do nothing);
- torchvision ResNets: every convolution of the last basic or bottleneck blocks (downsampling included);
- torchvision DenseNets: both convolutions of the last dense layers.

LoRA's ``B`` matrices start at zero, so the adapted encoder first computes exactly what the original did.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._validation import expected, expected_to, expected_type
from ._encoders import ImageEncoder

__all__ = ["apply_lora", "count_blocks", "lora_targets"]


def _blocks(backbone: nn.Module) -> tuple[list[tuple[str, nn.Module]], type[nn.Module], tuple[str, ...] | None]:
    """Return the backbone's blocks in forward order, the layer type to adapt in them, and their names (or all)."""
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and all(
        isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear) for b in blocks
    ):  # timm ViT (UNI)
        return [(f"blocks.{i}", b) for i, b in enumerate(blocks)], nn.Linear, ("attn.qkv",)
    from torchvision.models import DenseNet, ResNet, VisionTransformer

    if isinstance(backbone, VisionTransformer):
        layers = backbone.encoder.layers.named_children()
        return [(f"encoder.layers.{n}", m) for n, m in layers], nn.Linear, ("mlp.0", "mlp.3")
    if isinstance(backbone, ResNet):
        stages = [f"layer{i}" for i in range(1, 5)]
        return [(f"{s}.{n}", m) for s in stages for n, m in getattr(backbone, s).named_children()], nn.Conv2d, None
    if isinstance(backbone, DenseNet):
        blocks = [
            (f"features.{s}.{n}", m)
            for s, stage in backbone.features.named_children()
            if s.startswith("denseblock")
            for n, m in stage.named_children()
        ]
        return blocks, nn.Conv2d, None
    what = "wrap a timm vision transformer or a torchvision ViT, ResNet or DenseNet"
    msg = expected_to("encoder", what, f"`{type(backbone).__name__}`")
    raise TypeError(msg)


def count_blocks(encoder: ImageEncoder) -> int:
    """Count the blocks of ``encoder``'s backbone that LoRA can adapt (the most ``last_n_blocks`` may be).

    Raises
    ------
    TypeError
        If the backbone is not an architecture LoRA knows.
    """
    return len(_blocks(encoder.backbone)[0])


def lora_targets(encoder: ImageEncoder, *, last_n_blocks: int = 11) -> list[str]:
    """Names (within ``encoder.backbone``) of the layers LoRA adapts in the last ``last_n_blocks`` blocks.

    Parameters
    ----------
    encoder
        Encoder built by :func:`~hyperst.nn.build_encoder`.
    last_n_blocks
        Number of blocks, counted from the output, to adapt.

    Returns
    -------
    Module names, e.g. ``["blocks.13.attn.qkv", ...]`` for UNI.

    Raises
    ------
    TypeError
        If the backbone is not a supported architecture.
    ValueError
        If ``last_n_blocks`` is not in ``[0, number of blocks]``.
    """
    blocks, layer_type, names = _blocks(encoder.backbone)
    if isinstance(last_n_blocks, bool) or not isinstance(last_n_blocks, int) or not 0 <= last_n_blocks <= len(blocks):
        msg = expected("last_n_blocks", f"an integer in [0, {len(blocks)}]", last_n_blocks)
        raise ValueError(msg)
    targets = []
    for prefix, block in blocks[len(blocks) - last_n_blocks :]:
        for name, module in block.named_modules():
            if isinstance(module, layer_type) and (names is None or name in names):
                targets.append(f"{prefix}.{name}")
    return targets


def apply_lora(
    encoder: ImageEncoder, *, last_n_blocks: int = 11, r: int = 8, alpha: int = 16, dropout: float = 0.1
) -> ImageEncoder:
    """Add LoRA adapters to the last blocks of ``encoder`` and freeze all its other weights, in place.

    Parameters
    ----------
    encoder
        Encoder built by :func:`~hyperst.nn.build_encoder` (see the module docstring for the layers adapted).
    last_n_blocks
        Number of blocks, counted from the output, to adapt; ``0`` only freezes the encoder.
    r
        Rank of the adapters.
    alpha
        LoRA scaling numerator (the update is scaled by ``alpha / r``).
    dropout
        Dropout on the adapters' input, in ``[0, 1)``.

    Returns
    -------
    ``encoder``, whose only trainable parameters are the adapters (``lora_A``/``lora_B``), with the settings
    in ``encoder.lora_config``. Batch-norm statistics stay frozen in training mode. To load the weights of an
    adapted encoder, rebuild it and call :func:`apply_lora` with the same settings first.

    Raises
    ------
    ValueError
        If a setting is out of range or ``encoder`` already has adapters.
    TypeError
        If the backbone is not a supported architecture.
    ImportError
        If peft is not installed.
    """
    if not isinstance(encoder, ImageEncoder):
        msg = expected_type("encoder", "an ImageEncoder", encoder)
        raise TypeError(msg)
    if encoder.lora_config is not None:
        msg = expected_to("encoder", "have no LoRA adapters yet", f"`{encoder.lora_config}`")
        raise ValueError(msg)
    for key, value in (("r", r), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = expected(key, "a positive integer", value)
            raise ValueError(msg)
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        msg = expected_to("dropout", "be in [0, 1)", f"`{dropout!r}`")
        raise ValueError(msg)
    targets = lora_targets(encoder, last_n_blocks=last_n_blocks)
    if not targets:
        return encoder.freeze()
    try:
        import peft
    except ImportError as err:
        msg = "LoRA needs peft. Install the `lora` extra with `pip install 'hyperst[lora]'`."
        raise ImportError(msg) from err

    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=targets)
    encoder.backbone = peft.inject_adapter_in_model(config, encoder.backbone)
    for name, param in encoder.named_parameters():
        param.requires_grad_("lora_" in name)
    settings: dict[str, Any] = {"last_n_blocks": last_n_blocks, "r": r, "alpha": alpha, "dropout": dropout}
    encoder.lora_config = {**settings, "target_modules": targets}
    encoder.frozen = False
    return encoder.train(encoder.training)
