"""What a model knows about itself, as typed records: :class:`EncoderRecord` and :class:`TrainingRecord`.

:func:`hyperst.tl.fit` writes both once; everything else (predict, the trust checks, plots, the command line,
the benchmarks) reads them by attribute. They are saved in the model's ``config.json`` through :meth:`to_dict`
and read back with :meth:`from_dict`, which also reads the untyped dicts of model files in format version 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["EncoderRecord", "TrainingRecord"]

#: Name of the weight-free encoder (squidpy's hand-crafted image features).
HANDCRAFTED = "squidpy"


def _known(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        msg = f"Unknown {what} field(s) {unknown}: the file was written by another hyperst version."
        raise ValueError(msg)
    return dict(data)


@dataclass(frozen=True, kw_only=True)
class EncoderRecord:
    """The image encoder a model reads, described once.

    Attributes
    ----------
    name
        Registry name (``"resnet50"``, ``"hf-hub:MahmoodLab/UNI"``, ``"squidpy"``) or ``"custom:<class name>"``
        for a module the user passed.
    weights
        What the weights were built from: a weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``), the path of a
        local checkpoint, or ``None`` (random weights, or none at all for ``"squidpy"``).
    weights_sha256
        sha256 of the checkpoint file when ``weights`` is a path.
    n_features
        Width ``F`` of the features the model reads.
    input_size
        Side in pixels of the input the backbone expects (``None`` for ``"squidpy"``).
    mean, std
        Per-channel normalisation of the backbone's inputs in ``[0, 1]``.
    fingerprint
        Short sha256 of the encoder's weights as the model was trained on them (``None`` in files of format
        version 1); part of the feature-cache key.
    lora
        LoRA settings (``last_n_blocks``, ``r``, ``alpha``, ``dropout``, ``target_modules``) of a fine-tuned
        encoder, else ``None``.
    state
        The encoder's weights, stored with the model (``encoder.safetensors``) when its name and weights alone
        cannot rebuild it: random, local-file, custom or fine-tuned weights.
    module
        The user's module, for a custom encoder; never saved (pass it to :meth:`hyperst.HyperST.load`).
    """

    name: str
    weights: str | None = None
    weights_sha256: str | None = None
    n_features: int
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    fingerprint: str | None = None
    lora: dict[str, Any] | None = None
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    module: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def handcrafted(self) -> bool:
        """Whether these are squidpy's hand-crafted features (no network)."""
        return self.name == HANDCRAFTED

    @property
    def custom(self) -> bool:
        """Whether the architecture is a user's module, which the stored weights alone cannot rebuild."""
        return self.name.startswith("custom:")

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors and the module, as JSON types."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("state", "module")}
        for key in ("mean", "std"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        *,
        state: dict[str, torch.Tensor] | None = None,
        module: torch.nn.Module | None = None,
    ) -> EncoderRecord:
        """Inverse of :meth:`to_dict`; also reads the encoder spec dicts of format version 1."""
        data = _known(cls, data, "encoder")
        for key in ("mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data, state=state, module=module)


@dataclass(frozen=True, kw_only=True)
class TrainingRecord:
    """What a model saw and what its fit decided, written once by :func:`hyperst.tl.fit`.

    Attributes
    ----------
    slides
        Names of the training slides (validation slides included).
    validation_slides
        The slides held out to choose the epoch and to calibrate (empty when one slide was split spatially,
        or without validation).
    n_spots
        Spots used per slide (those with counts of the model's genes).
    microns_per_pixel
        Pixel size per slide.
    technology
        Spot technologies seen (``"visium"``, ``"st"``).
    spot_side_um
        Side of the spot patch in micrometres.
    niche_side_um
        Side of the niche patch in micrometres, per slide.
    best_epoch
        Epoch whose weights the held-out run kept (``-1`` if none was kept).
    refit_epochs
        Epochs of the refit on all training spots (``refit=True``), else ``None``.
    refit_history
        Per-epoch metrics of that refit.
    val_pcc
        Per-gene Pearson r on the validation spots (``None`` for a gene constant there), or ``None``.
    val_mean_pcc
        Their mean over genes.
    calibration
        Split-conformal calibration from the validation residuals (:func:`hyperst.tl._trust.calibration`).
    qc
        Reference for the domain-shift checks: stain, feature distance and radius percentiles.
    """

    slides: tuple[str, ...] = ()
    validation_slides: tuple[str, ...] = ()
    n_spots: dict[str, int] = field(default_factory=dict)
    microns_per_pixel: dict[str, float] = field(default_factory=dict)
    technology: tuple[str, ...] = ()
    spot_side_um: float | None = None
    niche_side_um: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    refit_epochs: int | None = None
    refit_history: list[dict[str, float]] | None = None
    val_pcc: tuple[float | None, ...] | None = None
    val_mean_pcc: float | None = None
    calibration: dict[str, Any] | None = None
    qc: dict[str, Any] = field(default_factory=dict)

    @property
    def microns_per_pixel_range(self) -> tuple[float, float] | None:
        """Smallest and largest pixel size of the training slides, or ``None`` if unknown."""
        values = list(self.microns_per_pixel.values())
        return (min(values), max(values)) if values else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        for key in ("slides", "validation_slides", "technology", "val_pcc"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRecord:
        """Inverse of :meth:`to_dict`; also reads the ``training`` dicts of format version 1."""
        data = _known(cls, data, "training")
        for key in ("slides", "validation_slides", "technology", "val_pcc"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)
