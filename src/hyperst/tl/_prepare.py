"""Turn training slides into arrays: layout, niche graph, features, gene inputs and targets."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import PSEUDOSPOTS_KEY
from .._data import PatchGeometry, SlideLayout, as_spatialdata, slide_layout
from .._data._genes import counts_matrix, niche_mean
from .._data._target import on_target_scale, target_counts

if TYPE_CHECKING:
    import scipy.sparse
    from anndata import AnnData
    from spatialdata import SpatialData

    from .._config import HyperSTConfig
    from ._features import FeatureExtractor

__all__ = [
    "SlideInput",
    "check_counts",
    "check_distinct",
    "check_spots",
    "geometry_from",
    "load_slide",
    "slide_features",
    "slide_gene_arrays",
]

logger = logging.getLogger(__name__)


@dataclass
class SlideInput:
    """One slide ready for training or prediction."""

    name: str
    sdata: SpatialData
    layout: SlideLayout
    table: AnnData
    spot: np.ndarray | None = None  # (N, V, F)
    niche: np.ndarray | None = None


def _store_of(item: Any) -> str | None:
    """Resolve the path of the store a slide is (a path) or was read from (``SpatialData.path``), if any."""
    path = item if isinstance(item, str | os.PathLike) else getattr(item, "path", None)
    if not isinstance(path, str | os.PathLike):
        return None
    return os.path.realpath(os.fspath(path))


def check_distinct(items: Sequence[Any], *, argument: str = "sdata") -> None:
    """Refuse a slide given twice: the same object twice, or two slides of the same ``.zarr`` store.

    Slides that only share a name (their shapes key) are distinct and allowed: the fit names them apart.

    Raises
    ------
    ValueError
        Naming both positions and the object or store they share.
    """
    seen: dict[tuple[str, Any], int] = {}
    for i, item in enumerate(items):
        store = _store_of(item)
        keys = [("store", store)] if store is not None else []
        keys.append(("object", id(item)))
        for kind, key in keys:
            if key is not None and (kind, key) in seen:
                first = seen[kind, key]
                what = f"read from the same store `{key}`" if kind == "store" else "the same object"
                msg = (
                    f"Slide `{argument}[{i}]` is slide `{argument}[{first}]` again ({what}): each slide would be "
                    f"trained on or cached twice. Pass every slide once (drop `{argument}[{i}]`); for a second "
                    "slide, pass its own object or store."
                )
                raise ValueError(msg)
            seen[kind, key] = i


def load_slide(
    data: SpatialData | AnnData,
    *,
    table_key: str | None,
    image_key: str | None,
    shapes_key: str | None,
    microns_per_pixel: float | None,
    write_pseudospots: bool = False,
) -> SlideInput:
    """Resolve a slide's elements and geometry.

    Visium HD bins or cells become pseudo-spots: written into the slide with ``write_pseudospots``, else held
    in a new SpatialData that shares the image.
    """
    from ..pp._pseudospots import spots_or_pseudospots

    converted = as_spatialdata(data)
    sdata, table_key, shapes_key = spots_or_pseudospots(
        converted,
        table_key=table_key,
        shapes_key=shapes_key,
        image_key=image_key,
        microns_per_pixel=microns_per_pixel,
        write=write_pseudospots,
    )
    layout = slide_layout(
        sdata,
        table_key=table_key,
        image_key=image_key,
        shapes_key=shapes_key,
        microns_per_pixel=microns_per_pixel,
    )
    table = sdata.tables[layout.elements.table_key]
    if converted is not data:  # a legacy AnnData: it carries the hires and lowres images only
        _warn_legacy_image(data, layout)
    name = table.uns.get(PSEUDOSPOTS_KEY, {}).get("source_shapes", layout.elements.shapes_key)
    return SlideInput(name, sdata, layout, table)


def _warn_legacy_image(adata: AnnData, layout: SlideLayout) -> None:
    """Say which image of a legacy AnnData is used, at what pixel size, and how to give the full resolution."""
    import warnings

    libraries = sorted(adata.uns.get("spatial", {}))
    h, w = layout.image_shape
    msg = (
        f"The AnnData of library {', '.join(f'`{k}`' for k in libraries)} holds only the reduced-resolution images "
        f"of its legacy `uns['spatial']` layout: hyperst uses `{layout.elements.image_key}` ({w} x {h} px, "
        f"{layout.microns_per_pixel:.2f} µm/px), not the full-resolution scan. Predictions from it are less "
        "accurate. For the full resolution, read the slide with `spatialdata_io.visium(path, "
        "fullres_image_file=...)` (or add the full-resolution image to a SpatialData) and pass that."
    )
    warnings.warn(msg, UserWarning, stacklevel=4)


def check_counts(slide: SlideInput, layer: str | None) -> None:
    """Refuse a training table without genes or without a single count."""
    key = slide.layout.elements.table_key
    if slide.table.n_vars == 0:
        msg = (
            f"Table `{key!r}` of slide `{slide.name}` holds no genes (`n_vars == 0`): there is nothing to train on. "
            "Pass `table_key=` naming the table of raw counts (a table written by `hyperst.pp.tile` has none)."
        )
        raise ValueError(msg)
    if counts_matrix(slide.table, layer, name=f"sdata.tables[{key!r}]").count_nonzero() == 0:
        where = "X" if layer is None else f"layers[{layer!r}]"
        msg = (
            f"Table `{key!r}` of slide `{slide.name}` holds only zero counts in `{where}`. Pass `layer=` naming the "
            "raw counts, or leave this slide out of the training slides."
        )
        raise ValueError(msg)


def check_spots(slides: list[SlideInput], rows: list[np.ndarray]) -> None:
    """Refuse a fit with fewer than two spots that have counts of the model genes."""
    total = sum(len(r) for r in rows)
    if total < 2:
        per_slide = {s.name: len(r) for s, r in zip(slides, rows, strict=True)}
        msg = (
            f"Training needs at least 2 spots with counts of the model genes, found {total} ({per_slide}). "
            "Train on more spots or slides, or choose other `genes=`."
        )
        raise ValueError(msg)


def slide_gene_arrays(
    slide: SlideInput,
    genes: list[str],
    config: HyperSTConfig,
    *,
    layer: str | None,
    connectivities: scipy.sparse.spmatrix,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spot gene input, niche gene input and target for the model's genes, from raw counts.

    For ``"log2_cp10k"`` the library size is each spot's total over all its genes, not only the selected ones.
    """
    table = slide.table
    counts = counts_matrix(table, layer, name=f"sdata.tables[{slide.layout.elements.table_key!r}]")
    cols = table.var_names.get_indexer(genes)
    missing = [g for g, c in zip(genes, cols, strict=True) if c < 0]
    if missing:
        msg = (
            f"{len(missing)} of the {len(genes)} model genes are missing from table "
            f"`{slide.layout.elements.table_key!r}` of slide `{slide.name}` (e.g. {missing[:5]})."
        )
        raise KeyError(msg)
    sel = target_counts(counts, cols, config.target)
    spot = on_target_scale(sel)
    return spot, on_target_scale(niche_mean(sel, connectivities)), spot.copy()


def geometry_from(config: HyperSTConfig) -> PatchGeometry:
    """Patch geometry of a config."""
    return PatchGeometry(
        spot_um=config.spot_um,
        niche_um=config.niche_um,
        n_rings=config.n_rings,
        out_px=config.patch_px,
        resample=getattr(config, "resample", "lanczos"),
    )


def slide_features(
    slide: SlideInput,
    extractor: FeatureExtractor,
    config: HyperSTConfig,
    *,
    views: int,
    batch_size: int,
    cache: bool | str,
) -> None:
    """Compute (or read from cache) the slide's features into ``slide.spot`` / ``slide.niche``."""
    from ._features import extract_features

    slide.spot, slide.niche = extract_features(
        slide.sdata,
        slide.layout,
        extractor,
        geometry=geometry_from(config),
        views=views,
        batch_size=batch_size,
        cache=cache,
        desc=f"features {slide.name}",
    )
