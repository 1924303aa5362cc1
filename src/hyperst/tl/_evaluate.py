"""``hst.tl.evaluate``: per-gene agreement between measured and predicted expression (the paper's metrics).

Both sides are compared on the model's target scale: ``log2(1 + counts)`` (the paper's) or
``log2(1 + counts per 10,000)``. Correlations are computed per gene across spots; a gene that is constant on
either side has no correlation (NaN, flagged ``constant``), which PCC@k counts as 0 as the authors' code does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import DEFAULT_KEY, TARGET_LABELS, TARGETS, Keys, Provenance
from .._data._elements import ADD_TABLE, input_tables
from .._data._target import measured_expression
from .._docs import doc_params
from .._validation import check_choice, check_key, expected_to, key_not_found, pick_one

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["evaluate", "gene_metrics", "gene_pearson"]

logger = logging.getLogger(__name__)

_TOP_K = (10, 50, 200)
_COLUMNS = ["pearson", "spearman", "mse", "mae", "constant", "mean_measured"]


def _pearson(a: np.ndarray, b: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Per-column Pearson r of two ``(N, G)`` arrays; NaN where ``constant``."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = (a * b).sum(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    r = np.full(a.shape[1], np.nan)
    ok = ~constant & (den > 0)
    r[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return r


def _columns(measured: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both ``(N, G)`` arrays as float64, and the genes constant on either side (their correlation is NaN)."""
    measured = np.asarray(measured, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    return measured, predicted, (np.ptp(measured, axis=0) == 0) | (np.ptp(predicted, axis=0) == 0)


#: Bytes of one float64 column block of :func:`gene_pearson` (and of the fit's calibration).
COLUMN_BLOCK_BYTES = 2**21


def column_blocks(n_rows: int, n_cols: int, block_bytes: int | None = None) -> list[slice]:
    """Slices of consecutive columns whose float64 copy of ``n_rows`` rows takes about ``block_bytes``.

    ``None``: :data:`COLUMN_BLOCK_BYTES`.

    No block has a single column unless the array has one: NumPy sums a lone column pairwise, and a block of
    several row by row, as it sums the whole array; so per-column results are the same bits as the whole array's.
    """
    width = max(2, (block_bytes or COLUMN_BLOCK_BYTES) // max(1, 8 * n_rows))
    starts = list(range(0, n_cols, width))
    if len(starts) > 1 and n_cols - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n_cols], strict=True)]


def gene_pearson(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-gene Pearson r of two ``(N, G)`` arrays: ``gene_metrics(...)["pearson"]`` without the other metrics.

    The fit's validation needs only this; the ranks of the Spearman rho alone took about 100 MiB for 32,000
    validation spots of 50 genes. Computed by blocks of genes (:func:`column_blocks`), so the float64 copies
    take one block's memory, not the validation slides' (to the last bit the same values).
    """
    out = np.empty(np.shape(measured)[1])
    for cols in column_blocks(*np.shape(measured)):
        m, p, constant = _columns(measured[:, cols], predicted[:, cols])
        out[cols] = _pearson(m, p, constant)
    return out


def gene_metrics(measured: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Per-gene Pearson r, Spearman rho, MSE, MAE between two ``(N, G)`` arrays (spots x genes).

    Returns
    -------
    Arrays of length ``G``: ``pearson``, ``spearman`` (NaN where a column is constant on either side),
    ``mse``, ``mae``, ``constant`` (bool) and ``mean_measured``.
    """
    from scipy.stats import rankdata

    measured, predicted, constant = _columns(measured, predicted)
    diff = predicted - measured
    return {
        "pearson": _pearson(measured, predicted, constant),
        "spearman": _pearson(rankdata(measured, axis=0), rankdata(predicted, axis=0), constant),
        "mse": (diff * diff).mean(0),
        "mae": np.abs(diff).mean(0),
        "constant": constant,
        "mean_measured": measured.mean(0),
    }


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _nanstd(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.std()) if x.size else float("nan")


def _summary(m: dict[str, np.ndarray]) -> dict[str, float]:
    """Scalar metrics of one group of spots from its per-gene metrics."""
    ranked = np.sort(np.nan_to_num(m["pearson"], nan=0.0))[::-1]
    out = {"pcc_mean": _nanmean(m["pearson"])}
    out.update({f"pcc_at_{k}": float(ranked[:k].mean()) for k in _TOP_K})
    out["spearman_mean"] = _nanmean(m["spearman"])
    out["mse"] = float(m["mse"].mean())
    out["mae"] = float(m["mae"].mean())
    return out


def _definitions(scale: str) -> dict[str, str]:
    on = f"measured and predicted {scale}"
    defs = {"pcc_mean": f"mean over genes of the per-gene Pearson r across spots between {on}; constant genes left out"}
    for k in _TOP_K:
        defs[f"pcc_at_{k}"] = (
            f"mean of the {k} highest per-gene Pearson r across spots between {on} (over all genes when fewer than "
            f"{k} are evaluated); NaN (constant gene) counted as 0, as in the authors' code"
        )
    defs["spearman_mean"] = (
        f"mean over genes of the per-gene Spearman rho across spots between {on}; constant genes left out"
    )
    defs["mse"] = f"per-gene mean squared error across spots between {on}, averaged over genes"
    defs["mae"] = f"per-gene mean absolute error across spots between {on}, averaged over genes"
    return defs


def _resolve_table(sdata: SpatialData | AnnData, table_key: str | None) -> tuple[AnnData, str]:
    from anndata import AnnData

    from .._data import as_spatialdata

    if isinstance(sdata, AnnData):
        return sdata, "adata"
    sd = as_spatialdata(sdata)
    key = pick_one(table_key, input_tables(sd), "table_key", "sdata.tables", "table of spots", fix=ADD_TABLE)
    return sd.tables[key], f"sdata.tables[{key!r}]"


def _select_genes(
    table: AnnData, pred: np.ndarray | sp.spmatrix, genes: str | Sequence[str] | None, keys: Keys, layer: str
) -> np.ndarray:
    """Column indices of the genes to evaluate."""
    if keys.predicted in table.var:
        predicted = table.var[keys.predicted].to_numpy(dtype=bool)
        why = f"`var[{keys.predicted!r}]` is False"
    else:
        dense = pred.toarray() if sp.issparse(pred) else np.asarray(pred)
        predicted = ~np.isnan(dense).all(0)
        why = f"`layers[{layer!r}]` is all NaN"
    if genes is None:
        cols = np.flatnonzero(predicted)
        if not cols.size:
            msg = f"No predicted genes to evaluate ({why} for every gene). Run `hyperst.tl.predict` first."
            raise ValueError(msg)
        return cols
    names = [genes] if isinstance(genes, str) else list(dict.fromkeys(genes))
    if not names:
        msg = expected_to("genes", "name at least one gene", "an empty list")
        raise ValueError(msg)
    cols = table.var_names.get_indexer(names)
    missing = [g for g, c in zip(names, cols, strict=True) if c < 0]
    if missing:
        msg = f"{len(missing)} of the requested genes are not in `var_names`: {missing[:20]}."
        raise KeyError(msg)
    unpredicted = [g for g, c in zip(names, cols, strict=True) if not predicted[c]]
    if unpredicted:
        msg = f"{len(unpredicted)} of the requested genes were not predicted ({why}): {unpredicted[:20]}."
        raise ValueError(msg)
    return cols


def _slides(table: AnnData, slide_key: str | None) -> tuple[str | None, np.ndarray, list[str]]:
    """Find the obs column naming each spot's slide; return it, its integer codes (-1: unknown) and the names."""
    if slide_key is not None:
        check_key(slide_key, table.obs, "obs")
    else:
        region_key = table.uns.get("spatialdata_attrs", {}).get("region_key")
        if region_key is None or region_key not in table.obs or table.obs[region_key].nunique() < 2:
            return None, np.zeros(table.n_obs, dtype=int), []
        slide_key = region_key
    codes, uniques = pd.factorize(table.obs[slide_key], sort=True)
    return slide_key, np.asarray(codes), [str(u) for u in uniques]


def _metrics_dict(
    measured: np.ndarray,
    predicted: np.ndarray,
    pooled: dict[str, np.ndarray],
    codes: np.ndarray,
    slide_names: list[str],
    scale: str,
) -> dict[str, dict]:
    summary = _summary(pooled)
    per_slide = []
    for s in range(len(slide_names)):
        rows = codes == s
        per_slide.append(_summary(gene_metrics(measured[rows], predicted[rows])))
    out: dict[str, dict] = {}
    for name, definition in _definitions(scale).items():
        entry: dict = {"pooled": summary[name]}
        if per_slide:
            values = [p[name] for p in per_slide]
            entry.update(per_slide_mean=_nanmean(values), per_slide_std=_nanstd(values), per_slide=values)
        entry["definition"] = definition
        out[name] = entry
    out["n_genes"] = {"pooled": int(measured.shape[1]), "definition": "genes evaluated"}
    n_spots: dict = {"pooled": int(measured.shape[0])}
    if per_slide:
        counts = [int((codes == s).sum()) for s in range(len(slide_names))]
        n_spots.update(per_slide_mean=float(np.mean(counts)), per_slide_std=float(np.std(counts)), per_slide=counts)
    n_spots["definition"] = "spots evaluated (pooled: all spots of the table; per slide: the spots of each slide)"
    out["n_spots"] = n_spots
    return out


@doc_params
def evaluate(
    sdata: SpatialData | AnnData,
    *,
    table_key: str | None = None,
    layer: str = DEFAULT_KEY,
    genes: str | Sequence[str] | None = None,
    counts_layer: str | None = None,
    target: Literal["log2", "log2_cp10k"] | None = None,
    slide_key: str | None = None,
    key_added: str = DEFAULT_KEY,
    inplace: bool = True,
) -> pd.DataFrame:
    """Compare predicted with measured expression, gene by gene (PCC, PCC@k, Spearman, MSE, MAE).

    Metrics follow the paper (arXiv 2511.22107) and the authors' code. Measured raw counts are put on the model's
    target scale; each gene's Pearson r, Spearman rho, MSE and MAE are taken across spots. A gene that is constant
    on either side gets NaN correlations (``constant=True``); PCC@k counts it as 0, the mean PCC leaves it out. The
    summary is computed pooled over all spots of the table and, when there are several slides, within each slide and
    then averaged (mean and population std over slides): the authors' ``main.py`` pools, their ``eval.ipynb`` goes
    per slide.

    Parameters
    ----------
    {sdata}
        An AnnData is used as the table itself.
    {table_key}
    layer
        Layer of predictions, on the target scale (written by :func:`hyperst.tl.predict`).
    genes
        Genes to evaluate; ``None``: every gene flagged in ``var['<key_added>_predicted']`` (or, without
        that column, every gene with predictions in ``layer``).
    counts_layer
        Layer of measured raw counts; ``None``: ``X``.
    target
        Scale of the comparison: ``"log2"`` (``log2(1 + counts)``) or ``"log2_cp10k"``
        (``log2(1 + counts / library size x 10,000)``, library size over all genes of the table); ``None``
        reads ``uns['<key_added>']['target']`` (``"log2"`` when absent).
    slide_key
        Column of ``obs`` naming each spot's slide, for the per-slide summary; ``None``: the table's
        ``spatialdata_attrs`` region key when it holds several values, else pooled only.
    {key_added}
    inplace
        Write the summary and per-gene PCC into the table; ``False`` writes nothing.

    Returns
    -------
    Per-gene metrics pooled over all spots, indexed by gene and sorted by Pearson r (NaN last), with columns
    ``pearson``, ``spearman``, ``mse``, ``mae``, ``constant`` and ``mean_measured``. With ``inplace=True``
    the table also gets:

    - ``uns['<key_added>']['metrics']``: ``pcc_mean``, ``pcc_at_10``, ``pcc_at_50``, ``pcc_at_200``,
      ``spearman_mean``, ``mse``, ``mae``, ``n_genes``, ``n_spots``, each a dict with ``pooled``, with
      ``per_slide_mean``, ``per_slide_std`` and ``per_slide`` when evaluated per slide, and ``definition``;
      and ``evaluation``: the layer, counts, target, slide key and slide names used;
    - ``var['<key_added>_pcc']``: per-gene Pearson r (NaN for genes not evaluated).

    Raises
    ------
    KeyError
        If ``layer``, ``counts_layer``, ``slide_key`` or a requested gene is missing.
    ValueError
        If the table holds no raw counts, or a requested gene was not predicted.
    """
    keys = Keys(key_added)
    table, name = _resolve_table(sdata, table_key)
    if layer not in table.layers:
        raise KeyError(key_not_found(layer, f"{name}.layers", table.layers.keys(), "Run `hyperst.tl.predict` first."))
    if table.n_obs == 0:
        msg = f"Table `{name}` has no spots to evaluate. Pass `table_key=` naming the table that was predicted."
        raise ValueError(msg)
    provenance = table.uns.get(keys.uns)
    if target is None:
        target = provenance.get(Provenance.target, "log2") if isinstance(provenance, dict) else "log2"
    check_choice(target, "target", TARGETS)
    raw = table.layers[layer]
    cols = _select_genes(table, raw, genes, keys, layer)
    slide_key, codes, slide_names = _slides(table, slide_key)
    predicted = raw[:, cols]
    predicted = predicted.toarray() if sp.issparse(predicted) else np.asarray(predicted)
    predicted = predicted.astype(np.float64)
    bad = ~np.isfinite(predicted).all(0)
    if bad.any():
        bad_genes = list(table.var_names[cols[bad]][:20])
        msg = f"`{name}.layers[{layer!r}]` has NaN or infinite predictions for genes {bad_genes}."
        raise ValueError(msg)
    measured = measured_expression(table, name, counts_layer, target, cols)

    per_gene = gene_metrics(measured, predicted)
    frame = pd.DataFrame({c: per_gene[c] for c in _COLUMNS}, index=pd.Index(table.var_names[cols], name="gene"))
    frame = frame.sort_values("pearson", ascending=False, na_position="last", kind="stable")
    metrics = _metrics_dict(measured, predicted, per_gene, codes, slide_names, TARGET_LABELS[target])
    logger.info(
        "Evaluated %d genes over %d spots%s: mean PCC %.3f, PCC@10 %.3f, MSE %.3f",
        len(cols),
        table.n_obs,
        f" ({len(slide_names)} slides)" if slide_names else "",
        metrics["pcc_mean"]["pooled"],
        metrics["pcc_at_10"]["pooled"],
        metrics["mse"]["pooled"],
    )
    if not inplace:
        return frame

    setup: dict = {
        "layer": layer,
        "counts": "X" if counts_layer is None else f"layers[{counts_layer!r}]",
        "target": target,
    }
    if slide_key is not None:
        setup.update(slide_key=slide_key, slides=slide_names)
    setup["definition"] = "what was compared: predictions in `layer`, measured `counts` on the `target` scale"
    metrics["evaluation"] = setup
    store = dict(provenance) if isinstance(provenance, dict) else {}
    store[keys.metrics] = metrics
    table.uns[keys.uns] = store
    pcc = np.full(table.n_vars, np.nan)
    pcc[cols] = per_gene["pearson"]
    table.var[keys.pcc] = pcc
    logger.info("Adding `%s.uns[%r][%r]`, `%s.var[%r]`", name, keys.uns, keys.metrics, name, keys.pcc)
    return frame
