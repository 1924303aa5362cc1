"""``hst.pp.niche_graph``: which spots form each spot's niche."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._constants import DEFAULT_KEY, PSEUDOSPOTS_KEY, Keys
from .._data import as_spatialdata, slide_layout
from .._docs import doc_params
from .._utils import quiet_loggers
from .._validation import expected

if TYPE_CHECKING:
    from anndata import AnnData
    from scipy.sparse import csr_matrix
    from spatialdata import SpatialData

__all__ = ["niche_graph"]

logger = logging.getLogger(__name__)


def _table_and_centres(
    data: SpatialData | AnnData, table_key: str | None, shapes_key: str | None
) -> tuple[AnnData, np.ndarray, str]:
    """Return the table to write to, its spot centres and the shapes key."""
    from anndata import AnnData

    if isinstance(data, AnnData) and "spatial" in data.obsm and "spatial" not in data.uns:
        return data, np.asarray(data.obsm["spatial"], dtype=float)[:, :2], "anndata"
    sdata = as_spatialdata(data)
    layout = slide_layout(sdata, table_key=table_key, shapes_key=shapes_key, need_image=False)
    table = data if isinstance(data, AnnData) else sdata.tables[layout.elements.table_key]
    return table, layout.centres_px, layout.elements.shapes_key


@doc_params
def niche_graph(
    sdata: SpatialData | AnnData,
    *,
    table_key: str | None = None,
    shapes_key: str | None = None,
    n_rings: int = 1,
    n_neighs: int | None = None,
    key_added: str = DEFAULT_KEY,
    inplace: bool = True,
) -> tuple[csr_matrix, csr_matrix] | None:
    """Build the niche graph: each spot's ring(s) of grid neighbours.

    The graph comes from squidpy's spatial-neighbour builders: a grid graph for Visium (hexagonal, 6
    neighbours) and legacy ST (square, 4 neighbours), detected from the spot layout, and a k-nearest-neighbour
    graph (``n_neighs``, default 6) for other layouts. Spot centres are read from the circles through the
    table's ``instance_key``, so tables filtered after reading work; ``obsm['spatial']`` is never changed. A
    table of a single spot gets an empty graph (the spot is its own niche). Pseudo-spots
    (:func:`hyperst.pp.pseudospots`) are linked by their lattice indices (``array_row``, ``array_col``): the
    4 neighbours per ring that squidpy's grid graph gives on a full square lattice, exactly, also where the
    tissue leaves pseudo-spots isolated.

    Parameters
    ----------
    {sdata}
        An AnnData with ``obsm['spatial']`` and no ``uns['spatial']`` is used as is.
    {table_key}
    {shapes_key}
    n_rings
        Rings of grid neighbours in the niche (1: the spot's direct neighbours).
    n_neighs
        Neighbours per spot for non-grid layouts; ignored on a grid.
    {key_added}
    inplace
        Write into the table; ``False`` returns the matrices and changes nothing.

    Returns
    -------
    ``None`` with ``inplace=True``, after writing to the spots' table:

    - ``obsp['{{key_added}}_connectivities']``: binary adjacency of the niche graph;
    - ``obsp['{{key_added}}_distances']``: ring number of each neighbour (grid) or distance (kNN);
    - ``uns['{{key_added}}_neighbors']``: the parameters used.

    With ``inplace=False``, the ``(connectivities, distances)`` sparse matrices.

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.synthetic(n_slides=1, n_spots=300)[0]
    >>> hst.pp.niche_graph(sdata)
    >>> sdata.tables["table"].obsp["hyperst_connectivities"].sum(1).max()
    np.float64(6.0)
    """
    from anndata import AnnData

    from .._utils import import_squidpy

    sq = import_squidpy()

    from .._data import detect_grid

    if not isinstance(n_rings, int) or isinstance(n_rings, bool) or n_rings < 1:
        raise ValueError(expected("n_rings", "an integer >= 1", n_rings))
    keys = Keys(key_added)
    table, centres, _ = _table_and_centres(sdata, table_key, shapes_key)
    if len(centres) == 0:
        msg = "Found no spots to build a niche graph on: the table is empty. Pass `table_key=` naming the spots."
        raise ValueError(msg)
    if len(centres) == 1:  # a lone spot is its own niche: an empty graph, not an error
        empty = sp.csr_matrix((1, 1), dtype=np.float32)
        params = {
            "connectivities_key": keys.connectivities,
            "distances_key": keys.distances,
            "params": {"grid": "none", "n_rings": n_rings, "pitch": float("nan")},
        }
        return _store(table, empty, empty.copy(), params, keys, inplace)
    if isinstance(table.uns.get(PSEUDOSPOTS_KEY), dict) and {"array_row", "array_col"} <= set(table.obs.columns):
        from .._data._aggregate import lattice_graph

        conn, dist = lattice_graph(
            table.obs["array_row"].to_numpy(np.int64), table.obs["array_col"].to_numpy(np.int64), n_rings
        )
        params = {
            "connectivities_key": keys.connectivities,
            "distances_key": keys.distances,
            "params": {"grid": "pseudospots", "n_rings": n_rings, "n_neighbors": 4},
        }
        return _store(table, conn, dist, params, keys, inplace)
    grid = detect_grid(centres)
    tmp = AnnData(obs={"_": np.zeros(len(centres))}, obsm={"spatial": centres})
    k = n_neighs if n_neighs is not None else 6
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(expected("n_neighs", "a positive integer", n_neighs))
    with quiet_loggers("spatialdata._logging"):  # squidpy logs each graph it builds through this logger
        if grid.kind in ("hex", "square"):
            sq.gr.spatial_neighbors_grid(
                tmp, spatial_key="spatial", n_neighs=grid.n_neighbors, n_rings=n_rings, key_added=keys.stem
            )
        else:
            sq.gr.spatial_neighbors_knn(
                tmp, spatial_key="spatial", n_neighs=min(k * n_rings, len(centres) - 1), key_added=keys.stem
            )
    conn = tmp.obsp[keys.connectivities].tocsr()
    dist = tmp.obsp[keys.distances].tocsr()
    params = dict(tmp.uns[keys.neighbors_uns])
    extra = {"grid": grid.kind, "n_rings": n_rings, "pitch": float(grid.pitch)}
    params["params"] = {**params.get("params", {}), **extra}
    return _store(table, conn, dist, params, keys, inplace)


def _store(
    table: AnnData,
    conn: csr_matrix,
    dist: csr_matrix,
    params: dict,
    keys: Keys,
    inplace: bool,  # noqa: FBT001
) -> tuple[csr_matrix, csr_matrix] | None:
    """Return the matrices, or write them and the parameters into ``table``."""
    if not inplace:
        return conn, dist
    logger.info(
        "Adding `obsp['%s']`, `obsp['%s']` (%s grid)", keys.connectivities, keys.distances, params["params"]["grid"]
    )
    table.obsp[keys.connectivities] = conn
    table.obsp[keys.distances] = dist
    table.uns[keys.neighbors_uns] = params
    return None
