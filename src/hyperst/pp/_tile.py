"""``hst.pp.tile``: a Visium-like hexagonal grid of virtual spots over the tissue of an H&E image.

Conventions: every position is ``(x, y)`` in pixels of the finest level of the image (its full resolution),
where pixel ``(j, i)`` covers ``[j, j + 1) x [i, i + 1)``. Tissue is detected on a low-resolution copy of the
image (the "mask"), at most :data:`MAX_MASK_SIDE` pixels on its long side, so the full-resolution image is
never read into memory.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import OUTPUT_TABLE_FLAG, TILES_KEY
from .._data._elements import ADD_IMAGE
from .._data._tissue import low_res, tissue_mask
from .._utils import progress
from .._validation import check_positive, expected, expected_type, pick_one

if TYPE_CHECKING:
    from anndata import AnnData
    from geopandas import GeoDataFrame
    from spatialdata import SpatialData

__all__ = ["tile"]

logger = logging.getLogger(__name__)

#: Suffix of the shapes element of the virtual spots (spatialdata forbids a table and shapes of one name).
SHAPES_SUFFIX = "_spots"
REGION_KEY = "region"
INSTANCE_KEY = "spot_id"
TISSUE_FRACTION_KEY = "tissue_fraction"

#: Points sampled per spot circle (a sunflower pattern) to measure the tissue fraction under it.
_N_SAMPLES = 64
#: Spots evaluated per batch (bounds memory on very large grids).
_BATCH = 16384


def _pick_image(sdata: SpatialData, image_key: str | None) -> str:
    """Resolve ``image_key``: the named image, the only one, or the finest of images sharing a coordinate system."""
    from spatialdata.transformations import get_transformation

    names = list(sdata.images)
    if image_key is not None or len(names) <= 1:
        return pick_one(image_key, names, "image_key", "sdata.images", "H&E image", fix=ADD_IMAGE)
    shared = set.intersection(*(set(get_transformation(sdata.images[k], get_all=True)) for k in names))
    if shared:
        cs = sorted(shared)[0]
        area = {}
        for k in names:
            t = get_transformation(sdata.images[k], to_coordinate_system=cs)
            lin = np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))[:2, :2]
            area[k] = abs(float(np.linalg.det(lin)))  # area of one pixel in the shared frame
        finest = [k for k, a in area.items() if a <= min(area.values()) * 1.01]
        if len(finest) == 1:
            logger.info("Using image `%s`, the finest of %s.", finest[0], sorted(names))
            return finest[0]
    return pick_one(None, names, "image_key", "sdata.images", "H&E image")


def _is_tiles(table: AnnData) -> bool:
    return isinstance(table.uns.get(TILES_KEY), dict)


def _find_mpp(sdata: SpatialData, image_key: str) -> tuple[float, str] | None:
    """Microns per pixel of ``image_key`` from spot circles aligned with it, or from an earlier tiling."""
    from .._data import slide_layout

    for key, table in sdata.tables.items():
        if _is_tiles(table) or table.uns.get(OUTPUT_TABLE_FLAG, False):
            continue
        try:
            layout = slide_layout(sdata, table_key=key, image_key=image_key)
        except (KeyError, ValueError, TypeError) as err:
            logger.debug("Table `%s` gives no pixel size for image `%s`: %s", key, image_key, err)
            continue
        return layout.microns_per_pixel, f"spots of table {key!r} ({layout.scale_source})"
    for key, table in sdata.tables.items():
        params = table.uns.get(TILES_KEY)
        if _is_tiles(table) and params.get("image_key") == image_key:
            return float(params["microns_per_pixel"]), f"earlier tiling {key!r}"
    from .._data import input_tables, members

    for key in input_tables(sdata, fine=True):  # Visium HD bins (their size) or Xenium cells (their µm)
        try:
            found = members(sdata, key, image_key=image_key)
        except (KeyError, ValueError, TypeError) as err:
            logger.debug("Table `%s` gives no pixel size for image `%s`: %s", key, image_key, err)
            continue
        return found.microns_per_pixel, f"{found.kind} of table {key!r} ({found.scale_source})"
    return None


def _hex_candidates(
    mask: np.ndarray, scale: tuple[float, float], shape: tuple[int, int], pitch: float, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice sites within ``radius`` of the tissue's bounding box: ``(x, y)`` centres, array rows, columns.

    Rows are ``pitch * sqrt(3) / 2`` apart and odd rows shifted by half a pitch; columns are numbered as
    Visium does (``array_col`` even on even rows, odd on odd rows). The lattice starts at ``(pitch / 2,
    pitch / 2)`` and every centre lies inside the image.
    """
    (sx, sy), (full_h, full_w) = scale, shape
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    x_lo, x_hi = cols[0] * sx - radius, (cols[-1] + 1) * sx + radius
    y_lo, y_hi = rows[0] * sy - radius, (rows[-1] + 1) * sy + radius
    dy, origin = pitch * math.sqrt(3) / 2, pitch / 2
    r = np.arange(max(0, math.ceil((y_lo - origin) / dy)), math.floor((y_hi - origin) / dy) + 1)
    r = r[origin + r * dy < full_h]
    c = np.arange(max(0, math.floor((x_lo - origin) / pitch) - 1), math.ceil((x_hi - origin) / pitch) + 1)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    x = origin + cc * pitch + (rr % 2) * pitch / 2
    y = origin + rr * dy
    keep = (x >= max(0.0, x_lo)) & (x <= min(x_hi, full_w - 1e-6)) & (y < full_h)
    return np.column_stack([x[keep], y[keep]]), rr[keep], 2 * cc[keep] + rr[keep] % 2


def _tissue_fraction(mask: np.ndarray, scale: tuple[float, float], centres: np.ndarray, radius: float) -> np.ndarray:
    """Fraction of each circle that is tissue, from ``_N_SAMPLES`` sunflower points read off the mask."""
    i = np.arange(_N_SAMPLES) + 0.5
    rho = radius * np.sqrt(i / _N_SAMPLES)
    theta = i * math.pi * (3 - math.sqrt(5))  # golden angle: an even cover of the disk
    ox, oy = rho * np.cos(theta), rho * np.sin(theta)
    h, w = mask.shape
    out = np.empty(len(centres))
    starts = range(0, len(centres), _BATCH)
    for s in progress(starts, total=len(starts), desc="tile", unit="batch"):
        xy = centres[s : s + _BATCH]
        col = np.floor((xy[:, :1] + ox) / scale[0]).astype(np.int64)
        row = np.floor((xy[:, 1:] + oy) / scale[1]).astype(np.int64)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        hit = mask[row.clip(0, h - 1), col.clip(0, w - 1)] & inside
        out[s : s + _BATCH] = hit.mean(1)
    return out


def _check_free(sdata: SpatialData, shapes_key: str, table_key: str) -> bool:
    """Raise unless ``shapes_key``/``table_key`` are unused, or used by an earlier :func:`tile` (return ``True``)."""
    previous = sdata.tables.get(table_key)
    ours = previous is not None and _is_tiles(previous)
    wanted = {shapes_key.lower(), table_key.lower()}
    for kind in ("images", "labels", "points", "shapes", "tables"):
        for name in getattr(sdata, kind):
            if name.lower() not in wanted or (ours and (kind, name) in {("shapes", shapes_key), ("tables", table_key)}):
                continue
            msg = (
                f"Element `{name!r}` already exists in `sdata.{kind}` and was not written by `hyperst.pp.tile`. "
                f"Pass another `key_added=`, or delete it first (`del sdata.{kind}[{name!r}]`)."
            )
            raise ValueError(msg)
    return ours


def _pixel_size(sdata: SpatialData, image_key: str, microns_per_pixel: float | None) -> tuple[float, str]:
    """Return the µm/px of ``image_key`` and where it comes from: given, or found by :func:`_find_mpp`."""
    if microns_per_pixel is not None:
        return float(check_positive(microns_per_pixel, "microns_per_pixel")), "given"
    found = _find_mpp(sdata, image_key)
    if found is None:
        msg = (
            f"Cannot tell the pixel size of image `{image_key!r}`: no spot circles are aligned with it. "
            "Pass `microns_per_pixel=` (the full-resolution pixel size, e.g. 0.25 for a 40x scan)."
        )
        raise ValueError(msg)
    mpp, source = found
    logger.info("Using %.4g µm/px for image `%s`, from the %s.", mpp, image_key, source)
    return mpp, source


def _spots_on_tissue(
    image: object, image_key: str, pitch: float, radius: float, min_tissue: float
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray, float]:
    """Find the lattice sites whose circle is at least ``min_tissue`` tissue; return them, the mask, its threshold.

    The sites are ``(centres, array rows, array columns, tissue fractions)``, empty when no tissue is found.
    """
    rgb, scale, shape = low_res(image, image_key)
    mask, threshold = tissue_mask(rgb, min_object_px=math.pi * radius**2 / (scale[0] * scale[1]))
    if not mask.any():
        empty = np.empty(0, dtype=np.int64)
        return (np.empty((0, 2)), empty, empty, np.empty(0)), mask, threshold
    centres, rows, cols = _hex_candidates(mask, scale, shape, pitch, radius)
    frac = _tissue_fraction(mask, scale, centres, radius)
    keep = frac >= min_tissue - 1e-9
    return (centres[keep], rows[keep], cols[keep], frac[keep]), mask, threshold


def _tiles_elements(
    image: object,
    spots: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    radius: float,
    shapes_key: str,
    params: dict[str, Any],
) -> tuple[GeoDataFrame, AnnData]:
    """Build the circles (in the image's coordinate systems) and the table of the virtual spots ``spots``."""
    import anndata as ad
    import pandas as pd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    centres, rows, cols, frac = spots
    n = len(centres)
    ids = np.arange(n)
    transformations = {cs: copy.deepcopy(t) for cs, t in get_transformation(image, get_all=True).items()}
    circles = ShapesModel.parse(
        centres, geometry=0, radius=np.full(n, radius), index=pd.Index(ids), transformations=transformations
    )
    obs = pd.DataFrame(
        {
            "array_row": rows.astype(np.int64),
            "array_col": cols.astype(np.int64),
            TISSUE_FRACTION_KEY: frac,
            REGION_KEY: pd.Categorical([shapes_key] * n),
            INSTANCE_KEY: ids,
        },
        index=pd.Index([f"tile_{i}" for i in ids]),
    )
    table = ad.AnnData(obs=obs, obsm={"spatial": centres.copy()})
    table.uns[TILES_KEY] = params
    return circles, TableModel.parse(table, region=shapes_key, region_key=REGION_KEY, instance_key=INSTANCE_KEY)


def tile(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    spacing_um: float = 100.0,
    spot_diameter_um: float = 55.0,
    microns_per_pixel: float | None = None,
    min_tissue: float = 0.5,
    key_added: str = TILES_KEY,
    inplace: bool = True,
) -> tuple[GeoDataFrame, AnnData] | None:
    """Lay a Visium-like hexagonal grid of virtual spots over the tissue of an H&E image.

    For a slide without spots (or to predict between them): the virtual spots are circles of
    ``spot_diameter_um`` whose centres are ``spacing_um`` apart on a hexagonal lattice, kept where they lie on
    tissue, so that ``hyperst.tl.predict(sdata, model, table_key=key_added)`` maps expression over the whole
    slide from the H&E alone.

    Tissue is detected on a copy of the image at most 2048 px on its long side (the finest pyramid level
    that small, else a lazy block-average of the coarsest level; the full-resolution image is never loaded):
    pixels whose colour saturation, smoothed, exceeds Otsu's threshold (clipped to 0.05–0.15) are tissue;
    glass, black padding and grey dust are not. The mask is closed with a 3 x 3 square, pieces smaller than
    one spot are dropped and holes smaller than one spot are filled. A virtual spot is kept when at least
    ``min_tissue`` of its circle is tissue.

    Parameters
    ----------
    sdata
        A :class:`~spatialdata.SpatialData` with the H&E image, a ``(c, y, x)`` RGB element (single- or
        multi-scale, lazily read).
    image_key
        H&E image in ``sdata.images``; inferred when there is one image, or when all images are registered in
        one coordinate system (then the finest is used).
    spacing_um
        Centre-to-centre distance of neighbouring virtual spots, in micrometres (Visium: 100).
    spot_diameter_um
        Diameter of the virtual spots, in micrometres (Visium: 55).
    microns_per_pixel
        Pixel size of the finest level of the image. When ``None``, it is derived from spot circles already
        aligned with the image (or taken from an earlier tiling of the image, or from Visium HD bins or Xenium
        cells aligned with it), and an error asks for it when there are none.
    min_tissue
        Fraction of a spot's circle, in ``(0, 1]``, that must be tissue for the spot to be kept.
    key_added
        Name of the table written; the circles are ``shapes[f"{key_added}_spots"]``. Elements of these names
        are replaced only if an earlier :func:`tile` wrote them.
    inplace
        Write into ``sdata``; ``False`` returns the circles and the table and changes nothing.

    Returns
    -------
    ``None`` with ``inplace=True``, after adding to ``sdata``:

    - ``shapes[f"{key_added}_spots"]``: the circles (``radius`` column, integer index ``0 … n - 1``) in
      full-resolution image pixels, registered in every coordinate system of the image with the image's own
      transformation;
    - ``tables[key_added]``: ``n`` spots x 0 genes annotating the circles (``region_key='region'``,
      ``instance_key='spot_id'``), obs index ``tile_0``, ``tile_1``, …; ``obs['array_row']``,
      ``obs['array_col']`` (Visium numbering), ``obs['tissue_fraction']``; ``obsm['spatial']``: the pixel
      ``(x, y)`` centres; ``uns['hyperst_tiles']``: the parameters used.

    With ``inplace=False``, the ``(circles, table)`` pair.

    Raises
    ------
    ValueError
        If the pixel size cannot be found, no tissue is found, an argument is out of range, or an element
        named as an output exists and was not written by :func:`tile`.
    KeyError
        If ``image_key`` is not in ``sdata.images``.

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.synthetic(n_slides=1, n_spots=200)[0]
    >>> hst.pp.tile(sdata)
    >>> sdata.tables["hyperst_tiles"].uns["hyperst_tiles"]["microns_per_pixel"]  # from the slide's own spots
    1.0
    """
    from spatialdata import SpatialData

    if not isinstance(sdata, SpatialData):
        raise TypeError(expected_type("sdata", "a SpatialData object", sdata))
    spacing_um = float(check_positive(spacing_um, "spacing_um"))
    spot_diameter_um = float(check_positive(spot_diameter_um, "spot_diameter_um"))
    if isinstance(min_tissue, bool) or not isinstance(min_tissue, int | float) or not 0 < min_tissue <= 1:
        raise ValueError(expected("min_tissue", "a number in (0, 1]", min_tissue))
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(expected("key_added", "a non-empty string", key_added))
    shapes_key = f"{key_added}{SHAPES_SUFFIX}"
    replace = inplace and _check_free(sdata, shapes_key, key_added)
    image_key = _pick_image(sdata, image_key)
    image = sdata.images[image_key]
    mpp, source = _pixel_size(sdata, image_key, microns_per_pixel)

    radius = spot_diameter_um / mpp / 2
    spots, mask, threshold = _spots_on_tissue(image, image_key, spacing_um / mpp, radius, min_tissue)
    if not len(spots[0]):
        msg = (
            f"Found no tissue under the virtual spots of image `{image_key!r}` ({100 * mask.mean():.1f} % of it "
            f"is tissue at saturation threshold {threshold:.3f}, none of it covering {min_tissue:g} of a "
            f"{spot_diameter_um:g} µm spot at {mpp:g} µm/px). Check that `image_key` names the H&E image and "
            "that it is not blank, that `microns_per_pixel` is right, or lower `min_tissue`."
        )
        raise ValueError(msg)

    params = {
        "image_key": image_key,
        "spacing_um": spacing_um,
        "spot_diameter_um": spot_diameter_um,
        "microns_per_pixel": mpp,
        "scale_source": source,
        "min_tissue": float(min_tissue),
        "saturation_threshold": threshold,
        "mask_shape": [int(s) for s in mask.shape],
    }
    circles, table = _tiles_elements(image, spots, radius, shapes_key, params)
    if not inplace:
        return circles, table
    if replace:
        logger.warning("Replacing `shapes[%r]`, `tables[%r]` from an earlier `hyperst.pp.tile`.", shapes_key, key_added)
        del sdata.tables[key_added]
        if shapes_key in sdata.shapes:
            del sdata.shapes[shapes_key]
    logger.info("Adding `shapes[%r]`, `tables[%r]` (%d virtual spots)", shapes_key, key_added, table.n_obs)
    sdata.shapes[shapes_key] = circles
    sdata.tables[key_added] = table
    return None
