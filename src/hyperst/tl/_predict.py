"""``hst.tl.predict``: expression and hyperbolic embeddings for every spot of a slide, from its H&E alone."""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import Keys
from .._data._elements import OUTPUT_TABLE_FLAG
from .._docs import doc_params
from ._features import FeatureExtractor, extract_features, make_extractor
from ._poincare import poincare_coordinates
from ._prepare import geometry_from, load_slide, slide_gene_arrays
from ._trust import RELIABLE_PCC, conformal_bounds, domain_qc, feature_distance, spot_radius

if TYPE_CHECKING:
    import torch
    from anndata import AnnData
    from spatialdata import SpatialData

    from .._model import HyperST

__all__ = ["predict"]

logger = logging.getLogger(__name__)


def _extractor(model: HyperST) -> FeatureExtractor:
    spec = model.encoder
    name = spec.get("name")
    custom = bool(spec.get("custom")) or str(name).startswith("custom:")
    if name == "squidpy":
        ext = make_extractor("squidpy")
    elif custom and model.encoder_module is None:  # stored weights alone cannot rebuild a user's architecture
        msg = (
            f"This model was trained with a custom encoder module (`{name}`): pass it with "
            "`HyperST.load(path, encoder=...)`."
        )
        raise ValueError(msg)
    elif spec.get("lora") is not None:  # fine-tuned: architecture, adapters, then the stored weights
        from ._finetune import lora_extractor

        ext = lora_extractor(spec, model.encoder_state, model.encoder_module)
    elif model.encoder_module is not None:
        ext = make_extractor(model.encoder_module)
    elif model.encoder_state is not None:
        ext = make_extractor(name, weights=None)
    elif spec.get("weights") is None:
        msg = (
            f"This model's `{name}` encoder had random weights that are not stored with it (`encoder_state` is "
            "None), so its features cannot be reproduced. Load the model from a folder that holds "
            "`encoder.safetensors`, or refit it."
        )
        raise ValueError(msg)
    else:
        ext = make_extractor(name, weights=spec.get("weights"))
    if ext.module is not None and model.encoder_state is not None and spec.get("lora") is None:
        from ._features import _state_fingerprint

        ext.module.load_state_dict(model.encoder_state)
        ext.fingerprint = _state_fingerprint(ext.module)
    if ext.n_features != model.module.n_features:
        msg = (
            f"The encoder gives {ext.n_features} features but the model reads {model.module.n_features}: "
            "the encoder does not match the one the model was trained with. Load the model with its own encoder "
            "(`HyperST.load(path, encoder=...)` for a custom one), or refit it."
        )
        raise ValueError(msg)
    return ext


def _batched(fn: Any, *arrays: np.ndarray, batch: int = 512) -> list[dict[str, np.ndarray]]:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(arrays[0]), batch):
            res = fn(*(torch.from_numpy(np.ascontiguousarray(a[start : start + batch])) for a in arrays))
            out.append({k: v.float().numpy() for k, v in (res.items() if isinstance(res, dict) else [("y", res)])})
    return out


def _cat(parts: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.concatenate([p[key] for p in parts])


def _lorentz(module: torch.nn.Module, space: np.ndarray) -> np.ndarray:
    import torch

    from ..lorentz import to_lorentz_full

    with torch.inference_mode():
        return to_lorentz_full(torch.from_numpy(space), module.curv.detach()).numpy().astype(np.float32)


@doc_params
def predict(
    sdata: SpatialData | AnnData,
    model: HyperST,
    *,
    key_added: str = "hyperst",
    inplace: bool = True,
    table_key: str | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    microns_per_pixel: float | None = None,
    layer: str | None = None,
    views: int = 1,
    coverage: float | None = 0.9,
    normalised: bool = False,
    reliable_pcc: float = RELIABLE_PCC,
    batch_size: int = 32,
    cache: bool | str | os.PathLike = True,
) -> AnnData | None:
    """Predict expression and hyperbolic embeddings for every spot, from the H&E image.

    Counts are optional: with them, the gene-side embeddings are written too. Spots near the border are
    padded, never dropped. A slide with no spots at all can be tiled first with :func:`hyperst.pp.tile`.

    Parameters
    ----------
    {sdata}
    model
        A trained :class:`hyperst.HyperST`.
    {key_added}
    inplace
        Write into ``sdata``; ``False`` returns the predictions table and leaves ``sdata`` untouched.
    {table_key}
    {image_key}
    {shapes_key}
    microns_per_pixel
        Pixel size of the image; derived from the spot diameter when ``None``.
    layer
        Layer with raw counts for the gene embeddings (``None``: ``X``).
    views
        Dihedral views averaged per spot (test-time augmentation; 1: none).
    coverage
        Target coverage of the split-conformal intervals, calibrated on the validation slides' residuals at fit
        time (``None``: no intervals).
    normalised
        Scale each spot's interval by its hyperbolic radius relative to the validation spots' (clipped to
        0.5-2x); ``False`` gives every spot of a gene the same width. See ``docs/trust.md`` for how the two
        compare on held-out sections.
    reliable_pcc
        Validation PCC from which ``var['{{key_added}}_reliable']`` is ``True``.
    batch_size
        Spots per batch of patches.
    cache
        Feature cache: ``True``, a folder, or ``False``.

    Returns
    -------
    With ``inplace=True``, ``None``, after writing to the spots' table:

    - ``obsm['X_{{key_added}}']``, ``obsm['X_{{key_added}}_niche']``: spot and niche image embeddings,
      Lorentz coordinates with the time component first, float32;
    - ``obsm['X_{{key_added}}_gene']``, ``obsm['X_{{key_added}}_gene_niche']``: gene embeddings, when the
      table holds counts of the model's genes;
    - ``obsm['X_{{key_added}}_poincare']``, ``obs['{{key_added}}_radius']``: Poincaré-disk view and distance to
      the origin;
    - ``obsp['{{key_added}}_connectivities']``, ``obsp['{{key_added}}_distances']``: the niche graph;
    - ``layers['{{key_added}}']``: predicted expression, same shape as ``X``, NaN for genes not predicted;
      ``var['{{key_added}}_predicted']``;
    - ``layers['{{key_added}}_lower']``, ``layers['{{key_added}}_upper']``: split-conformal bounds at
      ``coverage`` (when the model holds a calibration), NaN for genes not predicted;
    - ``var['{{key_added}}_val_pcc']``, ``var['{{key_added}}_reliable']``: each gene's Pearson r on the
      validation slides at fit time, and whether it reaches ``reliable_pcc``;
    - ``uns['{{key_added}}']``: provenance (version, model hash, genes, encoder, µm/px, patch sizes,
      curvature), ``["intervals"]`` (coverage, calibration size) and ``["qc"]``: the domain-shift checks
      (pixel size, stain, image features, embedding radius against the training slides; a warning names
      any that fail);

    and ``sdata.tables['{{key_added}}']``: the predictions as their own table (var = the model's genes),
    annotating the same spots. With ``inplace=False``, that table (holding the embeddings too).
    """
    import anndata as ad
    from anndata import AnnData
    from spatialdata.models import TableModel

    from .._model import HyperST
    from ..pp import niche_graph

    if not isinstance(model, HyperST):
        msg = (
            f"Expected `model` to be a hyperst.HyperST, found `{type(model).__name__}`. Train one with "
            "`hyperst.tl.fit(...)` or read a saved one with `hyperst.HyperST.load(path)`."
        )
        raise TypeError(msg)
    if not isinstance(views, int) or not 1 <= views <= 8:
        msg = f"Expected `views` to be an integer from 1 to 8, found `{views!r}`."
        raise ValueError(msg)
    if coverage is not None and not (isinstance(coverage, float) and 0 < coverage < 1):
        msg = f"Expected `coverage` to be a float in (0, 1) or None, found `{coverage!r}`."
        raise ValueError(msg)
    keys = Keys(key_added)
    slide = load_slide(
        sdata, table_key=table_key, image_key=image_key, shapes_key=shapes_key, microns_per_pixel=microns_per_pixel
    )
    el, table = slide.layout.elements, slide.table
    module = model.module.cpu().eval()
    cfg = model.config
    extractor = _extractor(model)
    spot, niche = extract_features(
        slide.sdata,
        slide.layout,
        extractor,
        geometry=geometry_from(cfg),
        views=views,
        batch_size=batch_size,
        cache=cache,
        desc="predict",
    )
    pred = np.mean([_cat(_batched(module.predict, spot[:, v], niche[:, v]), "y") for v in range(views)], axis=0)
    conn, dist = niche_graph(slide.sdata, table_key=el.table_key, n_rings=cfg.n_rings, inplace=False)
    radius = spot_radius(module, spot[:, 0], niche[:, 0])
    qc = domain_qc(model.training, slide, feature_distance(module, spot[:, 0]), radius)
    bounds = None
    cal = model.training.get("calibration")
    if coverage is not None and cal is not None:
        bounds = conformal_bounds(pred, cal, coverage, radius if normalised else None)
    elif coverage is not None:
        logger.info("No intervals: the model has no calibration (it was fitted without validation slides)")
    val_pcc = model.training.get("val_pcc")
    val_pcc = np.full(len(model.genes), np.nan) if val_pcc is None else np.array(val_pcc, dtype=np.float64)

    obsm: dict[str, np.ndarray] = {}
    hyperbolic = cfg.module.alignment and cfg.module.geometry == "lorentz"
    curv = float(module.curv.detach()) if hyperbolic else None
    if cfg.module.alignment:
        gene_inputs = None
        try:
            gene_inputs = slide_gene_arrays(slide, model.genes, cfg, layer=layer, connectivities=conn)
        except (KeyError, ValueError) as err:
            logger.info("No gene embeddings: %s", err)
        if gene_inputs is not None:
            parts = _batched(module, spot[:, 0], niche[:, 0], gene_inputs[0], gene_inputs[1])
            names = {
                "spot_image": keys.embedding,
                "niche_image": keys.embedding_niche,
                "spot_gene": keys.embedding_gene,
                "niche_gene": keys.embedding_gene_niche,
            }
        else:
            parts = _batched(module.embed, spot[:, 0], niche[:, 0])
            names = {"spot_image": keys.embedding, "niche_image": keys.embedding_niche}
        for stream, key in names.items():
            space = _cat(parts, stream)
            obsm[key] = _lorentz(module, space) if hyperbolic else space.astype(np.float32)
    obs_extra = {}
    if hyperbolic:
        disk, radius = poincare_coordinates(obsm[keys.embedding], curv)
        obsm[keys.poincare] = disk
        obs_extra[keys.radius] = radius

    provenance = {
        "version": _version(),
        "model_hash": model.fingerprint(),
        "genes": list(model.genes),
        "encoder": {k: v for k, v in model.encoder.items() if v is not None},
        "microns_per_pixel": float(slide.layout.microns_per_pixel),
        "scale_source": slide.layout.scale_source,
        "spot_patch_um": float(cfg.spot_um),
        "niche_patch_um": float(geometry_from(cfg).sides_px(slide.layout)[1] * slide.layout.microns_per_pixel),
        "geometry": cfg.module.geometry,
        "target": cfg.target,
        "views": views,
    }
    if curv is not None:
        provenance["curvature"] = curv
    provenance["qc"] = qc
    if bounds is not None:
        provenance["intervals"] = bounds[2]
    provenance = json.loads(json.dumps(provenance, default=list))  # tuples -> lists: zarr-safe

    obs = pd.DataFrame(index=table.obs_names.copy())
    for col in (el.region_key, el.instance_key):
        obs[col] = table.obs[col].to_numpy()
    obs[el.region_key] = pd.Categorical(obs[el.region_key])  # as TableModel wants it (no conversion warning)
    for k, v in obs_extra.items():
        obs[k] = v
    var = pd.DataFrame(index=pd.Index(model.genes))
    var[keys.val_pcc] = val_pcc
    var[keys.reliable] = val_pcc >= reliable_pcc  # NaN (constant on validation, or no validation) -> False
    result = ad.AnnData(X=pred.astype(np.float32), obs=obs, var=var)
    if bounds is not None:
        result.layers[keys.lower], result.layers[keys.upper] = bounds[0], bounds[1]
    for k, v in obsm.items():
        result.obsm[k] = v
    result.obsp[keys.connectivities], result.obsp[keys.distances] = conn, dist
    result.uns[keys.uns] = provenance
    result.uns[OUTPUT_TABLE_FLAG] = True
    result = TableModel.parse(result, region=el.shapes_key, region_key=el.region_key, instance_key=el.instance_key)
    if not inplace:
        return result

    target = sdata if isinstance(sdata, AnnData) else table
    for k, v in obsm.items():
        target.obsm[k] = v
    for k, v in obs_extra.items():
        target.obs[k] = v
    target.obsp[keys.connectivities], target.obsp[keys.distances] = conn, dist
    if target.n_vars:
        full = np.full(target.shape, np.nan, dtype=np.float32)
        cols = target.var_names.get_indexer(model.genes)
        present = cols >= 0
        full[:, cols[present]] = pred[:, present]
        target.layers[keys.layer] = full
        if bounds is not None:
            for key, values in ((keys.lower, bounds[0]), (keys.upper, bounds[1])):
                layer_values = np.full(target.shape, np.nan, dtype=np.float32)
                layer_values[:, cols[present]] = values[:, present]
                target.layers[key] = layer_values
        target.var[keys.predicted] = np.isin(np.arange(target.n_vars), cols[present])
        gene_pcc = np.full(target.n_vars, np.nan)
        gene_pcc[cols[present]] = val_pcc[present]
        target.var[keys.val_pcc] = gene_pcc
        target.var[keys.reliable] = gene_pcc >= reliable_pcc
    target.uns[keys.uns] = provenance
    if not isinstance(sdata, AnnData):
        sdata.tables[keys.table] = result
    logger.info(
        "Adding predictions for %d spots x %d genes (`layers[%r]`, `tables[%r]`) and embeddings",
        len(pred),
        len(model.genes),
        keys.layer,
        keys.table,
    )
    return None


def _version() -> str:
    from .. import __version__

    return __version__
