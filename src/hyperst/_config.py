"""``HyperSTConfig``: every hyperparameter of a fit, frozen, validated, and stored with the model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from ._constants import MONITORS, PATCH_SIZE_PX, RESAMPLE, SPOT_PATCH_UM, TARGETS
from ._validation import expected
from .nn import ModuleConfig

__all__ = ["HyperSTConfig"]


@dataclass(frozen=True, kw_only=True)
class HyperSTConfig:
    """Hyperparameters of :func:`hyperst.tl.fit`; defaults follow the authors' code.

    Parameters
    ----------
    module
        Architecture and loss switches (:class:`hyperst.nn.ModuleConfig`); ``embed_dim=None`` sizes the
        embedding to the encoder (1024 for features of 1024 or more, else the largest power of two not above
        the feature width, at least 128). The decoder reads this embedding, so a panel of several hundred genes
        may need a wider one: on 785 HER2ST genes, squidpy features and ``target="log2_cp10k"``, both with
        ``monitor="mse"``, ``embed_dim=256`` reached a held-out mean PCC of 0.115 against 0.112 for the default
        128 (``docs/benchmarks.md``, "Wide gene panels"; on ``target="log2"`` the two together did not help).
    target
        Training target: ``"log2"`` is the paper's ``log2(1 + counts)``; ``"log2_cp10k"`` is
        ``log2(1 + counts per 10k)`` after library-size normalisation.
    spot_um
        Side of the spot patch in micrometres.
    niche_um
        Side of the niche patch; ``None`` covers the spot and ``n_rings`` rings of grid neighbours.
    n_rings
        Neighbour rings of the niche (patch and gene mean).
    patch_px
        Side in pixels of both patches at the encoder's input.
    resample
        Filter that resizes the crops to ``patch_px``: ``"lanczos"`` (the default, squidpy's pixels, PIL crop by
        crop) or ``"bilinear"`` (torch's antialiased bilinear, a batch at once), about a fifth of the CPU per spot
        (``benchmarks/patches.py``) with slightly softer pixels: the filter that keeps a GPU encoder fed on few
        cores. A model reads new slides with the filter it was trained with.
    views
        Dihedral views cached per spot and drawn at random each epoch (8: all; 1: no augmentation).
    lr
        AdamW learning rate. The authors use 1e-4 on raw UNI features; hyperst standardises the features, and
        on held-out HER2ST sections 1e-3 reached a higher PCC in fewer epochs (``docs/benchmarks.md``).
        With ``finetune="lora"`` on a large encoder, 1e-4 is the safer start.
    weight_decay
        AdamW weight decay.
    batch_size
        Spots per training step.
    max_epochs
        Upper bound on epochs.
    patience
        Epochs without a lower validation value (the one ``monitor`` names) before stopping.
    monitor
        What early stopping watches on the validation slides: ``"loss"``, the training objective (prediction
        MSE plus the weighted alignment losses), or ``"mse"``, the prediction error alone. The alignment
        losses are measured on the validation spots' genes, which a prediction never sees; ``"mse"`` keeps the
        epoch that predicts the validation slides best. On HER2ST it helped on 785 genes and cost a little on
        200 (``docs/benchmarks.md``, "What early stopping watches").
    val_fraction
        Share of training slides held out for validation when there are several (at least one slide); with a
        single slide, this share of its spots (spatially contiguous blocks).
    refit
        After early stopping has chosen the number of epochs on the validation slides, train a fresh model on
        all training spots (validation included) for that many epochs. The validation scores kept in the model
        (``training["val_pcc"]``) come from the first, held-out run. Doubles the training time; on small
        cohorts (HER2ST's 5 training sections) it gains more than any other setting tried
        (``docs/benchmarks.md``). Ignored with ``finetune="lora"``.
    random_state
        Seed of weights, splits and view sampling; CPU runs are reproducible.
    lora_blocks
        With ``finetune="lora"``: number of encoder blocks, counted from the output, that get LoRA adapters.
        The paper's 11 is for UNI's 24 transformer blocks; ``resnet18`` has only 8 blocks, so lower it there
        (``resnet50`` has 16, ``vit_b_16`` 12, ``densenet121`` 58). ``0`` keeps the encoder frozen but still
        reads patches on the fly.
    lora_r
        Rank of the LoRA adapters.
    lora_alpha
        LoRA scaling numerator (updates are scaled by ``lora_alpha / lora_r``).
    lora_dropout
        Dropout on the LoRA adapters' input, in ``[0, 1)``.
    """

    module: ModuleConfig = field(default_factory=lambda: ModuleConfig(embed_dim=1024))
    embed_dim_auto: bool = True
    target: Literal["log2", "log2_cp10k"] = "log2"
    spot_um: float = SPOT_PATCH_UM
    niche_um: float | None = None
    n_rings: int = 1
    patch_px: int = PATCH_SIZE_PX
    resample: Literal["lanczos", "bilinear"] = "lanczos"
    views: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    monitor: Literal["loss", "mse"] = "loss"
    val_fraction: float = 0.1
    refit: bool = True
    random_state: int = 0
    lora_blocks: int = 11
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.module, dict):
            object.__setattr__(self, "module", ModuleConfig.from_dict(self.module))
        problems = []

        def check(ok: bool, name: str, what: str) -> None:  # noqa: FBT001
            if not ok:
                problems.append(expected(name, what, getattr(self, name)))

        def pos(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0

        def posint(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        check(self.target in TARGETS, "target", f"one of {list(TARGETS)}")
        check(pos(self.spot_um), "spot_um", "a positive number")
        check(self.niche_um is None or pos(self.niche_um), "niche_um", "None or a positive number")
        for name in ("n_rings", "patch_px", "batch_size", "max_epochs", "patience"):
            check(posint(getattr(self, name)), name, "a positive integer")
        check(self.resample in RESAMPLE, "resample", " or ".join(map(repr, RESAMPLE)))
        check(self.monitor in MONITORS, "monitor", " or ".join(map(repr, MONITORS)))
        check(self.views in range(1, 9), "views", "an integer from 1 to 8")
        check(pos(self.lr), "lr", "a positive number")
        check(isinstance(self.weight_decay, int | float) and self.weight_decay >= 0, "weight_decay", ">= 0")
        check(isinstance(self.val_fraction, float) and 0 < self.val_fraction < 1, "val_fraction", "in (0, 1)")
        check(isinstance(self.refit, bool), "refit", "True or False")
        check(isinstance(self.random_state, int), "random_state", "an integer")
        nonneg = isinstance(self.lora_blocks, int) and not isinstance(self.lora_blocks, bool) and self.lora_blocks >= 0
        check(nonneg, "lora_blocks", "an integer >= 0")
        for name in ("lora_r", "lora_alpha"):
            check(posint(getattr(self, name)), name, "a positive integer")
        dropout = self.lora_dropout
        ok = isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1
        check(ok, "lora_dropout", "a number in [0, 1)")
        if problems:
            msg = "Invalid HyperSTConfig:\n" + "\n".join(f"  - {p}" for p in problems)
            raise ValueError(msg)

    def with_encoder_width(self, n_features: int) -> HyperSTConfig:
        """Return a copy whose module's ``embed_dim`` is sized to ``n_features`` (when ``embed_dim_auto``)."""
        if not self.embed_dim_auto:
            return self
        dim = 1024 if n_features >= 1024 else max(128, 2 ** int(math.log2(max(n_features, 1))))
        return replace(self, module=replace(self.module, embed_dim=dim), embed_dim_auto=False)

    @classmethod
    def build(cls, config: HyperSTConfig | None = None, **overrides: Any) -> HyperSTConfig:
        """Merge ``overrides`` into ``config`` (or the defaults); module fields may be given flat.

        ``embed_dim`` given explicitly turns off automatic sizing.
        """
        base = config or cls()
        names = {f.name for f in fields(cls)}
        module_names = {f.name for f in fields(ModuleConfig)}
        top = {k: v for k, v in overrides.items() if k in names}
        mod = {k: v for k, v in overrides.items() if k in module_names and k not in names}
        unknown = sorted(set(overrides) - names - module_names)
        if unknown:
            msg = (
                f"Unknown option(s) {unknown}. Options are the fields of `hyperst.HyperSTConfig` "
                f"({sorted(names - {'module', 'embed_dim_auto'})}) and of `hyperst.nn.ModuleConfig` "
                f"({sorted(module_names)})."
            )
            raise TypeError(msg)
        if "embed_dim" in mod:
            top["embed_dim_auto"] = False
        if mod:
            top["module"] = replace(base.module, **mod)
        return replace(base, **top)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the module config nested under ``"module"``)."""
        out = asdict(self)
        out["module"] = self.module.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperSTConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ValueError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            msg = f"Unknown HyperSTConfig field(s) {unknown}: the file was written by another hyperst version."
            raise ValueError(msg)
        data = dict(data)
        if isinstance(data.get("module"), dict):
            data["module"] = ModuleConfig.from_dict(data["module"])
        return cls(**data)
