"""The model's target scale, written once: ``log2(1 + counts)`` or ``log2(1 + counts per 10,000)``.

Training (gene inputs and targets), evaluation and the measured panels of the plots all read expression
through these functions, so that the three can never disagree about the scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ._genes import counts_matrix

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["measured_expression", "on_target_scale", "target_counts"]


def target_counts(counts: sp.spmatrix, cols: np.ndarray, target: str, *, dtype: type = np.float32) -> sp.spmatrix:
    """Select the counts of the genes ``cols``, per 10,000 of each spot's total over all its genes for ``"log2_cp10k"``.

    Parameters
    ----------
    counts
        ``(N, n_vars)`` sparse raw counts.
    cols
        Columns of the genes.
    target
        ``"log2"`` or ``"log2_cp10k"``.
    dtype
        Float type of the library-size factors.
    """
    sel = counts[:, cols]
    if target == "log2_cp10k":
        lib = np.asarray(counts.sum(1)).ravel().astype(dtype)
        sel = sp.diags(1e4 / np.maximum(lib, 1.0)).astype(dtype) @ sel
    return sel


def on_target_scale(values: sp.spmatrix | np.ndarray, *, dtype: type = np.float32) -> np.ndarray:
    """``log2(1 + values)``, dense, in ``dtype``."""
    dense = values.toarray() if sp.issparse(values) else np.asarray(values)
    return np.log2(1.0 + dense.astype(dtype))


def measured_expression(
    table: AnnData, name: str, counts_layer: str | None, target: str, cols: np.ndarray
) -> np.ndarray:
    """``(N, len(cols))`` float64 measured expression of a table on the target scale.

    Raises
    ------
    ValueError, KeyError
        If the table holds no raw counts where ``counts_layer`` says (the message names ``counts_layer=``).
    """
    if counts_layer is None and table.X is None:
        msg = (
            f"Table `{name}` holds no counts (`X` is None): pass `counts_layer=` naming a layer of raw counts, "
            "or evaluate a slide with measured expression."
        )
        raise ValueError(msg)
    try:
        counts = counts_matrix(table, counts_layer, name=name)
    except (KeyError, ValueError) as err:  # the fix names `counts_layer=`, the argument of evaluate and pl.spatial
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        msg = text.replace("`layer=", "`counts_layer=")
        if "counts_layer=" not in msg:
            msg = f"{msg} Pass `counts_layer=` to read raw counts from a layer."
        raise type(err)(msg) from err
    return on_target_scale(target_counts(counts, cols, target, dtype=np.float64), dtype=np.float64)
