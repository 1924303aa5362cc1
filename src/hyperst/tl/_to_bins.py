"""``hst.tl.to_bins``: the pseudo-spots' predictions copied to the Visium HD bins or cells inside them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._constants import DEFAULT_KEY, OUTPUT_TABLE_FLAG, PSEUDOSPOTS_KEY, Keys
from .._validation import expected, expected_type

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["to_bins"]

logger = logging.getLogger(__name__)


def _pseudo_params(sdata: SpatialData, pseudospots_key: str, keys: Keys) -> dict:
    from spatialdata.models import get_table_keys

    if keys.table not in sdata.tables:
        msg = (
            f"No predictions `tables[{keys.table!r}]` to copy to the bins or cells. Run "
            f"`hyperst.tl.predict(sdata, model, key_added={keys.stem!r})` first."
        )
        raise KeyError(msg)
    table = sdata.tables.get(pseudospots_key)
    params = None if table is None else table.uns.get(PSEUDOSPOTS_KEY)
    if not isinstance(params, dict):
        msg = (
            f"`tables[{pseudospots_key!r}]` is not a table of pseudo-spots written by `hyperst.pp.pseudospots` "
            f"(tables: {sorted(sdata.tables)}). Pass `pseudospots_key=` naming it."
        )
        raise KeyError(msg)
    if get_table_keys(sdata.tables[keys.table])[0] != get_table_keys(table)[0]:
        msg = (
            f"The predictions `tables[{keys.table!r}]` annotate other spots than the pseudo-spots "
            f"`tables[{pseudospots_key!r}]`. Predict on the pseudo-spots first: "
            f"`hyperst.tl.predict(sdata, model, table_key={pseudospots_key!r})`."
        )
        raise ValueError(msg)
    return params


def _assignment(sdata: SpatialData, table_key: str, pseudospots_key: str, params: dict) -> tuple[np.ndarray, str]:
    """Row of the pseudo-spot table for each row of ``table_key`` (``-1``: none), and how it was found."""
    import pandas as pd
    from scipy.spatial import cKDTree
    from spatialdata.models import get_table_keys

    from .._data import members

    pseudo = sdata.tables[pseudospots_key]
    source = sdata.tables[table_key]
    column = params.get("members_key")
    if table_key == params["source_table"] and column in source.obs.columns:
        instance_key = get_table_keys(pseudo)[2]
        spot_ids = pd.Index(pseudo.obs[instance_key].to_numpy())
        return spot_ids.get_indexer(source.obs[column].to_numpy(dtype=np.int64)), f"`obs[{column!r}]`"
    # any other table (another bin size, the cells of a fit's pseudo-spots): the pseudo-spot whose square
    # holds the bin's or cell's centre
    m = members(sdata, table_key, image_key=params["image_key"], microns_per_pixel=params["microns_per_pixel"])
    centres = np.asarray(pseudo.obsm["spatial"], dtype=float)
    half = params["size_um"] / params["microns_per_pixel"] / 2
    dist, nearest = cKDTree(centres).query(m.centres_px, k=1, p=np.inf)
    return np.where(dist <= half * (1 + 1e-9), nearest, -1), "the pseudo-spot square holding each centre"


def to_bins(
    sdata: SpatialData,
    *,
    table_key: str | None = None,
    genes: Sequence[str] | None = None,
    pseudospots_key: str = PSEUDOSPOTS_KEY,
    key_added: str = DEFAULT_KEY,
    inplace: bool = True,
) -> AnnData | None:
    """Copy the predictions of pseudo-spots to the Visium HD bins or the cells they were summed from.

    Each bin or cell gets the prediction of the pseudo-spot it lies in (the spot and niche patches centred on
    that pseudo-spot), so the map is piecewise constant at the pseudo-spots' size: it places the pseudo-spot
    predictions on the bins and cells for joint analysis, it does not resolve finer detail. For a finer map,
    aggregate smaller pseudo-spots (``hyperst.pp.pseudospots(sdata, size_um=...)``) or tile the image
    (:func:`hyperst.pp.tile`) and predict again. Bins or cells in no kept pseudo-spot get NaN.

    Parameters
    ----------
    sdata
        A slide on which :func:`hyperst.tl.predict` ran over pseudo-spots (:func:`hyperst.pp.pseudospots`).
    table_key
        Table of bins or cells to predict; the pseudo-spots' source table when ``None``. Another table (e.g.
        ``square_016um`` for pseudo-spots of 8 µm bins) is matched by position: each row gets the pseudo-spot
        whose square holds its centre.
    genes
        Genes to copy (``None``: all the model's genes). 660,000 bins x 200 genes take 0.5 GB, three times
        that with the interval bounds.
    pseudospots_key
        Table of the pseudo-spots.
    key_added
        Stem of the predictions: reads ``tables[key_added]`` and writes ``tables[f"{key_added}_{table_key}"]``.
    inplace
        Write into ``sdata``; ``False`` returns the table and changes nothing.

    Returns
    -------
    ``None`` with ``inplace=True``, after adding ``sdata.tables[f"{key_added}_{table_key}"]``: bins or cells x
    genes, the predictions in ``X`` (float32, NaN outside the pseudo-spots) and, when predicted, the interval
    bounds in ``layers[f"{key_added}_lower"]``/``[f"{key_added}_upper"]``, annotating the bins' or cells'
    shapes with the source table's ``region``/``instance_key``; ``obs[f"{key_added}_spot"]`` names each
    row's pseudo-spot (empty where none). With ``inplace=False``, that table.

    Raises
    ------
    KeyError
        If there are no predictions, no pseudo-spots, or ``table_key``/``genes`` are not found.
    ValueError
        If the predictions are not those of the pseudo-spots.

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.synthetic_visium_hd(tissue_mm2=0.2)[0]
    >>> hst.tl.predict(sdata, model)  # doctest: +SKIP
    >>> hst.tl.to_bins(sdata)  # doctest: +SKIP
    >>> sdata.tables["hyperst_square_008um"]  # doctest: +SKIP
    """
    from spatialdata import SpatialData

    if not isinstance(sdata, SpatialData):
        raise TypeError(expected_type("sdata", "a SpatialData object", sdata))
    keys = Keys(key_added)
    params = _pseudo_params(sdata, pseudospots_key, keys)
    table_key = params["source_table"] if table_key is None else table_key
    if table_key not in sdata.tables:
        msg = f"Table `{table_key!r}` not found in `sdata.tables`. Available: {sorted(sdata.tables)}."
        raise KeyError(msg)
    pred = sdata.tables[keys.table]
    names, cols = _genes(pred, genes, keys)
    rows, how = _assignment(sdata, table_key, pseudospots_key, params)
    order = _prediction_order(sdata, pseudospots_key, keys)
    provenance = {"pseudospots": pseudospots_key, "method": "pseudo-spot", "assignment": how}
    result = _bins_table(sdata.tables[table_key], pred, (names, cols), rows, order, keys, provenance)
    if not inplace:
        return result
    out_key = keys.bins_table(table_key)
    logger.info(
        "Adding `tables[%r]`: predictions of %d genes for %d of %d rows of `%s` (from %s)",
        out_key,
        len(names),
        int((rows >= 0).sum()),
        len(rows),
        table_key,
        how,
    )
    sdata.tables[out_key] = result
    return None


def _genes(pred: AnnData, genes: Sequence[str] | None, keys: Keys) -> tuple[list[str], np.ndarray]:
    """Return the genes to copy and their columns in the predictions; raise if one is not predicted."""
    names = list(pred.var_names) if genes is None else list(genes)
    if isinstance(genes, str) or not names:
        raise ValueError(expected("genes", "None or a non-empty list of gene names", genes))
    cols = pred.var_names.get_indexer(names)
    if (cols < 0).any():
        missing = [g for g, c in zip(names, cols, strict=True) if c < 0]
        msg = f"{len(missing)} genes are not predicted in `tables[{keys.table!r}]` (e.g. {missing[:5]})."
        raise KeyError(msg)
    return names, cols


def _prediction_order(sdata: SpatialData, pseudospots_key: str, keys: Keys) -> np.ndarray:
    """Return the row of the predictions for each pseudo-spot, in the pseudo-spot table's order."""
    order = sdata.tables[keys.table].obs_names.get_indexer(sdata.tables[pseudospots_key].obs_names)
    if (order < 0).any():
        msg = (
            f"{int((order < 0).sum())} pseudo-spots of `tables[{pseudospots_key!r}]` have no prediction in "
            f"`tables[{keys.table!r}]`. Predict on all of them again: `hyperst.tl.predict(sdata, model)`."
        )
        raise ValueError(msg)
    return order


def _bins_table(
    source: AnnData,
    pred: AnnData,
    genes: tuple[list[str], np.ndarray],
    rows: np.ndarray,
    order: np.ndarray,
    keys: Keys,
    provenance: dict,
) -> AnnData:
    """Build the bins' or cells' table of predictions, annotating the source table's shapes."""
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel, get_table_keys

    names, cols = genes
    region, region_key, instance_key = get_table_keys(source)
    obs = pd.DataFrame(index=source.obs_names.copy())
    obs[region_key] = pd.Categorical(source.obs[region_key].to_numpy())
    obs[instance_key] = source.obs[instance_key].to_numpy()
    hit = rows >= 0
    spot_names = np.asarray(pred.obs_names, dtype=object)[order]
    obs[f"{keys.stem}_spot"] = np.where(hit, spot_names[np.maximum(rows, 0)], "")

    def spread(values: np.ndarray) -> np.ndarray:
        out = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
        out[hit] = np.asarray(values, dtype=np.float32)[order][:, cols][rows[hit]]
        return out

    result = ad.AnnData(X=spread(pred.X), obs=obs, var=pd.DataFrame(index=pd.Index(names)))
    for layer in (keys.lower, keys.upper):
        if layer in pred.layers:
            result.layers[layer] = spread(pred.layers[layer])
    result.uns[keys.uns] = provenance
    result.uns[OUTPUT_TABLE_FLAG] = True
    return TableModel.parse(result, region=region, region_key=region_key, instance_key=instance_key)
