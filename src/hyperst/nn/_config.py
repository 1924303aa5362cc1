"""Architecture and loss switches of :class:`~hyperst.nn.HyperSTModule` (a frozen, validated dataclass)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .._validation import expected
from ._loss import CONTRAST_PAIRS, ENTAIL_PAIRS

__all__ = ["ModuleConfig"]

_POSITIVE = ("mlp_ratio", "min_radius", "curv_init", "logit_scale_init", "max_logit_scale")
_NON_NEGATIVE = (
    "alignment_weight",
    "entail_weight",
    "hea_factor",
    "aperture_scale_intra",
    "aperture_scale_cross",
)


@dataclass(frozen=True, kw_only=True)
class ModuleConfig:
    """Hyperparameters of :class:`~hyperst.nn.HyperSTModule`; defaults reproduce the authors' code.

    Parameters
    ----------
    embed_dim
        Width of every stream and of the hyperbolic embedding.
    mlp_ratio
        Inner width of the residual MLP blocks, as a multiple of ``embed_dim``.
    depth
        Residual blocks per :class:`~hyperst.nn.ResMLP`.
    dropout
        Dropout of the image, gene and decoder residual MLPs.
    alignment
        Build the alignment branch (stream encoders, gene streams, lift, HCA/HEA). ``False`` is the
        no-alignment ablation: the decoder reads the image projector outputs and the loss is the MSE.
    entailment
        Add the entailment-cone loss (HEA).
    contrast_pairs
        HCA pairings, a non-empty subset of :data:`~hyperst.nn.CONTRAST_PAIRS`.
    entail_pairs
        HEA pairings, a subset of :data:`~hyperst.nn.ENTAIL_PAIRS`, non-empty when ``entailment``.
    geometry
        ``"lorentz"``: hyperboloid embeddings, distance logits, MERU cones. ``"euclidean"``: the scaled
        features themselves, cosine logits, Euclidean cones (when ``entailment``).
    decoder_input
        Image features read by the decoder: ``"both"`` (concatenated), ``"spot"`` or ``"niche"``.
    decoder_norm
        End the decoder's residual MLP with a LayerNorm, as the authors' code does. Off by default: the
        normalisation discards each spot's feature scale before the linear read-out, and on held-out HER2ST
        sections removing it raised mean PCC (``docs/benchmarks.md``).
    readout
        What :meth:`~hyperst.nn.HyperSTModule.predict` returns. ``"decoder"``: the decoder's output, as in the
        paper. ``"blend"``: a mix ``w * decoder + (1 - w) * ridge`` of the decoder and a ridge read-out of the
        standardised ``(spot, niche)`` image features, set after training by
        :meth:`~hyperst.nn.HyperSTModule.set_readout` (``hst.tl.fit`` fits the ridge on the training spots and
        picks ``w`` on the validation slide); until then ``w = 1``. Training is the same for both.
    alignment_weight
        Weight of the alignment loss: ``total = mse + alignment_weight * (hca + entail_weight * hea)``.
    entail_weight
        Weight of HEA inside the alignment loss.
    hea_factor
        Multiplier of the sum of cone terms (0.5 in the code; 0.25 gives the paper's mean).
    aperture_scale_intra
        Cone margin multiplier of the image -> gene pairs.
    aperture_scale_cross
        Cone margin multiplier of the spot -> niche pairs.
    min_radius
        Constant ``K`` of the cones.
    curv_init
        Initial curvature magnitude.
    learn_curv
        Learn the curvature.
    curv_bounds
        ``(low, high)`` band of the curvature magnitude.
    logit_scale_init
        Initial contrastive logit multiplier (inverse temperature).
    max_logit_scale
        Upper bound of the logit multiplier.

    Raises
    ------
    ValueError
        Listing every field that is out of range or unknown.
    """

    embed_dim: int = 1024
    mlp_ratio: float = 2.0
    depth: int = 2
    dropout: float = 0.1
    alignment: bool = True
    entailment: bool = True
    contrast_pairs: tuple[str, ...] = CONTRAST_PAIRS
    entail_pairs: tuple[str, ...] = ENTAIL_PAIRS
    geometry: Literal["lorentz", "euclidean"] = "lorentz"
    decoder_input: Literal["both", "spot", "niche"] = "both"
    decoder_norm: bool = False
    readout: Literal["decoder", "blend"] = "decoder"
    alignment_weight: float = 0.2
    entail_weight: float = 0.4
    hea_factor: float = 0.5
    aperture_scale_intra: float = 0.7
    aperture_scale_cross: float = 1.2
    min_radius: float = 0.1
    curv_init: float = 1.0
    learn_curv: bool = True
    curv_bounds: tuple[float, float] = (0.1, 10.0)
    logit_scale_init: float = 1 / 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        for name in ("contrast_pairs", "entail_pairs", "curv_bounds"):  # lists (e.g. from JSON) -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        low, high = self.curv_bounds if len(self.curv_bounds) == 2 else (math.nan, math.nan)
        checks = [
            (_is_int(self.embed_dim, 1), "embed_dim", "a positive integer"),
            (_is_int(self.depth, 0), "depth", "a non-negative integer"),
            *((_is_number(getattr(self, n), strict=True), n, "positive") for n in _POSITIVE),
            *((_is_number(getattr(self, n)), n, "non-negative") for n in _NON_NEGATIVE),
            (_is_number(self.dropout) and self.dropout < 1, "dropout", "in [0, 1)"),
            (self.geometry in ("lorentz", "euclidean"), "geometry", "'lorentz' or 'euclidean'"),
            (self.decoder_input in ("both", "spot", "niche"), "decoder_input", "'both', 'spot' or 'niche'"),
            (isinstance(self.decoder_norm, bool), "decoder_norm", "True or False"),
            (self.readout in ("decoder", "blend"), "readout", "'decoder' or 'blend'"),
            (
                _is_subset(self.contrast_pairs, CONTRAST_PAIRS) and len(self.contrast_pairs) > 0,
                "contrast_pairs",
                f"distinct names from {CONTRAST_PAIRS}, at least one",
            ),
            (
                _is_subset(self.entail_pairs, ENTAIL_PAIRS) and (self.entail_pairs or not self.entailment),
                "entail_pairs",
                f"distinct names from {ENTAIL_PAIRS}, at least one with `entailment=True`",
            ),
            (
                _is_number(low, strict=True) and _is_number(high) and low <= high,
                "curv_bounds",
                "0 < low <= high",
            ),
            (
                not (low <= high) or low <= self.curv_init <= high,
                "curv_init",
                f"within `curv_bounds` {(low, high)}",
            ),
            (
                not self.logit_scale_init > self.max_logit_scale,
                "logit_scale_init",
                "at most `max_logit_scale`",
            ),
        ]
        problems = [expected(name, what, getattr(self, name)) for ok, name, what in checks if not ok]
        if problems:
            raise ValueError(" ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModuleConfig:
        """Build a config from the output of :meth:`to_dict`.

        Parameters
        ----------
        values
            Field names and values.

        Returns
        -------
        The validated config.
        """
        return cls(**values)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any, *, strict: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value > 0 if strict else value >= 0


def _is_subset(values: tuple[str, ...], allowed: tuple[str, ...]) -> bool:
    return len(set(values)) == len(values) and set(values) <= set(allowed)
