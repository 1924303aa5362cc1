"""``hst.pl.spatial``: measured and predicted expression side by side over the H&E, through spatialdata-plot."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._constants import DEFAULT_KEY, OUTPUT_TABLE_FLAG, TARGET_LABELS, TARGETS, Keys, Provenance
from .._data._elements import as_spatialdata, image_levels, resolve_elements
from .._data._target import measured_expression
from .._docs import doc_params
from .._validation import check_choice, expected, expected_to
from ._utils import finish, to_axes_list

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

    from .._data import SlideElements

__all__ = ["spatial"]

logger = logging.getLogger(__name__)

_VALUES = "values"  # name of the derived table in the SpatialData that is drawn
#: Long side in pixels of the image drawn under the spots (a figure panel is a few hundred pixels wide).
DISPLAY_SIDE = 1024


def _gene_list(genes: str | Sequence[str]) -> list[str]:
    names = [genes] if isinstance(genes, str) else list(dict.fromkeys(genes))
    if not names:
        msg = expected_to("genes", "name at least one gene", "an empty list")
        raise ValueError(msg)
    return names


def _dense(x: object) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float)


def _predicted(
    sdata: SpatialData, table: AnnData, name: str, layer: str, genes: list[str], el: SlideElements
) -> np.ndarray:
    """``(N, G)`` predictions for the rows of ``table``, from its layer or else from the prediction table."""
    keys = Keys(layer)
    region, region_key, instance_key = el.shapes_key, el.region_key, el.instance_key
    out = np.full((table.n_obs, len(genes)), np.nan)
    cols = table.var_names.get_indexer(genes)
    if layer in table.layers and (cols >= 0).any():
        out[:, cols >= 0] = _dense(table.layers[layer][:, cols[cols >= 0]])
    pred = sdata.tables.get(keys.table)
    if pred is not None and pred.uns.get(OUTPUT_TABLE_FLAG, False):
        same = np.flatnonzero(pred.obs[region_key].astype(str).to_numpy() == region)  # ids are unique per region
        local = pd.Index(pred.obs[instance_key].to_numpy()[same]).get_indexer(table.obs[instance_key])
        rows = np.where(local >= 0, same[local], -1)
        cols = pred.var_names.get_indexer(genes)
        x = _dense(pred.X)
        for j, c in enumerate(cols):
            if c >= 0 and np.isnan(out[:, j]).all():
                out[:, j] = np.where(rows >= 0, x[rows, c], np.nan)
    missing = [g for j, g in enumerate(genes) if np.isnan(out[:, j]).all()]
    if missing:
        known = list(pred.var_names) if pred is not None else []
        msg = (
            f"No predictions for genes {missing[:20]} in `{name}.layers[{layer!r}]` or `sdata.tables[{keys.table!r}]` "
            f"(predicted genes: {known[:20]}{' ...' if len(known) > 20 else ''}). "
            "Run `hyperst.tl.predict(sdata, model)` first, or choose predicted genes."
        )
        raise KeyError(msg)
    return out


def _observed(table: AnnData, name: str, genes: list[str], counts_layer: str | None, target: str) -> np.ndarray | None:
    """``(N, G)`` measured expression on the target scale (NaN for genes not measured), or ``None`` if no counts."""
    cols = table.var_names.get_indexer(genes)
    present = cols >= 0
    if not present.any() or (counts_layer is None and table.X is None):
        return None
    try:
        values = measured_expression(table, name, counts_layer, target, cols[present])
    except ValueError as err:
        if counts_layer is not None:
            raise
        logger.warning("Showing predictions only: %s", err)
        return None
    out = np.full((table.n_obs, len(genes)), np.nan)
    out[:, present] = values
    return out


def _display_image(image: object, cs: str) -> object:
    """Return the image at about :data:`DISPLAY_SIDE` px on its long side, for drawing (a level, block-averaged).

    The coarsest pyramid level that is still at least that large is averaged in blocks, lazily when it is a dask
    array (a chunk at a time), so a whole-slide image is never held at full resolution in memory; the small
    result is computed once. Its transformation is the
    original one after the block scale, so the spots stay where they are.
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, get_transformation
    from xarray import DataArray

    levels = image_levels(image)
    h0, w0 = int(levels[0].sizes["y"]), int(levels[0].sizes["x"])
    if max(h0, w0) <= DISPLAY_SIDE:
        return image
    level = next(lv for lv in reversed(levels) if max(lv.sizes["y"], lv.sizes["x"]) >= DISPLAY_SIDE)
    h, w = int(level.sizes["y"]), int(level.sizes["x"])
    step = max(1, max(h, w) // DISPLAY_SIDE)
    small = level.coarsen(y=step, x=step, boundary="trim").mean() if step > 1 else level
    scale = Scale([step * w0 / w, step * h0 / h], axes=("x", "y"))
    original = get_transformation(image, to_coordinate_system=cs)
    coords = {"c": level.coords["c"].values} if "c" in level.coords else None
    # computed once, here: the drawing reads the small image many times (per channel, per panel)
    pixels = DataArray(np.asarray(small.data).astype(np.uint8), dims=("c", "y", "x"), coords=coords)
    return Image2DModel.parse(pixels, transformations={cs: Sequence([scale, original])})


def _coordinate_system(sdata: SpatialData, shapes_key: str, image_key: str) -> str:
    from spatialdata.transformations import get_transformation

    shared = set(get_transformation(sdata.shapes[shapes_key], get_all=True))
    shared &= set(get_transformation(sdata.images[image_key], get_all=True))
    return sorted(shared)[0]  # resolve_elements checked there is one


def _view(
    sd: SpatialData, table: AnnData, el: SlideElements, panels: list[tuple[str, np.ndarray]], n_genes: int
) -> tuple[SpatialData, str]:
    """Build the SpatialData that is drawn, and the coordinate system it is drawn in.

    It holds the image at display size, the spots, and a table of the panels' values (column ``v{p}_{j}``
    for panel ``p`` and gene ``j``) annotating them.
    """
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    obs = pd.DataFrame(index=table.obs_names.copy())
    obs[el.region_key] = pd.Categorical(table.obs[el.region_key].astype(str))
    obs[el.instance_key] = table.obs[el.instance_key].to_numpy()
    for p, (_, values) in enumerate(panels):
        for j in range(n_genes):
            obs[f"v{p}_{j}"] = values[:, j]
    derived = TableModel.parse(
        ad.AnnData(obs=obs), region=el.shapes_key, region_key=el.region_key, instance_key=el.instance_key
    )
    cs = _coordinate_system(sd, el.shapes_key, el.image_key)
    view = SpatialData(
        images={el.image_key: _display_image(sd.images[el.image_key], cs)},
        shapes={el.shapes_key: sd.shapes[el.shapes_key]},
        tables={_VALUES: derived},
    )
    return view, cs


def _panel_axes(ax: Axes | Sequence[Axes] | None, n_rows: int, n_cols: int) -> tuple[Figure, list[Axes]]:
    """Return the figure and the ``n_rows x n_cols`` axes (row-major): a new grid, or the user's ``ax``."""
    import matplotlib.pyplot as plt

    axes = to_axes_list(ax)
    if axes is None:
        fig, grid = plt.subplots(
            n_rows, n_cols, figsize=(3.2 * n_cols + 1.0, 3.2 * n_rows), squeeze=False, layout="constrained"
        )
        return fig, list(grid.ravel())
    if len(axes) != n_rows * n_cols:
        raise ValueError(expected("ax", f"{n_rows * n_cols} Axes ({n_rows} genes x {n_cols} panels)", len(axes)))
    return axes[0].figure, axes


@doc_params
def spatial(
    sdata: SpatialData | AnnData,
    genes: str | Sequence[str],
    *,
    layer: str = DEFAULT_KEY,
    table_key: str | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    counts_layer: str | None = None,
    cmap: str = "viridis",
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
) -> Figure | None:
    """Plot measured and predicted expression of genes side by side over the H&E, one row per gene.

    Both are shown on the model's target scale (``uns['<layer>']['target']``: ``log2(1 + counts)`` by default)
    with one colour scale per gene. Without measured counts (an image-only slide), only the predictions are
    drawn. Drawn with spatialdata-plot on a new SpatialData that shares the image and the spots and holds the
    values in a table of its own: ``sdata`` is not modified.

    Parameters
    ----------
    {sdata}
    genes
        Gene names (predicted by the model).
    layer
        Layer of predictions written by :func:`hyperst.tl.predict` (its ``key_added``); genes not in the table's
        ``var`` are read from the prediction table ``sdata.tables['<layer>']``.
    {table_key}
    {image_key}
    {shapes_key}
    counts_layer
        Layer of measured raw counts; ``None``: ``X``, or predictions only when ``X`` holds no raw counts.
    cmap
        Matplotlib colormap of the spots.
    ax
        ``len(genes) x 2`` Axes (``len(genes)`` without counts), in row order; ``None`` makes a new figure.
    show
        Show the figure (and return ``None``); ``None`` shows it only in an interactive session when ``ax`` is
        not given.

    Returns
    -------
    The Figure, or ``None`` when shown.

    Raises
    ------
    KeyError
        If a gene has no predictions (run :func:`hyperst.tl.predict` first), or ``counts_layer`` is missing.
    ValueError
        If ``genes`` is empty, ``ax`` has the wrong number of Axes, or ``counts_layer`` holds no raw counts.

    Examples
    --------
    >>> import hyperst as hst
    >>> hst.tl.predict(sdata, model)  # doctest: +SKIP
    >>> fig = hst.pl.spatial(sdata, ["ERBB2", "KRT19"], show=False)  # doctest: +SKIP
    """
    import spatialdata_plot  # noqa: F401  (registers the `.pl` accessor)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    names = _gene_list(genes)
    sd = as_spatialdata(sdata)
    el = resolve_elements(sd, table_key=table_key, shapes_key=shapes_key, image_key=image_key)
    table = sd.tables[el.table_key]
    table = table[(table.obs[el.region_key] == el.shapes_key).to_numpy()]  # the spots of this shapes element
    name = f"sdata.tables[{el.table_key!r}]"
    provenance = table.uns.get(Keys(layer).uns)
    target = provenance.get(Provenance.target, "log2") if isinstance(provenance, dict) else "log2"
    check_choice(target, "target", TARGETS)
    predicted = _predicted(sd, table, name, layer, names, el)
    measured = _observed(table, name, names, counts_layer, target)
    panels = [("measured", measured), ("predicted", predicted)] if measured is not None else [("predicted", predicted)]

    view, cs = _view(sd, table, el, panels, len(names))
    n_rows, n_cols = len(names), len(panels)
    fig, axes = _panel_axes(ax, n_rows, n_cols)
    for j, gene in enumerate(names):
        both = np.concatenate([v[:, j] for _, v in panels])
        both = both[np.isfinite(both)]
        norm = Normalize(float(both.min()), float(both.max()) if both.max() > both.min() else float(both.min()) + 1)
        row = axes[j * n_cols : (j + 1) * n_cols]
        for p, ((label, values), a) in enumerate(zip(panels, row, strict=True)):
            drawn = view.pl.render_images(el.image_key)
            if np.isfinite(values[:, j]).any():
                drawn = drawn.pl.render_shapes(
                    el.shapes_key, color=f"v{p}_{j}", table_name=_VALUES, cmap=cmap, norm=norm, colorbar=False
                )
            else:
                a.text(0.5, 0.5, "not measured", transform=a.transAxes, ha="center", va="center")
            drawn.pl.show(coordinate_systems=cs, ax=a, show=False, colorbar=False)
            a.set_title(f"{gene}: {label}")
            a.set_axis_off()
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=row, label=TARGET_LABELS[target], shrink=0.8)
    return finish(fig, show=show, user_ax=ax is not None)
