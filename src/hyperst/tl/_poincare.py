"""``hst.tl.poincare``: a deterministic 2-D Poincaré-disk view of Lorentz embeddings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .._constants import Keys
from .._data import as_spatialdata, resolve_elements
from .._docs import doc_params
from .._validation import key_not_found

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["poincare", "poincare_coordinates"]

logger = logging.getLogger(__name__)


def poincare_coordinates(lorentz_full: np.ndarray, curv: float) -> tuple[np.ndarray, np.ndarray]:
    """Project Lorentz points (time first) to the unit Poincaré disk, keeping each point's geodesic radius.

    The tangent vectors at the origin (log map) are reduced to 2-D by PCA (signs fixed so the largest loading
    of each axis is positive); each 2-D vector is then rescaled to the point's geodesic distance ``d`` from
    the origin and mapped to the disk at radius ``tanh(sqrt(curv) * d / 2)``.

    Returns
    -------
    ``(N, 2)`` disk coordinates (norm < 1) and ``(N,)`` geodesic radii.
    """
    x = np.asarray(lorentz_full, dtype=np.float64)[:, 1:]
    norm = np.linalg.norm(x, axis=1)
    sc = np.sqrt(curv)
    radius = np.arcsinh(sc * norm) / sc  # d(0, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        tangent = np.where(norm[:, None] > 0, x / norm[:, None] * radius[:, None], 0.0)
    centred = tangent - tangent.mean(0)
    if len(x) >= 2 and x.shape[1] >= 2:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[:2]
        axes *= np.sign(axes[np.arange(2), np.abs(axes).argmax(1)])[:, None]
        flat = tangent @ axes.T
    else:
        flat = np.zeros((len(x), 2))
        flat[:, 0] = tangent[:, 0] if x.shape[1] else 0.0
    flat_norm = np.linalg.norm(flat, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        direction = np.where(flat_norm[:, None] > 0, flat / flat_norm[:, None], 0.0)
    disk = direction * np.tanh(sc * radius / 2)[:, None]
    return disk.astype(np.float32), radius.astype(np.float32)


@doc_params
def poincare(
    sdata: SpatialData | AnnData,
    *,
    basis: str = "hyperst",
    table_key: str | None = None,
    key_added: str | None = None,
    inplace: bool = True,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Compute a 2-D Poincaré-disk view of the spot embeddings written by :func:`hyperst.tl.predict`.

    Parameters
    ----------
    {sdata}
        An AnnData is used as the table itself.
    basis
        Stem of the embedding: reads ``obsm['X_<basis>']`` and the curvature in ``uns['<basis>']``.
    {table_key}
    key_added
        Stem of the keys written; defaults to ``basis``.
    inplace
        Write into the table; ``False`` returns the arrays.

    Returns
    -------
    ``None`` with ``inplace=True``, after writing ``obsm['X_<key_added>_poincare']`` (``(N, 2)``, inside the
    unit disk) and ``obs['<key_added>_radius']`` (geodesic distance to the origin). Otherwise the
    ``(disk, radius)`` arrays.
    """
    from anndata import AnnData

    if isinstance(sdata, AnnData):
        table = sdata
    else:
        sd = as_spatialdata(sdata)
        table = sd.tables[resolve_elements(sd, table_key=table_key, need_image=False).table_key]
    src, out = Keys(basis), Keys(key_added or basis)
    if src.embedding not in table.obsm:
        raise KeyError(key_not_found(src.embedding, "obsm", table.obsm.keys(), "Run `hyperst.tl.predict` first."))
    curv = table.uns.get(src.uns, {}).get("curvature")
    if curv is None:
        msg = f"No curvature in `uns[{src.uns!r}]['curvature']`: the embedding is not hyperbolic."
        raise ValueError(msg)
    disk, radius = poincare_coordinates(np.asarray(table.obsm[src.embedding]), float(curv))
    if not inplace:
        return disk, radius
    table.obsm[out.poincare] = disk
    table.obs[out.radius] = radius
    logger.info("Adding `obsm['%s']`, `obs['%s']`", out.poincare, out.radius)
    return None
