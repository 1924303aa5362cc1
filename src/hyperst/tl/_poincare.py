"""``hst.tl.poincare``: a deterministic 2-D Poincaré-disk view of Lorentz embeddings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .._constants import DEFAULT_KEY, STREAMS, Keys, Provenance
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
    import torch

    from ..lorentz import dist0

    x = np.asarray(lorentz_full, dtype=np.float64)[:, 1:]
    norm = np.linalg.norm(x, axis=1)
    sc = np.sqrt(curv)
    radius = dist0(torch.from_numpy(x), curv).numpy()  # float64, as the rest of the projection
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
    basis: str = DEFAULT_KEY,
    table_key: str | None = None,
    key_added: str | None = None,
    streams: bool = False,
    inplace: bool = True,
) -> tuple[np.ndarray, np.ndarray] | dict[str, np.ndarray] | None:
    """Compute a 2-D Poincaré-disk view of the spot embeddings written by :func:`hyperst.tl.predict`.

    With ``streams=True``, every embedding of the spots that is present (spot and niche, image and gene) goes
    through one shared projection, so that the four embeddings of a spot can be compared in one disk
    (:func:`hyperst.pl.poincare` with ``hierarchy=True`` draws them).

    Parameters
    ----------
    {sdata}
        An AnnData is used as the table itself.
    basis
        Stem of the embedding: reads ``obsm['X_<basis>']`` and the curvature in ``uns['<basis>']``.
    {table_key}
    key_added
        Stem of the keys written; defaults to ``basis``.
    streams
        Project the spot image embedding ``obsm['X_<basis>']`` alone (``False``, as :func:`hyperst.tl.predict`
        does), or it together with ``obsm['X_<basis>_niche']``, ``obsm['X_<basis>_gene']`` and
        ``obsm['X_<basis>_gene_niche']`` (those present) on shared axes (``True``).
    inplace
        Write into the table; ``False`` returns the arrays.

    Returns
    -------
    ``None`` with ``inplace=True``, after writing ``obsm['X_<key_added>_poincare']`` (``(N, 2)``, inside the
    unit disk) and ``obs['<key_added>_radius']`` (geodesic distance to the origin). With ``streams=True`` also
    ``obsm['X_<key_added>_niche_poincare']``, ``obsm['X_<key_added>_gene_poincare']`` and
    ``obsm['X_<key_added>_gene_niche_poincare']`` (for the embeddings present), and
    ``uns['<key_added>']['poincare_streams']``: which ``obsm`` key holds which stream's projection. A later
    call with ``streams=False`` removes those three keys and that entry, since they no longer share axes with
    ``obsm['X_<key_added>_poincare']``.

    With ``inplace=False``, the ``(disk, radius)`` arrays; with ``streams=True``, a dict of the arrays that
    would be written, by key.

    Examples
    --------
    >>> import hyperst as hst
    >>> hst.tl.predict(sdata, model)  # doctest: +SKIP
    >>> hst.tl.poincare(sdata, streams=True)  # doctest: +SKIP
    >>> hst.pl.poincare(sdata, hierarchy=True)  # doctest: +SKIP
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
    curv = table.uns.get(src.uns, {}).get(Provenance.curvature)
    if curv is None:
        msg = f"No curvature in `uns[{src.uns!r}][{Provenance.curvature!r}]`: the embedding is not hyperbolic."
        raise ValueError(msg)
    if streams:
        return _poincare_streams(table, src, out, float(curv), inplace=inplace)
    disk, radius = poincare_coordinates(np.asarray(table.obsm[src.embedding]), float(curv))
    if not inplace:
        return disk, radius
    table.obsm[out.poincare] = disk
    table.obs[out.radius] = radius
    _drop_streams(table, out)
    logger.info("Adding `obsm['%s']`, `obs['%s']`", out.poincare, out.radius)
    return None


def _poincare_streams(
    table: AnnData, src: Keys, out: Keys, curv: float, *, inplace: bool
) -> dict[str, np.ndarray] | None:
    streams = {s: (src.stream_embedding(s), out.stream_poincare(s)) for s in STREAMS}
    present = {s: keys for s, keys in streams.items() if keys[0] in table.obsm}
    arrays = [np.asarray(table.obsm[read]) for read, _ in present.values()]
    disk, radius = poincare_coordinates(np.concatenate(arrays), curv)  # one PCA over every stream
    n = table.n_obs
    result = {written: disk[i * n : (i + 1) * n] for i, (_, written) in enumerate(present.values())}
    result[out.radius] = radius[:n]
    if not inplace:
        return result
    _drop_streams(table, out)
    for key, value in result.items():
        if key == out.radius:
            table.obs[key] = value
        else:
            table.obsm[key] = value
    store = table.uns.get(out.uns)
    store = dict(store) if isinstance(store, dict) else {}
    store[Provenance.poincare_streams] = {s: written for s, (_, written) in present.items()}
    table.uns[out.uns] = store
    written = [k for k in result if k != out.radius]
    logger.info(
        "Adding `obsm` %s, `obs['%s']`, `uns['%s']['%s']`", written, out.radius, out.uns, Provenance.poincare_streams
    )
    return None


def _drop_streams(table: AnnData, out: Keys) -> None:
    """Remove the stream projections of an earlier ``streams=True`` call (their axes are stale)."""
    store = table.uns.get(out.uns)
    if not isinstance(store, dict) or Provenance.poincare_streams not in store:
        return
    for key in dict(store[Provenance.poincare_streams]).values():
        if key != out.poincare:
            table.obsm.pop(key, None)
    store = dict(store)
    del store[Provenance.poincare_streams]
    table.uns[out.uns] = store
