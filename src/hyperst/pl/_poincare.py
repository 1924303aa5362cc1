"""``hst.pl.poincare``: the Poincaré-disk view of the hyperbolic embedding, through ``sc.pl.embedding``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import DEFAULT_KEY, TARGET_LABELS, TARGETS, Keys, Provenance
from .._data._target import measured_expression
from .._docs import doc_params
from .._validation import check_choice, check_key, expected, key_not_found
from ._utils import finish, plot_table, resolve_table

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

__all__ = ["poincare"]

#: How each stream is drawn in the hierarchy overlay: label, marker, fill colour.
_STREAM_STYLE = {
    "spot_image": ("spot image", "o", "#d62728"),
    "niche_image": ("niche image", "s", "#ff9896"),
    "spot_gene": ("spot gene", "^", "#1f77b4"),
    "niche_gene": ("niche gene", "D", "#aec7e8"),
}
#: Entailment pairs (parent, child) of the model (``nn.ENTAIL_PAIRS``), grouped as they are drawn.
_RELATIONS = {
    "image ⊒ gene": ((("spot_image", "spot_gene"), ("niche_image", "niche_gene")), "-", "0.15"),
    "spot ⊒ niche": ((("spot_image", "niche_image"), ("spot_gene", "niche_gene")), ":", "0.35"),
}
_NOT_IN_KWARGS = ("save", "show", "ax", "return_fig")


def _stream_coords(table: AnnData, name: str, keys: Keys) -> dict[str, np.ndarray]:
    """Read each stream's shared-axes projection, written by :func:`hyperst.tl.poincare` with ``streams=True``."""
    fix = f"Run `hyperst.tl.poincare(sdata, basis={keys.stem!r}, streams=True)` first."
    store = table.uns.get(keys.uns)
    streams = store.get(Provenance.poincare_streams) if isinstance(store, dict) else None
    if not streams:
        available = store.keys() if isinstance(store, dict) else []
        raise KeyError(key_not_found(Provenance.poincare_streams, f"{name}.uns[{keys.uns!r}]", available, fix))
    for key in streams.values():
        check_key(key, table.obsm, f"{name}.obsm", fix)
    return {s: np.asarray(table.obsm[k]) for s, k in streams.items() if s in _STREAM_STYLE}


def _target(table: AnnData, keys: Keys) -> str:
    store = table.uns.get(keys.uns)
    target = store.get(Provenance.target, TARGETS[0]) if isinstance(store, dict) else TARGETS[0]
    check_choice(target, "target", TARGETS)
    return target


def _gene_scale(table: AnnData, name: str, keys: Keys, layer: str | None, counts_layer: str | None) -> str:
    """Return the colour-bar label of a gene: what its values are."""
    if layer is not None:
        return f"{name}.layers[{layer!r}]"
    source = "X" if counts_layer is None else f"layers[{counts_layer!r}]"
    return f"measured {TARGET_LABELS[_target(table, keys)]} ({source})"


def _on_target_scale(
    view: AnnData, table: AnnData, name: str, genes: list[str], keys: Keys, counts_layer: str | None
) -> AnnData:
    """``view`` restricted to ``genes``, with their measured expression on the target scale as ``X``."""
    import anndata as ad

    cols = table.var_names.get_indexer(genes)
    values = measured_expression(table, name, counts_layer, _target(table, keys), cols)
    out = ad.AnnData(X=values.astype(np.float32), obs=view.obs, var=view.var.iloc[cols].copy(), uns=view.uns)
    for key, value in view.obsm.items():
        out.obsm[key] = value
    return out


def _label_colorbar(ax: Axes, label: str) -> None:
    for collection in ax.collections:
        if getattr(collection, "colorbar", None) is not None:
            collection.colorbar.set_label(label)
            return


def _hierarchy(ax: Axes, coords: dict[str, np.ndarray], n_lines: int) -> None:
    """Draw the embeddings of ``n_lines`` spots, each child joined to its parent, with a legend."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    order = np.argsort(np.linalg.norm(coords["spot_image"], axis=1))  # spots spread from centre to rim
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(n_lines, len(order))).round().astype(int))]
    handles = []
    for stream, xy in coords.items():
        label, marker, colour = _STREAM_STYLE[stream]
        points = ax.scatter(
            xy[pick, 0], xy[pick, 1], s=22, marker=marker, c=colour, edgecolors="black", linewidths=0.4, zorder=4
        )
        points.set_label(label)
        handles.append(points)
    for label, (pairs, style, colour) in _RELATIONS.items():
        present = [(a, b) for a, b in pairs if a in coords and b in coords]
        segments = [np.stack([coords[a][pick], coords[b][pick]], axis=1) for a, b in present]
        if segments:
            lines = LineCollection(np.concatenate(segments), colors=colour, linestyles=style, linewidths=0.8, zorder=3)
            ax.add_collection(lines)
            handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=0.8, label=label))
    previous = ax.get_legend()  # scanpy's legend of a categorical `color`
    ax.legend(
        handles=handles,
        title=f"{len(pick)} spots; lines join parent ⊒ child",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=3,
        fontsize="small",
        title_fontsize="small",
        frameon=False,
    )
    if previous is not None:  # keep it: as an extra artist, unclipped (it sits in the right margin)
        ax.add_artist(previous)
        previous.set_clip_on(False)


def _disk(ax: Axes) -> None:
    from matplotlib.patches import Circle

    ax.add_patch(Circle((0.0, 0.0), 1.0, fill=False, edgecolor="0.4", linewidth=0.8, zorder=0))
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")


@doc_params
def poincare(
    sdata: SpatialData | AnnData,
    *,
    color: str | Sequence[str] | None = None,
    basis: str = DEFAULT_KEY,
    table_key: str | None = None,
    counts_layer: str | None = None,
    hierarchy: bool = False,
    n_lines: int = 30,
    ax: Axes | None = None,
    show: bool | None = None,
    **kwargs: Any,
) -> Axes | list[Axes] | None:
    """Plot the spots in the Poincaré disk, scanpy-style (:func:`scanpy.pl.embedding`).

    Reads the projection :func:`hyperst.tl.predict` or :func:`hyperst.tl.poincare` wrote and draws the unit
    circle (the points at infinity) around it: spots near the centre are general, spots near the rim specific.

    Parameters
    ----------
    {sdata}
        An AnnData is used as the table itself.
    color
        Keys of ``obs`` or genes to colour by, as in :func:`scanpy.pl.embedding` (e.g. ``'hyperst_radius'``).
        Genes are coloured by their measured expression on the model's target scale
        (``uns['<basis>']['target']``, as :func:`hyperst.pl.spatial` shows it), and the colour bar says which; with
        ``layer=`` (a :func:`scanpy.pl.embedding` argument, e.g. ``layer='hyperst'`` for the predictions), by
        that layer as it is.
    basis
        Stem of the embedding: plots ``obsm['X_<basis>_poincare']``.
    {table_key}
    counts_layer
        Layer of raw counts for the measured expression of genes (``None``: ``X``).
    hierarchy
        Overlay, for ``n_lines`` spots spread from the centre to the rim, their spot and niche, image and gene
        embeddings, each child joined to its parent of the learned hierarchy (image ⊒ gene, spot ⊒ niche).
        Needs the shared projection of :func:`hyperst.tl.poincare` with ``streams=True``.
    n_lines
        Number of spots of the ``hierarchy`` overlay.
    ax
        Axes to draw into (one ``color``); ``None`` makes a new figure.
    show
        Show the figure (and return ``None``); ``None`` shows it only in an interactive session when ``ax`` is
        not given.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``size``, ``palette``, ``cmap``, ``legend_loc``, ...).

    Returns
    -------
    The Axes (a list of them for several ``color`` keys), or ``None`` when shown.

    Raises
    ------
    KeyError
        If the projection (or, with ``hierarchy``, the per-stream projection) is missing; the message says
        which ``hyperst.tl`` call writes it.

    Examples
    --------
    >>> import hyperst as hst
    >>> hst.tl.predict(sdata, model)  # doctest: +SKIP
    >>> hst.pl.poincare(sdata, color="hyperst_radius")  # doctest: +SKIP
    >>> hst.tl.poincare(sdata, streams=True)  # doctest: +SKIP
    >>> hst.pl.poincare(sdata, color="domain", hierarchy=True, n_lines=20)  # doctest: +SKIP
    """
    import scanpy as sc

    given = sorted(set(kwargs) & set(_NOT_IN_KWARGS))
    if given:
        msg = f"`hyperst.pl.poincare` takes no {given} argument: it returns the Axes (save with `ax.figure.savefig`)."
        raise TypeError(msg)
    if isinstance(n_lines, bool) or not isinstance(n_lines, int) or n_lines < 1:
        raise ValueError(expected("n_lines", "a positive integer", n_lines))
    keys = Keys(basis)
    table, name = resolve_table(sdata, table_key)
    check_key(keys.poincare, table.obsm, f"{name}.obsm", f"Run `hyperst.tl.poincare(sdata, basis={basis!r})` first.")

    coords = _stream_coords(table, name, keys) if hierarchy else None

    view = plot_table(table, [keys.poincare])
    colors = [color] if isinstance(color, str) else list(color or [])
    genes = [c for c in colors if c in table.var_names and c not in table.obs]
    scale = _gene_scale(table, name, keys, kwargs.get("layer"), counts_layer) if genes else ""
    if genes and kwargs.get("layer") is None:
        view = _on_target_scale(view, table, name, genes, keys, counts_layer)
    axes = sc.pl.embedding(view, basis=keys.poincare.removeprefix("X_"), color=color, ax=ax, show=False, **kwargs)
    axes_list = axes if isinstance(axes, list) else [axes]
    for a, key in zip(axes_list, colors or [None] * len(axes_list), strict=False):
        if key in genes:
            _label_colorbar(a, scale)
        _disk(a)
        a.set_xlabel("Poincaré 1")
        a.set_ylabel("Poincaré 2")
        if coords is not None:
            _hierarchy(a, coords, n_lines)
    return finish(axes, show=show, user_ax=ax is not None)
