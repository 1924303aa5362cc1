"""Where the bins (Visium HD) or cells (Xenium) of a table are, in pixels of the H&E, and the pixel size.

Centres come from the table's shapes (circles, squares or polygons: their centroids) through the
shapes-to-image affine, which may rotate (a Xenium H&E is registered to the cells by any affine). The pixel
size of the image comes from the bins' side (Visium HD: the bin size in the table's name, ``square_008um``,
over the squares' side in pixels) or, for cells read by spatialdata-io's Xenium reader, from the cells'
coordinates, which are micrometres. Otherwise ``microns_per_pixel`` must be given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._validation import check_positive
from ._elements import BIN_TABLE, fine_kind, image_levels, pick_image

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["Members", "members"]


@dataclass(frozen=True)
class Members:
    """The bins or cells of one table, mapped into the pixels of one image."""

    table_key: str
    shapes_key: str
    image_key: str
    region_key: str
    instance_key: str
    #: ``"bins"`` or ``"cells"``.
    kind: str
    #: ``"visium_hd"``, ``"xenium"`` or ``"cells"`` (another cell-level platform).
    platform: str
    #: ``(N, 2)`` centres as ``(x, y)`` image pixels, in table row order.
    centres_px: np.ndarray
    microns_per_pixel: float
    scale_source: str
    #: Bin side in µm (bins only).
    bin_um: float | None
    #: ``(N, 2)`` ``(array_row, array_col)`` of the bins, or ``None``.
    lattice: np.ndarray | None
    #: ``(height, width)`` of the image's finest level.
    image_shape: tuple[int, int]


def _shapes_for(sdata: SpatialData, table_key: str, shapes_key: str | None) -> tuple[str, str, str, np.ndarray]:
    """Find the shapes holding the table's geometry, the region and instance keys, and each row's shape position."""
    from spatialdata.models import get_table_keys

    table = sdata.tables[table_key]
    region, region_key, instance_key = get_table_keys(table)
    regions = [region] if isinstance(region, str) else list(region)
    ids = table.obs[instance_key].to_numpy()
    if shapes_key is None:
        in_shapes = [r for r in regions if r in sdata.shapes]
        if len(in_shapes) != 1:
            others = [k for k in sdata.shapes if sdata.shapes[k].index.isin(ids).mean() > 0.99] if len(ids) else []
            if len(others) != 1:
                msg = (
                    f"Table `{table_key!r}` annotates {regions}, which is not one shapes element, and hyperst reads "
                    f"the bins' or cells' centres from shapes. Pass `shapes_key=` naming shapes whose index holds "
                    f"the table's `{instance_key}` values (of {sorted(sdata.shapes)}), or read a Xenium slide with "
                    "`spatialdata_io.xenium(path, cells_as_circles=True)`."
                )
                raise ValueError(msg)
            in_shapes = others
        shapes_key = in_shapes[0]
    elif shapes_key not in sdata.shapes:
        msg = f"Shapes `{shapes_key!r}` not found in `sdata.shapes`. Available: {sorted(sdata.shapes)}."
        raise KeyError(msg)
    pos = sdata.shapes[shapes_key].index.get_indexer(ids)
    if (pos < 0).any():
        msg = (
            f"{int((pos < 0).sum())} of {len(ids)} rows of table `{table_key!r}` name {instance_key} values missing "
            f"from the index of shapes `{shapes_key!r}` (e.g. {ids[pos < 0][:3].tolist()}). Pass `shapes_key=` "
            "naming the shapes of these rows."
        )
        raise ValueError(msg)
    return shapes_key, region_key, instance_key, pos


def _side_units(gdf: object) -> float:
    """Median side of square bins (or diameter of circles) in the shapes' units."""
    if "radius" in gdf.columns:
        return float(2 * np.median(gdf["radius"].to_numpy(dtype=float)))
    bounds = gdf.geometry.bounds
    return float(np.median(np.maximum(bounds["maxx"] - bounds["minx"], bounds["maxy"] - bounds["miny"])))


def members(
    sdata: SpatialData,
    table_key: str,
    *,
    shapes_key: str | None = None,
    image_key: str | None = None,
    microns_per_pixel: float | None = None,
) -> Members:
    """Map the bins or cells of ``table_key`` into the pixels of the H&E image.

    Parameters
    ----------
    sdata
        The slide.
    table_key
        A table of bins or cells.
    shapes_key
        Their shapes; inferred from the table's ``region`` (or, for a table annotating labels, the one shapes
        element indexed by the table's instance ids).
    image_key
        The image; inferred as the finest RGB image aligned with the shapes.
    microns_per_pixel
        Pixel size of the image; derived from the bin size or the Xenium units when ``None``.

    Returns
    -------
    The :class:`Members`.
    """
    kind = fine_kind(sdata, table_key) or "cells"
    shapes_key, region_key, instance_key, pos = _shapes_for(sdata, table_key, shapes_key)
    image_key, affine = pick_image(sdata, shapes_key, image_key, what="bins or cells")
    gdf = sdata.shapes[shapes_key]
    geometry = gdf.geometry
    if (geometry.geom_type == "Point").all():
        xy = np.column_stack([geometry.x.to_numpy(), geometry.y.to_numpy()])
    else:
        centroid = geometry.centroid
        xy = np.column_stack([centroid.x.to_numpy(), centroid.y.to_numpy()])
    xy = xy.astype(float)[pos]
    centres = (np.column_stack([xy, np.ones(len(xy))]) @ affine.T)[:, :2]
    px_per_unit = float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
    table = sdata.tables[table_key]
    reader = sdata.attrs.get("spatialdata_io_reader")
    bin_um = None
    if kind == "bins":
        match = BIN_TABLE.fullmatch(table_key) or BIN_TABLE.search(shapes_key)
        bin_um = float(match.group(1)) if match else None
    if microns_per_pixel is not None:
        mpp, source = float(check_positive(microns_per_pixel, "microns_per_pixel")), "given"
    elif bin_um is not None:
        mpp = bin_um / (_side_units(gdf) * px_per_unit)
        source = f"bin size {bin_um:g} µm (table `{table_key}`)"
    elif kind == "cells" and reader == "xenium":
        mpp, source = 1.0 / px_per_unit, "Xenium cell coordinates in µm"
    else:
        msg = (
            f"Cannot tell the pixel size of image `{image_key!r}` from the {kind} of table `{table_key!r}`: they "
            "are neither Visium HD bins named by their size (`square_008um`) nor cells read by "
            "`spatialdata_io.xenium`. Pass `microns_per_pixel=` (the image's pixel size, e.g. 0.2125)."
        )
        raise ValueError(msg)
    lattice = None
    if kind == "bins" and {"array_row", "array_col"} <= set(table.obs.columns):
        lattice = table.obs[["array_row", "array_col"]].to_numpy(dtype=np.int64)
    level0 = image_levels(sdata.images[image_key])[0]
    platform = {"bins": "visium_hd"}.get(kind, "xenium" if reader == "xenium" else "cells")
    return Members(
        table_key=table_key,
        shapes_key=shapes_key,
        image_key=image_key,
        region_key=region_key,
        instance_key=instance_key,
        kind=kind,
        platform=platform,
        centres_px=centres,
        microns_per_pixel=mpp,
        scale_source=source,
        bin_um=bin_um,
        lattice=lattice,
        image_shape=(int(level0.sizes["y"]), int(level0.sizes["x"])),
    )
