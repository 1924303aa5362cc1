"""Pure-torch building blocks of HyperST (advanced use; never touches AnnData or SpatialData).

:class:`HyperSTModule` is the network; the losses are pure functions returning :class:`LossOutput`.
"""

from __future__ import annotations

from ._blocks import ResMLP
from ._config import ModuleConfig
from ._distributed import gather_with_grad
from ._encoders import ENCODERS, EncoderSpec, ImageEncoder, build_encoder
from ._hyperbolic import LorentzLift
from ._lora import apply_lora, count_blocks
from ._loss import (
    CONTRAST_PAIRS,
    ENTAIL_PAIRS,
    LossOutput,
    cone_loss,
    contrastive_loss,
    entailment_loss,
    pair_logits,
    prediction_loss,
)
from ._module import HyperSTModule

__all__ = [
    "CONTRAST_PAIRS",
    "ENCODERS",
    "ENTAIL_PAIRS",
    "EncoderSpec",
    "HyperSTModule",
    "ImageEncoder",
    "LorentzLift",
    "LossOutput",
    "ModuleConfig",
    "ResMLP",
    "apply_lora",
    "build_encoder",
    "cone_loss",
    "contrastive_loss",
    "count_blocks",
    "entailment_loss",
    "gather_with_grad",
    "pair_logits",
    "prediction_loss",
]
