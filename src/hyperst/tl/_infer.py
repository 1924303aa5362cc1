"""The steps of ``hst.tl.predict`` after the features: inference, the predictions table, and the writes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import OUTPUT_TABLE_FLAG, STREAMS, Keys, Provenance
from .._version import __version__
from ._poincare import poincare_coordinates
from ._prepare import geometry_from, slide_gene_arrays
from ._trust import spot_radius

if TYPE_CHECKING:
    import scipy.sparse as sp
    import torch
    from anndata import AnnData
    from spatialdata import SpatialData

    from .._model import HyperST
    from ._prepare import SlideInput

__all__ = ["Inference", "infer", "prediction_table", "provenance", "write_predictions"]

logger = logging.getLogger(__name__)


@dataclass
class Inference:
    """What the model computes for the spots of one slide."""

    pred: np.ndarray  # (N, G) predicted expression, averaged over the views
    radius: np.ndarray | None  # (N,) geodesic radius of the spot image embedding (None without a Lorentz space)
    obsm: dict[str, np.ndarray]  # embeddings by obsm key
    obs: dict[str, np.ndarray]  # per-spot values by obs key
    curv: float | None  # curvature magnitude of the space, for a hyperbolic model


def _batched(fn: Any, *arrays: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """Run ``fn`` on slices of ``arrays`` and concatenate each output (a dict, or one tensor as ``"y"``)."""
    import torch

    parts = []
    with torch.inference_mode():
        for start in range(0, len(arrays[0]), batch):
            res = fn(*(torch.from_numpy(np.ascontiguousarray(a[start : start + batch])) for a in arrays))
            parts.append({k: v.float().numpy() for k, v in (res.items() if isinstance(res, dict) else [("y", res)])})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _lorentz(module: torch.nn.Module, space: np.ndarray) -> np.ndarray:
    import torch

    from ..lorentz import to_lorentz_full

    with torch.inference_mode():
        return to_lorentz_full(torch.from_numpy(space), module.curv.detach()).numpy().astype(np.float32)


def infer(
    model: HyperST,
    slide: SlideInput,
    spot: np.ndarray,
    niche: np.ndarray,
    *,
    keys: Keys,
    layer: str | None,
    connectivities: sp.spmatrix,
) -> Inference:
    """Predictions (mean over the ``(N, V, F)`` features' views), embeddings and radii of every spot.

    The gene embeddings are added when the slide's table holds counts of the model's genes.
    """
    module, cfg = model.module.cpu().eval(), model.config
    views = spot.shape[1]
    pred = np.mean([_batched(module.predict, spot[:, v], niche[:, v])["y"] for v in range(views)], axis=0)
    radius = spot_radius(module, spot[:, 0], niche[:, 0])
    hyperbolic = cfg.module.alignment and cfg.module.geometry == "lorentz"
    curv = float(module.curv.detach()) if hyperbolic else None
    obsm: dict[str, np.ndarray] = {}
    obs: dict[str, np.ndarray] = {}
    if cfg.module.alignment:
        gene_inputs = None
        try:
            gene_inputs = slide_gene_arrays(slide, model.genes, cfg, layer=layer, connectivities=connectivities)
        except (KeyError, ValueError) as err:
            logger.info("No gene embeddings: %s", err)
        if gene_inputs is not None:
            out = _batched(module, spot[:, 0], niche[:, 0], gene_inputs[0], gene_inputs[1])
        else:
            out = _batched(module.embed, spot[:, 0], niche[:, 0])
        for stream in STREAMS:
            if stream in out:
                space = out[stream]
                lifted = _lorentz(module, space) if hyperbolic else space.astype(np.float32)
                obsm[keys.stream_embedding(stream)] = lifted
    if hyperbolic:
        obsm[keys.poincare], obs[keys.radius] = poincare_coordinates(obsm[keys.embedding], curv)
    return Inference(pred, radius, obsm, obs, curv)


def provenance(
    model: HyperST, slide: SlideInput, inference: Inference, *, views: int, qc: dict, intervals: dict | None
) -> dict[str, Any]:
    """``uns[key_added]``: version, model hash, genes, encoder, scale, patch sizes, geometry, QC (zarr-safe)."""
    cfg, layout = model.config, slide.layout
    out: dict[str, Any] = {
        "version": __version__,
        "model_hash": model.fingerprint(),
        "genes": list(model.genes),
        "encoder": {k: v for k, v in model.encoder.to_dict().items() if v is not None},
        "microns_per_pixel": float(layout.microns_per_pixel),
        "scale_source": layout.scale_source,
        "spot_patch_um": float(cfg.spot_um),
        "niche_patch_um": float(geometry_from(cfg).sides_px(layout)[1] * layout.microns_per_pixel),
        "geometry": cfg.module.geometry,
        Provenance.target: cfg.target,
        "views": views,
    }
    if inference.curv is not None:
        out[Provenance.curvature] = inference.curv
    out[Provenance.qc] = qc
    if intervals is not None:
        out[Provenance.intervals] = intervals
    return json.loads(json.dumps(out, default=list))  # tuples -> lists


def prediction_table(
    slide: SlideInput,
    model: HyperST,
    inference: Inference,
    graph: tuple[sp.spmatrix, sp.spmatrix],
    *,
    keys: Keys,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    reliable_pcc: float,
    uns: dict[str, Any],
) -> AnnData:
    """``sdata.tables[key_added]``: predictions (var = the model's genes) annotating the slide's spots."""
    import anndata as ad
    from spatialdata.models import TableModel

    el, table = slide.layout.elements, slide.table
    obs = pd.DataFrame(index=table.obs_names.copy())
    for col in (el.region_key, el.instance_key):
        obs[col] = table.obs[col].to_numpy()
    obs[el.region_key] = pd.Categorical(obs[el.region_key])  # as TableModel wants it (no conversion warning)
    for k, v in inference.obs.items():
        obs[k] = v
    val_pcc = _val_pcc(model)
    var = pd.DataFrame(index=pd.Index(model.genes))
    var[keys.val_pcc] = val_pcc
    var[keys.reliable] = val_pcc >= reliable_pcc  # NaN (constant on validation, or no validation) -> False
    result = ad.AnnData(X=inference.pred.astype(np.float32), obs=obs, var=var)
    if bounds is not None:
        result.layers[keys.lower], result.layers[keys.upper] = bounds
    for k, v in inference.obsm.items():
        result.obsm[k] = v
    result.obsp[keys.connectivities], result.obsp[keys.distances] = graph
    result.uns[keys.uns] = uns
    result.uns[OUTPUT_TABLE_FLAG] = True
    return TableModel.parse(result, region=el.shapes_key, region_key=el.region_key, instance_key=el.instance_key)


def _val_pcc(model: HyperST) -> np.ndarray:
    val = model.training.val_pcc
    if val is None:
        return np.full(len(model.genes), np.nan)
    return np.array([np.nan if v is None else v for v in val], dtype=np.float64)


def _spread(target: AnnData, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``(N, G)`` values of the model's genes as a layer of ``target``: NaN for its genes not predicted."""
    present = cols >= 0
    full = np.full(target.shape, np.nan, dtype=np.float32)
    full[:, cols[present]] = values[:, present]
    return full


def write_predictions(
    sdata: SpatialData | AnnData,
    slide: SlideInput,
    result: AnnData,
    inference: Inference,
    graph: tuple[sp.spmatrix, sp.spmatrix],
    *,
    keys: Keys,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    reliable_pcc: float,
) -> None:
    """Write the results into the spots' table (an AnnData given as ``sdata`` is that table); add ``result``."""
    from anndata import AnnData

    target = sdata if isinstance(sdata, AnnData) else slide.table
    for k, v in inference.obsm.items():
        target.obsm[k] = v
    for k, v in inference.obs.items():
        target.obs[k] = v
    target.obsp[keys.connectivities], target.obsp[keys.distances] = graph
    if target.n_vars:
        cols = target.var_names.get_indexer(result.var_names)
        present = cols >= 0
        target.layers[keys.layer] = _spread(target, cols, inference.pred)
        if bounds is not None:
            target.layers[keys.lower], target.layers[keys.upper] = (_spread(target, cols, b) for b in bounds)
        target.var[keys.predicted] = np.isin(np.arange(target.n_vars), cols[present])
        gene_pcc = np.full(target.n_vars, np.nan)
        gene_pcc[cols[present]] = _val_pcc_of(result, keys)[present]
        target.var[keys.val_pcc] = gene_pcc
        target.var[keys.reliable] = gene_pcc >= reliable_pcc
    target.uns[keys.uns] = result.uns[keys.uns]
    if not isinstance(sdata, AnnData):
        sdata.tables[keys.table] = result
    logger.info(
        "Adding predictions for %d spots x %d genes (`layers[%r]`, `tables[%r]`) and embeddings",
        result.n_obs,
        result.n_vars,
        keys.layer,
        keys.table,
    )


def _val_pcc_of(result: AnnData, keys: Keys) -> np.ndarray:
    return result.var[keys.val_pcc].to_numpy(dtype=np.float64)
