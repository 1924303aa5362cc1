"""Shared numpydoc fragments and the ``_doc_params`` decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["doc_params"]

F = TypeVar("F", bound=Callable)

_FRAGMENTS = {
    "sdata": (
        "sdata\n"
        "        A slide as :class:`~spatialdata.SpatialData` (an H&E image, spot circles and a table annotating\n"
        "        them), or a legacy scanpy/squidpy Visium :class:`~anndata.AnnData` with ``uns['spatial']``."
    ),
    "table_key": ("table_key\n        Table of spots in ``sdata.tables``; inferred when there is only one."),
    "shapes_key": ("shapes_key\n        Spot circles in ``sdata.shapes``; inferred from the table's ``region``."),
    "image_key": (
        "image_key\n        H&E image in ``sdata.images``; inferred as the finest image aligned with the spots."
    ),
    "key_added": (
        "key_added\n        Stem of every key written (``'hyperst'`` gives ``obsp['hyperst_connectivities']``, …)."
    ),
}


def doc_params(func: F) -> F:
    """Fill ``{sdata}``, ``{table_key}``, … placeholders in ``func.__doc__`` with the shared fragments."""
    if func.__doc__:
        func.__doc__ = func.__doc__.format(**_FRAGMENTS)
    return func
