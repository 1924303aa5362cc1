"""HyperSTModule: image and gene streams, the hyperbolic lift, the decoder and the losses (pure torch)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import expected, expected_shape, expected_to
from ._blocks import ResMLP
from ._config import ModuleConfig
from ._hyperbolic import LorentzLift, _clamp_passthrough
from ._loss import _STREAM_KEYS, LossOutput, contrastive_loss, entailment_loss, prediction_loss

__all__ = ["HyperSTModule"]


class HyperSTModule(nn.Module):
    """The HyperST network on pre-encoded image features: four streams, a Lorentz lift and a decoder.

    Spot and niche image features each pass a projector ``Linear(F, E)`` and a :class:`ResMLP`, then the
    shared ``image_proj`` (``Linear(E, E)``, no bias). Spot and niche gene vectors do the same through
    ``Linear(G, E)``, their own ResMLPs and the shared ``gene_proj``. :class:`LorentzLift` scales each
    modality and maps it onto the hyperboloid. The decoder (``ResMLP(2E, E)`` and ``Linear(E, G)``) reads the
    ``image_proj`` outputs of spot and niche, before scaling and lift, so prediction needs only images.

    Parameters
    ----------
    n_features
        Size ``F`` of the image features (the backbone's output).
    n_genes
        Number ``G`` of genes, in and out.
    config
        Architecture and loss switches; defaults to :class:`ModuleConfig` ``()``.

    Raises
    ------
    ValueError
        If ``n_features`` or ``n_genes`` is not a positive integer.
    """

    def __init__(self, n_features: int, n_genes: int, config: ModuleConfig | None = None) -> None:
        super().__init__()
        for name, value in (("n_features", n_features), ("n_genes", n_genes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(expected(name, "a positive integer", value))
        self.config = cfg = config if config is not None else ModuleConfig()
        self.n_features, self.n_genes = n_features, n_genes
        dim = cfg.embed_dim

        def res_mlp(in_dim: int, *, output_norm: bool = True) -> ResMLP:
            return ResMLP(
                in_dim, dim, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, depth=cfg.depth, output_norm=output_norm
            )

        # without alignment, a projector the decoder does not read is not built (DDP rejects unused weights)
        if cfg.alignment or cfg.decoder_input != "niche":
            self.spot_image_projector = nn.Linear(n_features, dim)
        if cfg.alignment or cfg.decoder_input != "spot":
            self.niche_image_projector = nn.Linear(n_features, dim)
        if cfg.alignment:
            self.spot_image_encoder, self.niche_image_encoder = res_mlp(dim), res_mlp(dim)
            self.image_proj = nn.Linear(dim, dim, bias=False)
            self.spot_gene_projector = nn.Linear(n_genes, dim)
            self.niche_gene_projector = nn.Linear(n_genes, dim)
            self.spot_gene_encoder, self.niche_gene_encoder = res_mlp(dim), res_mlp(dim)
            self.gene_proj = nn.Linear(dim, dim, bias=False)
            for proj in (self.image_proj, self.gene_proj):
                nn.init.normal_(proj.weight, std=dim**-0.5)
            self.lift = LorentzLift(
                dim,
                ("image", "gene"),
                curv_init=cfg.curv_init,
                # an unused trainable parameter would break DDP, so no curvature to learn in Euclidean mode
                learn_curv=cfg.learn_curv and cfg.geometry == "lorentz",
                curv_bounds=cfg.curv_bounds,
            )
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)))
        decoder_in = 2 * dim if cfg.decoder_input == "both" else dim
        self.decoder = nn.Sequential(res_mlp(decoder_in, output_norm=cfg.decoder_norm), nn.Linear(dim, n_genes))
        # standardisation of the image features (identity until `set_input_stats`); saved with the weights
        self.register_buffer("feature_shift", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        if cfg.readout == "blend":  # the ridge read-out and its share (1 - mix), set after training
            self.register_buffer("readout_weight", torch.zeros(2 * n_features, n_genes))
            self.register_buffer("readout_bias", torch.zeros(n_genes))
            self.register_buffer("readout_mix", torch.ones(()))

    @torch.no_grad()
    def set_input_stats(self, mean: Tensor, std: Tensor, target_mean: Tensor | None = None) -> None:
        """Standardise image features with ``mean``/``std`` and start the decoder at ``target_mean``.

        Encoders differ wildly in feature scale (hand-crafted features span 1e-3 to 1e3), so the features are
        standardised with training statistics stored in the module; starting the decoder's output bias at the
        mean expression lets the first epochs learn structure instead of the offset.

        Parameters
        ----------
        mean
            ``(F,)`` feature means.
        std
            ``(F,)`` feature standard deviations (values below 1e-6 count as 1).
        target_mean
            ``(G,)`` mean training target, the initial output bias of the decoder.
        """
        self.feature_shift.copy_(mean)
        self.feature_scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        if target_mean is not None:
            self.decoder[-1].bias.copy_(target_mean)

    @torch.no_grad()
    def set_readout(self, weight: Tensor, bias: Tensor, mix: float) -> None:
        """Set the ridge read-out that :meth:`predict` blends with the decoder (``readout="blend"`` only).

        Parameters
        ----------
        weight
            ``(2F, G)`` coefficients on the standardised spot features followed by the niche features.
        bias
            ``(G,)`` intercept.
        mix
            Share of the decoder in ``[0, 1]``; the ridge read-out gets ``1 - mix``.

        Raises
        ------
        ValueError
            If the module was built with another ``readout``, or a shape or ``mix`` is out of range.
        """
        if self.config.readout != "blend":
            msg = f"`set_readout` needs a module built with `readout='blend'`; this one has {self.config.readout!r}."
            raise ValueError(msg)
        if tuple(weight.shape) != tuple(self.readout_weight.shape):
            raise ValueError(expected_shape("weight", tuple(self.readout_weight.shape), weight.shape))
        if tuple(bias.shape) != (self.n_genes,):
            raise ValueError(expected_shape("bias", (self.n_genes,), bias.shape))
        if not 0.0 <= float(mix) <= 1.0:
            raise ValueError(expected("mix", "a number in [0, 1]", mix))
        self.readout_weight.copy_(weight)
        self.readout_bias.copy_(bias)
        self.readout_mix.fill_(float(mix))

    def standardised(self, spot_img: Tensor, niche_img: Tensor) -> Tensor:
        """``(B, 2F)`` spot and niche features standardised with the training statistics, side by side."""
        _check_input(spot_img, self.n_features, "spot_img")
        _check_input(niche_img, self.n_features, "niche_img")
        return torch.cat([spot_img - self.feature_shift, niche_img - self.feature_shift], dim=-1) / torch.cat(
            [self.feature_scale, self.feature_scale]
        )

    # -- learnable scalars -------------------------------------------------------------------------

    @property
    def curv(self) -> Tensor | None:
        """Curvature magnitude of the embedding space (``None`` without alignment)."""
        return self.lift.curv if self.config.alignment else None

    @property
    def logit_scale(self) -> Tensor | None:
        """Contrastive logit multiplier, at most ``max_logit_scale`` (``None`` without alignment)."""
        if not self.config.alignment:
            return None
        return _clamp_passthrough(self.log_logit_scale, high=math.log(self.config.max_logit_scale)).exp()

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Pull the raw curvature, scales and logit scale back into their bands (after optimiser steps).

        :meth:`forward` calls this in training mode, as the authors' code does; reads are clamped anyway.
        """
        if self.config.alignment:
            self.lift.clamp_parameters_()
            self.log_logit_scale.data.clamp_(max=math.log(self.config.max_logit_scale))

    # -- streams -------------------------------------------------------------------------------------

    def _image_features(self, spot_img: Tensor, niche_img: Tensor) -> tuple[Tensor | None, Tensor | None]:
        _check_input(spot_img, self.n_features, "spot_img")
        _check_input(niche_img, self.n_features, "niche_img")
        spot_img = (spot_img - self.feature_shift) / self.feature_scale
        niche_img = (niche_img - self.feature_shift) / self.feature_scale
        if not self.config.alignment:  # the ablation: the decoder reads the projector outputs
            spot = self.spot_image_projector(spot_img) if hasattr(self, "spot_image_projector") else None
            niche = self.niche_image_projector(niche_img) if hasattr(self, "niche_image_projector") else None
            return spot, niche
        spot = self.image_proj(self.spot_image_encoder(self.spot_image_projector(spot_img)))
        niche = self.image_proj(self.niche_image_encoder(self.niche_image_projector(niche_img)))
        return spot, niche

    def _embed(self, features: Tensor, modality: str) -> Tensor:
        if self.config.geometry == "lorentz":
            return self.lift(features, modality)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.lift.scale(features.float(), modality)

    def _decode(self, spot: Tensor | None, niche: Tensor | None) -> Tensor:
        source = self.config.decoder_input
        features = torch.cat([spot, niche], dim=-1) if source == "both" else (spot if source == "spot" else niche)
        return self.decoder(features)

    # -- public API ------------------------------------------------------------------------------------

    def forward(
        self,
        spot_img: Tensor,
        niche_img: Tensor,
        spot_gene: Tensor | None = None,
        niche_gene: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Run all streams given, and the decoder.

        Parameters
        ----------
        spot_img
            ``(B, F)`` spot image features.
        niche_img
            ``(B, F)`` niche image features.
        spot_gene
            ``(B, G)`` spot expression (log2(1 + counts)); optional.
        niche_gene
            ``(B, G)`` niche expression (log2 of the mean counts of the niche); optional.

        Returns
        -------
        ``"prediction"``: ``(B, G)``. With alignment, ``"spot_image"``, ``"niche_image"`` and, when given,
        ``"spot_gene"``, ``"niche_gene"``: ``(B, E)`` embeddings, float32 (Lorentz space components, or
        scaled Euclidean vectors).

        Raises
        ------
        ValueError
            If an input is not a ``(B, F)`` / ``(B, G)`` matrix.
        """
        if self.training:
            self.clamp_parameters_()
        spot, niche = self._image_features(spot_img, niche_img)
        out = {"prediction": self._decode(spot, niche)}
        if not self.config.alignment:
            return out
        out["spot_image"], out["niche_image"] = self._embed(spot, "image"), self._embed(niche, "image")
        genes = (
            ("spot_gene", spot_gene, self.spot_gene_projector, self.spot_gene_encoder),
            ("niche_gene", niche_gene, self.niche_gene_projector, self.niche_gene_encoder),
        )
        for key, values, projector, encoder in genes:
            if values is not None:
                _check_input(values, self.n_genes, key)
                out[key] = self._embed(self.gene_proj(encoder(projector(values))), "gene")
        return out

    def loss(self, outputs: dict[str, Tensor], target: Tensor) -> LossOutput:
        """Compute the training loss ``mse + alignment_weight * (hca + entail_weight * hea)``.

        Parameters
        ----------
        outputs
            Output of :meth:`forward`; with alignment, it must hold the gene embeddings that the
            configured pairs use (all by default).
        target
            ``(B, G)`` observed spot expression.

        Returns
        -------
        The total and the terms ``mse``; with alignment also ``hca``, ``hca_<pair>``, ``logit_scale``,
        ``alpha_image``, ``alpha_gene`` and (Lorentz) ``curv``; with entailment ``hea`` and ``hea_<pair>``.
        Logged scalars (curvature, scales) are detached.

        Raises
        ------
        ValueError
            If gene embeddings are missing with alignment on, or ``target`` has the wrong shape.
        """
        cfg = self.config
        mse = prediction_loss(outputs["prediction"], target)
        if not cfg.alignment:
            return LossOutput(mse, {"mse": mse})
        pairs = cfg.contrast_pairs + (cfg.entail_pairs if cfg.entailment else ())
        needed = {_STREAM_KEYS[s] for pair in pairs for s in pair.split("_")}
        missing = sorted(needed - set(outputs))
        if missing:
            problem = expected_to("outputs", f"hold {missing} for the alignment losses", f"only {sorted(outputs)}")
            msg = f"{problem} Pass `spot_gene` and `niche_gene` to `forward`."
            raise ValueError(msg)
        curv = self.curv if cfg.geometry == "lorentz" else None
        with torch.autocast(device_type=target.device.type, enabled=False):
            hca = contrastive_loss(
                outputs,
                logit_scale=self.logit_scale,
                curv=curv,
                geometry=cfg.geometry,
                pairs=cfg.contrast_pairs,
            )
            terms = {"mse": mse, "hca": hca.total, **hca.terms}
            alignment = hca.total
            if cfg.entailment:
                hea = entailment_loss(
                    outputs,
                    curv=curv,
                    geometry=cfg.geometry,
                    pairs=cfg.entail_pairs,
                    aperture_scale_intra=cfg.aperture_scale_intra,
                    aperture_scale_cross=cfg.aperture_scale_cross,
                    min_radius=cfg.min_radius,
                    factor=cfg.hea_factor,
                )
                terms |= {"hea": hea.total, **hea.terms}
                alignment = alignment + cfg.entail_weight * hea.total
        terms |= {
            "logit_scale": self.logit_scale.detach(),
            "alpha_image": self.lift.alpha("image").detach(),
            "alpha_gene": self.lift.alpha("gene").detach(),
        }
        if curv is not None:
            terms["curv"] = curv.detach()
        return LossOutput(mse + cfg.alignment_weight * alignment, terms)

    def predict(self, spot_img: Tensor, niche_img: Tensor) -> Tensor:
        """Predict expression from image features only.

        Parameters
        ----------
        spot_img
            ``(B, F)`` spot image features.
        niche_img
            ``(B, F)`` niche image features.

        Returns
        -------
        ``(B, G)`` predicted expression: the decoder's, or with ``readout="blend"`` its mix with the ridge
        read-out (:meth:`set_readout`).
        """
        out = self._decode(*self._image_features(spot_img, niche_img))
        if self.config.readout != "blend":
            return out
        mix = self.readout_mix.to(out.dtype)
        if float(mix) == 1.0:
            return out
        ridge = self.standardised(spot_img, niche_img).to(self.readout_weight.dtype) @ self.readout_weight
        return mix * out + (1 - mix) * (ridge + self.readout_bias).to(out.dtype)

    def embed(self, spot_img: Tensor, niche_img: Tensor) -> dict[str, Tensor]:
        """Embed image features (Lorentz space components, or scaled Euclidean vectors).

        Parameters
        ----------
        spot_img
            ``(B, F)`` spot image features.
        niche_img
            ``(B, F)`` niche image features.

        Returns
        -------
        ``"spot_image"`` and ``"niche_image"``: ``(B, E)`` float32 embeddings.

        Raises
        ------
        ValueError
            If the module was built with ``alignment=False`` (it has no embedding space).
        """
        if not self.config.alignment:
            msg = "`embed` needs a module built with `alignment=True`; this one has `alignment=False`."
            raise ValueError(msg)
        spot, niche = self._image_features(spot_img, niche_img)
        return {"spot_image": self._embed(spot, "image"), "niche_image": self._embed(niche, "image")}


def _check_input(x: Tensor, width: int, name: str) -> None:
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(expected_shape(name, f"(B, {width})", x.shape))
