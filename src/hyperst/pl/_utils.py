"""Helpers shared by the plotting functions: find the table, copy what scanpy may write to, show or return."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .._data import input_tables
from .._validation import check_key, expected_type, pick_one

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

__all__ = ["finish", "plot_table", "resolve_table", "to_axes_list"]

T = TypeVar("T")


def resolve_table(sdata: SpatialData | AnnData, table_key: str | None) -> tuple[AnnData, str]:
    """Return the table to plot from and its name for messages: ``sdata`` itself if an AnnData, else its table.

    Without ``table_key``, the table of spots is inferred among the input tables (the prediction table that
    :func:`hyperst.tl.predict` adds is left out, as in :func:`hyperst.tl.evaluate`); with it, any table.
    """
    from anndata import AnnData
    from spatialdata import SpatialData

    if isinstance(sdata, AnnData):
        return sdata, "adata"
    if not isinstance(sdata, SpatialData):
        raise TypeError(expected_type("sdata", "a SpatialData or AnnData object", sdata))
    if table_key is not None:
        check_key(table_key, sdata.tables, "sdata.tables")
    else:
        table_key = pick_one(None, input_tables(sdata), "table_key", "sdata.tables", "table of spots")
    return sdata.tables[table_key], f"sdata.tables[{table_key!r}]"


def plot_table(table: AnnData, obsm_keys: Iterable[str]) -> AnnData:
    """Make an AnnData sharing ``table``'s matrices, for scanpy to read and write into without touching ``table``.

    scanpy's plotting converts string columns of ``obs`` to categoricals and stores palettes in ``uns``; here
    ``obs``, ``var`` and ``uns`` are copies (``uns`` shallow), the matrices are shared, and only the named
    ``obsm`` entries are carried.
    """
    import anndata as ad

    out = ad.AnnData(
        X=table.X,
        obs=table.obs.copy(),
        var=table.var.copy(),
        uns=dict(table.uns),
        obsm={k: np.asarray(table.obsm[k]) for k in obsm_keys},
        layers=dict(table.layers.items()),
    )
    if table.raw is not None:
        out.raw = ad.AnnData(X=table.raw.X, var=table.raw.var.copy())
    return out


def to_axes_list(ax: Axes | Iterable[Axes] | None) -> list[Axes] | None:
    """``ax`` as a flat list (a single Axes, a sequence or a numpy array of Axes), or ``None``."""
    from matplotlib.axes import Axes

    if ax is None:
        return None
    if isinstance(ax, Axes):
        return [ax]
    return list(np.asarray(ax, dtype=object).ravel())


def finish(result: T, *, show: bool | None, user_ax: bool) -> T | None:
    """Show the figure or hand back ``result``, as scanpy does.

    ``show=None`` shows when matplotlib is interactive and the function made its own figure (a notebook would
    otherwise display it twice); ``show=True`` always shows; a shown plot returns ``None``.
    """
    import matplotlib.pyplot as plt

    if show is None:
        show = plt.isinteractive() and not user_ax
    if show:
        plt.show()
        return None
    return result
