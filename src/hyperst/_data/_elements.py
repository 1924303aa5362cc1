"""Find the table, spot shapes and H&E image of a slide inside a SpatialData object.

Inference rules (``docs/data.md``, "Elements"): a key the user passes is checked; a key left ``None`` is
inferred when only one element fits, otherwise the error lists the candidates. Images of the same slide at
several resolutions (spatialdata-io's Visium reader writes ``*_full_image``, ``*_hires_image`` and
``*_lowres_image``) are not ambiguous: the finest one aligned with the spots is used.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._constants import OUTPUT_TABLE_FLAG, PSEUDOSPOTS_KEY, TILES_KEY
from .._validation import expected_type, pick_one

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = [
    "ADD_CIRCLES",
    "ADD_IMAGE",
    "ADD_TABLE",
    "SlideElements",
    "as_spatialdata",
    "fine_kind",
    "image_levels",
    "input_tables",
    "pick_image",
    "resolve_elements",
    "shapes_to_image_affine",
]

logger = logging.getLogger(__name__)

#: Fix-it sentences for missing elements (shared by every function that resolves them).
ADD_TABLE = (
    "Add the spots' table with `sdata.tables['table'] = spatialdata.models.TableModel.parse(adata, "
    "region=<shapes key>, region_key='region', instance_key='spot_id')`, or pass `table_key=`."
)
ADD_CIRCLES = (
    "Add the spot circles with `sdata.shapes[<key>] = spatialdata.models.ShapesModel.parse(centres, geometry=0, "
    "radius=...)` and point the table at them (`TableModel.parse(..., region=<key>)`)."
)
ADD_IMAGE = (
    "Add the H&E image with `sdata.images[<key>] = spatialdata.models.Image2DModel.parse(...)` in the spots' "
    "coordinate system."
)


#: Table names of spatialdata-io's Visium HD reader: one table per bin size.
BIN_TABLE = re.compile(r"square_(\d{3})um")
#: ``sdata.attrs["spatialdata_io_reader"]`` of the readers whose polygons are bins or cells, not spots.
_FINE_READERS = ("visium_hd", "xenium")
#: Fix-it sentence for a slide of bins or cells.
ADD_PSEUDOSPOTS = (
    "Aggregate them into pseudo-spots first with `hyperst.pp.pseudospots(sdata, table_key=...)` "
    "(`hyperst.tl.fit` and `hyperst.tl.predict` do it when no table of spots is left to choose)."
)


@dataclass(frozen=True)
class SlideElements:
    """Names of the elements that make up one slide."""

    table_key: str
    shapes_key: str
    image_key: str
    region_key: str
    instance_key: str
    #: 3x3 affine (x, y, 1) mapping shapes coordinates to full-resolution image pixels.
    affine: np.ndarray


def as_spatialdata(data: SpatialData | AnnData) -> SpatialData:
    """Return ``data`` as SpatialData, converting a legacy scanpy/squidpy AnnData with ``uns['spatial']``."""
    from anndata import AnnData
    from spatialdata import SpatialData

    if isinstance(data, SpatialData):
        return data
    if isinstance(data, AnnData):
        if "spatial" not in data.uns or "spatial" not in data.obsm:
            msg = (
                "An AnnData is read only in the legacy Visium layout (`uns['spatial']` and `obsm['spatial']`), "
                f"which this one lacks: it has uns keys {sorted(data.uns)} and obsm keys {sorted(data.obsm)}. "
                "Pass a SpatialData object, e.g. read with `spatialdata_io.visium(...)`."
            )
            raise ValueError(msg)
        from spatialdata_io.experimental import from_legacy_anndata

        return from_legacy_anndata(data)
    msg = (
        f"{expected_type('sdata', 'a SpatialData or AnnData object', data)} Read the slide "
        "with `spatialdata.read_zarr(path)` or a `spatialdata_io` reader such as `spatialdata_io.visium(...)`."
    )
    raise TypeError(msg)


def _affine(element: object, coordinate_system: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def shapes_to_image_affine(sdata: SpatialData, shapes_key: str, image_key: str) -> np.ndarray | None:
    """Affine from the shapes' coordinates to the image's full-resolution pixels, or ``None`` if unaligned.

    The mapping goes through a coordinate system both elements are registered in (any name).
    """
    from spatialdata.transformations import get_transformation

    shapes, image = sdata.shapes[shapes_key], sdata.images[image_key]
    shared = sorted(set(get_transformation(shapes, get_all=True)) & set(get_transformation(image, get_all=True)))
    if not shared:
        return None
    cs = shared[0]
    return np.linalg.inv(_affine(image, cs)) @ _affine(shapes, cs)


def image_levels(image: object) -> list[object]:
    """Return the pyramid levels of an image element as ``(c, y, x)`` DataArrays, finest first."""
    from xarray import DataArray

    if isinstance(image, DataArray):
        return [image]
    levels = []
    for name in sorted(image.keys(), key=lambda s: int(s.removeprefix("scale")) if s[5:].isdigit() else 0):
        node = image[name]
        ds = node.ds if hasattr(node, "ds") else node
        var = next(iter(ds.data_vars))
        levels.append(ds[var])
    return levels


def _circle_shapes(sdata: SpatialData) -> list[str]:
    return [k for k, gdf in sdata.shapes.items() if "radius" in gdf.columns]


def input_tables(sdata: SpatialData, *, fine: bool = False) -> list[str]:
    """Return the keys of the tables of spots that may be input.

    Not those hyperst wrote (predictions), and not tables of bins or cells (:func:`fine_kind`) unless ``fine``.
    """
    keys = [k for k, t in sdata.tables.items() if not t.uns.get(OUTPUT_TABLE_FLAG, False)]
    return keys if fine else [k for k in keys if fine_kind(sdata, k) is None]


def fine_kind(sdata: SpatialData, table_key: str) -> str | None:
    """``"bins"`` or ``"cells"`` when table ``table_key`` holds Visium HD bins or cells, ``None`` for spots.

    Bins: a table named as spatialdata-io's Visium HD reader names them (``square_008um``), or annotating
    polygons with ``array_row``/``array_col`` on a slide that reader read. Cells: a table annotating labels or
    points, polygons on a slide read by spatialdata-io's Visium HD or Xenium reader, or any table of a slide
    the Xenium reader read. Tables of pseudo-spots
    (:func:`hyperst.pp.pseudospots`) and of virtual spots (:func:`hyperst.pp.tile`) are spots.
    """
    from spatialdata.models import get_table_keys

    table = sdata.tables[table_key]
    ours = (PSEUDOSPOTS_KEY, TILES_KEY)
    if any(isinstance(table.uns.get(k), dict) for k in ours) or table.uns.get(OUTPUT_TABLE_FLAG, False):
        return None
    if BIN_TABLE.fullmatch(table_key):
        return "bins"
    try:
        region = get_table_keys(table)[0]
    except (KeyError, ValueError, TypeError):
        return None
    regions = [region] if isinstance(region, str) else list(region)
    lattice = {"array_row", "array_col"} <= set(table.obs.columns)
    reader = sdata.attrs.get("spatialdata_io_reader")
    for name in regions:
        if name in sdata.labels or name in sdata.points:
            return "cells"
        if name in sdata.shapes and "radius" not in sdata.shapes[name].columns and reader in _FINE_READERS:
            return "bins" if lattice and reader == "visium_hd" else "cells"
    return "cells" if reader == "xenium" else None


def _n_channels(image: object) -> int:
    return int(image_levels(image)[0].sizes.get("c", 0))


def pick_image(
    sdata: SpatialData, shapes_key: str, image_key: str | None, *, what: str = "spots"
) -> tuple[str, np.ndarray]:
    """Name the image for the shapes ``shapes_key`` and return it with the shapes-to-image-pixels affine.

    A given ``image_key`` is checked; otherwise the finest image aligned with the shapes (sharing a coordinate
    system) is taken, among the RGB ones when there are any (a Xenium slide's morphology image is finer than
    its H&E, and not an H&E).
    """
    aligned: dict[str, np.ndarray] = {}
    for name in sdata.images:
        affine = shapes_to_image_affine(sdata, shapes_key, name)
        if affine is not None:
            aligned[name] = affine
    if image_key is not None:
        if image_key not in sdata.images:
            pick_one(image_key, list(sdata.images), "image_key", "sdata.images", "image")
        if image_key not in aligned:
            msg = (
                f"Image `{image_key!r}` shares no coordinate system with the {what} `{shapes_key!r}`. "
                "Register both in one coordinate system with `spatialdata.transformations.set_transformation`."
            )
            raise ValueError(msg)
        return image_key, aligned[image_key]
    if not aligned:
        msg = (
            f"Found no image aligned with the {what} `{shapes_key!r}` (sharing a coordinate system) in "
            f"`sdata.images` ({sorted(sdata.images)}). {ADD_IMAGE}"
        )
        raise ValueError(msg)
    rgb = {k: a for k, a in aligned.items() if _n_channels(sdata.images[k]) == 3}
    candidates = rgb or aligned
    # pixels per shapes unit: the finest image is the full-resolution one
    density = {k: float(np.sqrt(abs(np.linalg.det(a[:2, :2])))) for k, a in candidates.items()}
    best = max(density.values())
    finest = [k for k, v in density.items() if v >= best * 0.99]
    image_key = pick_one(None, finest, "image_key", "sdata.images", f"full-resolution image aligned with the {what}")
    if len(aligned) > 1:
        logger.info("Using image `%s`, the finest RGB image of %s.", image_key, sorted(aligned))
    return image_key, aligned[image_key]


def resolve_elements(
    sdata: SpatialData,
    *,
    table_key: str | None = None,
    shapes_key: str | None = None,
    image_key: str | None = None,
    need_image: bool = True,
) -> SlideElements:
    """Find (or check) the table, spot circles and image of one slide.

    Parameters
    ----------
    sdata
        The slide.
    table_key, shapes_key, image_key
        Element names; ``None`` infers them.
    need_image
        Whether an image is required (``False`` for table-only steps such as the niche graph).

    Returns
    -------
    The resolved names and the shapes-to-image affine (identity when ``need_image`` is false and no image
    is aligned).
    """
    from spatialdata.models import get_table_keys

    tables = input_tables(sdata, fine=True)
    if table_key is None:
        fine = {k: fine_kind(sdata, k) for k in tables}
        spots = [k for k in tables if fine[k] is None]
        if not spots and tables:
            msg = (
                f"The slide holds no table of spots: its tables {sorted(tables)} hold "
                f"{' and '.join(sorted(set(fine.values())))}, not spots. {ADD_PSEUDOSPOTS}"
            )
            raise ValueError(msg)
        tables = spots
    elif table_key in tables and (kind := fine_kind(sdata, table_key)) is not None:
        msg = f"Table `{table_key!r}` holds {kind}, not spots, so it cannot be used as spots. {ADD_PSEUDOSPOTS}"
        raise ValueError(msg)
    table_key = pick_one(table_key, tables, "table_key", "sdata.tables", "table of spots", fix=ADD_TABLE)
    table = sdata.tables[table_key]
    try:
        region, region_key, instance_key = get_table_keys(table)
    except (KeyError, ValueError, TypeError) as err:
        msg = (
            f"Table `{table_key!r}` does not annotate any element (no `spatialdata_attrs` in its `uns`). "
            "Parse it with `spatialdata.models.TableModel.parse(adata, region=..., region_key=..., "
            "instance_key=...)`."
        )
        raise ValueError(msg) from err
    regions = [region] if isinstance(region, str) else list(region)
    circles = [r for r in regions if r in _circle_shapes(sdata)]
    if shapes_key is None and not circles:
        msg = (
            f"Table `{table_key!r}` annotates {regions}, but none of these is a shapes element of spot circles "
            f"(a GeoDataFrame with a `radius` column) in `sdata.shapes` ({sorted(sdata.shapes)}). {ADD_CIRCLES}"
        )
        raise ValueError(msg)
    shapes_key = pick_one(shapes_key, circles, "shapes_key", f"tables[{table_key!r}] regions", "spot shapes element")

    if not need_image:
        return SlideElements(table_key, shapes_key, image_key or "", region_key, instance_key, np.eye(3))

    image_key, affine = pick_image(sdata, shapes_key, image_key)
    return SlideElements(table_key, shapes_key, image_key, region_key, instance_key, affine)
