"""``hst.pl.gene_scores``: per-gene correlation of predicted with measured expression, ranked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._constants import Keys
from .._docs import doc_params
from .._validation import check_key, expected
from ._utils import finish, resolve_table

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

__all__ = ["gene_scores"]


@doc_params
def gene_scores(
    sdata: SpatialData | AnnData,
    *,
    n_top: int = 10,
    key: str = Keys().pcc,
    val_key: str | None = Keys().val_pcc,
    table_key: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Plot each gene's Pearson r between predicted and measured expression, ranked, naming the best and worst.

    Genes without a score (not predicted, or constant on either side) are left out.

    Parameters
    ----------
    {sdata}
        An AnnData is used as the table itself.
    n_top
        Number of best and of worst genes named on the plot.
    key
        Column of ``var`` with the per-gene Pearson r, as :func:`hyperst.tl.evaluate` writes it
        (``'<key_added>_pcc'``).
    val_key
        Column of ``var`` with a second score per gene (e.g. on the validation slides), drawn for the same genes
        when present; ``None`` draws ``key`` alone.
    {table_key}
    ax
        Axes to draw into; ``None`` makes a new figure.
    show
        Show the figure (and return ``None``); ``None`` shows it only in an interactive session when ``ax`` is
        not given.

    Returns
    -------
    The Axes, or ``None`` when shown.

    Raises
    ------
    KeyError
        If ``var`` has no ``key`` column (run :func:`hyperst.tl.evaluate` first).
    ValueError
        If no gene has a score, or ``n_top`` is negative.

    Examples
    --------
    >>> import hyperst as hst
    >>> hst.tl.predict(sdata, model)  # doctest: +SKIP
    >>> hst.tl.evaluate(sdata)  # doctest: +SKIP
    >>> ax = hst.pl.gene_scores(sdata, n_top=5, show=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if isinstance(n_top, bool) or not isinstance(n_top, int) or n_top < 0:
        raise ValueError(expected("n_top", "a non-negative integer", n_top))
    table, name = resolve_table(sdata, table_key)
    check_key(key, table.var, f"{name}.var", "Run `hyperst.tl.evaluate(sdata)` first.")
    scores = table.var[key].to_numpy(dtype=float)
    keep = np.flatnonzero(np.isfinite(scores))
    if not keep.size:
        msg = f"No gene has a score in `{name}.var[{key!r}]` (all NaN). Run `hyperst.tl.evaluate(sdata)` first."
        raise ValueError(msg)
    order = keep[np.argsort(-scores[keep], kind="stable")]
    genes = table.var_names[order]
    ranked = scores[order]
    rank = np.arange(1, len(order) + 1)

    if ax is None:
        _, ax_ = plt.subplots(figsize=(max(4.0, min(12.0, 0.12 * len(order) + 3.0)), 4.0), layout="constrained")
    else:
        ax_ = ax
    ax_.axhline(0.0, color="0.5", linestyle="--", linewidth=0.8, zorder=0)
    ax_.plot(rank, ranked, "o-", color="C0", markersize=3, linewidth=1.0, label=key)
    if val_key is not None and val_key in table.var:
        ax_.plot(rank, table.var[val_key].to_numpy(dtype=float)[order], "x", color="C1", markersize=4, label=val_key)
    best = range(min(n_top, len(order)))
    worst = range(max(len(order) - n_top, len(best)), len(order))
    for i, va in [*((i, "bottom") for i in best), *((i, "top") for i in worst)]:
        offset = (0, 4) if va == "bottom" else (0, -4)
        ax_.annotate(
            str(genes[i]),
            (rank[i], ranked[i]),
            xytext=offset,
            textcoords="offset points",
            rotation=90,
            ha="center",
            va=va,
            fontsize="x-small",
        )
    ax_.set_xlabel("gene rank")
    ax_.set_ylabel("Pearson r, predicted vs measured")
    ax_.set_title(f"{len(order)} genes, mean r {ranked.mean():.3f}")
    low, high = min(ranked.min(), 0.0), max(ranked.max(), 0.0)
    pad = 0.35 * max(high - low, 0.1)  # room for the gene names above the best and below the worst
    ax_.set_ylim(low - pad, high + pad)
    ax_.legend(fontsize="small", loc="upper right")
    return finish(ax_, show=show, user_ax=ax is not None)
