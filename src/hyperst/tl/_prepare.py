"""Turn training slides into arrays: layout, niche graph, features, gene inputs and targets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._data import PatchGeometry, SlideLayout, as_spatialdata, slide_layout
from .._data._genes import counts_matrix, niche_mean

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from .._config import HyperSTConfig
    from ._features import FeatureExtractor

__all__ = ["SlideInput", "geometry_from", "load_slide", "slide_features", "slide_gene_arrays"]

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


def load_slide(
    data: SpatialData | AnnData,
    *,
    table_key: str | None,
    image_key: str | None,
    shapes_key: str | None,
    microns_per_pixel: float | None,
    name: str | None = None,
) -> SlideInput:
    """Resolve a slide's elements and geometry."""
    sdata = as_spatialdata(data)
    layout = slide_layout(
        sdata,
        table_key=table_key,
        image_key=image_key,
        shapes_key=shapes_key,
        microns_per_pixel=microns_per_pixel,
    )
    table = sdata.tables[layout.elements.table_key]
    return SlideInput(name or layout.elements.shapes_key, sdata, layout, table)


def slide_gene_arrays(
    slide: SlideInput, genes: list[str], config: HyperSTConfig, *, layer: str | None, connectivities: sp.spmatrix
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
    sel = counts[:, cols]
    if config.target == "log2_cp10k":
        lib = np.asarray(counts.sum(1)).ravel().astype(np.float32)
        sel = sp.diags(1e4 / np.maximum(lib, 1.0)).astype(np.float32) @ sel
    spot = np.log2(1.0 + sel.toarray().astype(np.float32))
    niche = np.log2(1.0 + niche_mean(sel, connectivities))
    return spot, niche, spot.copy()


def geometry_from(config: HyperSTConfig) -> PatchGeometry:
    """Patch geometry of a config."""
    return PatchGeometry(
        spot_um=config.spot_um, niche_um=config.niche_um, n_rings=config.n_rings, out_px=config.patch_px
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
