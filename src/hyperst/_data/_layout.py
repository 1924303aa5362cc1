"""Where the spots of a slide are, in image pixels and micrometres.

The spot centres come from the circles' geometry mapped into the full-resolution image through spatialdata's
transformations. The physical scale comes from the spot diameter (Visium 55 µm, legacy ST 100 µm, told apart
by the grid: hexagonal for Visium, square for ST) unless the user gives microns per pixel. Pseudo-spots
(:func:`hyperst.pp.pseudospots`) lie on a square lattice whose pitch is their side, and their table records that
side in micrometres, which gives the scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._constants import GRID_PITCH_UM, PSEUDOSPOTS_KEY, SPOT_DIAMETER_UM
from .._validation import check_positive, expected_in
from ._elements import SlideElements, image_levels, resolve_elements

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

__all__ = ["GridInfo", "SlideLayout", "detect_grid", "slide_layout"]

logger = logging.getLogger(__name__)

#: Largest off-diagonal / diagonal ratio of the shapes→image affine still taken as axis-aligned.
_MAX_SHEAR = 1e-3


@dataclass(frozen=True)
class GridInfo:
    """The lattice the spots lie on."""

    kind: Literal["hex", "square", "irregular"]
    #: Centre-to-centre distance of neighbouring spots, in the units of the given coordinates.
    pitch: float
    #: Neighbours of an interior spot (6 hex, 4 square, 0 irregular).
    n_neighbors: int


@dataclass(frozen=True)
class SlideLayout:
    """Spot geometry of one slide, in full-resolution image pixels."""

    elements: SlideElements
    #: Instance ids of the table's rows, in row order.
    instance_ids: np.ndarray
    #: ``(N, 2)`` spot centres as ``(x, y)`` full-resolution image pixels, in table row order.
    centres_px: np.ndarray
    #: Spot diameter in image pixels.
    spot_diameter_px: float
    grid: GridInfo
    microns_per_pixel: float
    #: How ``microns_per_pixel`` was obtained.
    scale_source: str
    #: ``(height, width)`` of the full-resolution image (``(0, 0)`` without image).
    image_shape: tuple[int, int]
    #: Platform of the bins or cells that pseudo-spots were aggregated from (``"visium_hd"``, ``"xenium"``,
    #: ``"cells"``), ``None`` for spots.
    platform: str | None = None

    @property
    def technology(self) -> str:
        """``'visium'`` (hex grid), ``'st'`` (square grid), the pseudo-spots' platform, or ``'unknown'``."""
        if self.platform is not None:
            return self.platform
        return {"hex": "visium", "square": "st"}.get(self.grid.kind, "unknown")

    def um_to_px(self, um: float) -> float:
        """Convert micrometres to full-resolution pixels."""
        return um / self.microns_per_pixel


def detect_grid(centres: np.ndarray) -> GridInfo:
    """Tell a hexagonal (Visium) from a square (legacy ST) spot lattice.

    Parameters
    ----------
    centres
        ``(N, 2)`` spot centres.

    Returns
    -------
    The lattice kind, its pitch and the interior neighbour count.
    """
    from scipy.spatial import cKDTree

    n = len(centres)
    if n < 3:
        return GridInfo("irregular", float("nan"), 0)
    k = min(9, n)
    dist, _ = cKDTree(centres).query(centres, k=k)
    nearest = dist[:, 1]
    pitch = float(np.median(nearest))
    if not pitch > 0:
        return GridInfo("irregular", float("nan"), 0)
    within = dist[:, 1:] <= 1.25 * pitch
    counts = within.sum(1)
    # interior degree: the largest neighbour count shared by at least 10 % of the spots (robust to a stray spot)
    freq = np.bincount(counts)
    interior = int(np.flatnonzero(freq >= max(1, 0.1 * n)).max())
    ring = dist[:, 1:][within]
    # legacy ST spot positions are jittered by ~7 % of the pitch; random layouts are far less regular
    regular = np.std(ring) / pitch < 0.12
    if regular and interior == 6:
        return GridInfo("hex", float(np.mean(ring)), 6)
    if regular and interior == 4:
        return GridInfo("square", float(np.mean(ring)), 4)
    return GridInfo("irregular", pitch, 0)


def _first(values: np.ndarray) -> object:
    """First of ``values`` as a plain Python value (for messages: ``100``, not ``np.int64(100)``)."""
    v = values[0]
    return v.item() if isinstance(v, np.generic) else v


def _check_rows(table: object, el: SlideElements) -> None:
    """Refuse an empty table, other regions, a missing instance key, and duplicated names or instance ids."""
    obs = table.obs
    where = f"sdata.tables[{el.table_key!r}]"
    if table.n_obs == 0:
        msg = (
            f"Table `{el.table_key!r}` has no rows: no spot of `{el.shapes_key!r}` to use. Check the filter that "
            f"emptied it, or pass `table_key=` naming the table of spots."
        )
        raise ValueError(msg)
    if el.region_key in obs.columns:
        other = obs[el.region_key].astype(str) != el.shapes_key
        if other.any():
            msg = (
                f"Table `{el.table_key!r}` annotates other regions besides `{el.shapes_key!r}` "
                f"({sorted(obs.loc[other, el.region_key].astype(str).unique())}). Subset it to one slide first, "
                f"e.g. `table[table.obs[{el.region_key!r}] == {el.shapes_key!r}]`."
            )
            raise ValueError(msg)
    if el.instance_key not in obs.columns:
        msg = (
            f"Column `{el.instance_key!r}` (the table's `instance_key`) not found in `{where}.obs`. Available "
            f"columns: {sorted(map(str, obs.columns))}. Re-parse the table with `TableModel.parse(..., "
            "instance_key=<column naming each row's circle>)`."
        )
        raise KeyError(msg)
    dup_names = _duplicated(obs.index)
    if dup_names.any():
        msg = (
            f"{int(dup_names.sum())} of {table.n_obs} rows of table `{el.table_key!r}` repeat a spot name of "
            f"`{where}.obs_names` (e.g. {_first(obs.index[dup_names].to_numpy())!r}). Make them unique with "
            f"`{where}.obs_names_make_unique()`."
        )
        raise ValueError(msg)
    dup_ids = obs[el.instance_key].duplicated()
    if dup_ids.any():
        example = _first(obs.loc[dup_ids, el.instance_key].to_numpy())
        msg = (
            f"{int(dup_ids.sum())} of {table.n_obs} rows of table `{el.table_key!r}` name a spot already named by "
            f"another row in `{where}.obs[{el.instance_key!r}]` (e.g. {example!r}). "
            "Each row must annotate its own circle: drop the duplicated rows, e.g. "
            f"`table[~table.obs[{el.instance_key!r}].duplicated()]`."
        )
        raise ValueError(msg)


def _duplicated(index: pd.Index) -> np.ndarray:
    """``index.duplicated()`` without building the index's hash table, which pandas keeps with the index.

    The table and the shapes belong to the caller: a kept table costs about 32 bytes per spot for as long as
    the slide lives (10 MiB per 320,000 spots), so a check should not leave one behind.
    """
    import pandas as pd

    return pd.Series(index.to_numpy(), copy=False).duplicated().to_numpy()


def _spot_centres(sdata: SpatialData, el: SlideElements) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Instance ids of the table's rows, centres of all circles, row→circle positions, radii of the rows."""
    import pandas as pd

    table = sdata.tables[el.table_key]
    shapes = sdata.shapes[el.shapes_key]
    _check_rows(table, el)
    dup_circles = _duplicated(shapes.index)
    if dup_circles.any():
        dup = shapes.index[dup_circles].to_numpy()
        msg = (
            f"The index of shapes `{el.shapes_key!r}` repeats {len(dup)} circle ids (e.g. {_first(dup)!r}), so the "
            f"table's `{el.instance_key}` column cannot tell them apart. Give every circle its own id, e.g. "
            f"`sdata.shapes[{el.shapes_key!r}].index = range(len(...))` and the same ids in the table."
        )
        raise ValueError(msg)
    ids = table.obs[el.instance_key].to_numpy()
    pos = pd.Index(shapes.index.to_numpy(), copy=False).get_indexer(ids)  # its hash table goes with this copy
    missing = pos < 0
    if missing.any():
        msg = (
            f"{int(missing.sum())} of {len(ids)} rows of table `{el.table_key!r}` name spots missing from shapes "
            f"`{el.shapes_key!r}` (e.g. {ids[missing][:3].tolist()}). The table's `{el.instance_key}` column must "
            "match the shapes' index."
        )
        raise ValueError(msg)
    all_xy = np.column_stack([shapes.geometry.x.to_numpy(), shapes.geometry.y.to_numpy()]).astype(float)
    bad = ~np.isfinite(all_xy).all(1)
    if bad.any():
        msg = (
            f"{int(bad.sum())} of {len(all_xy)} circles of shapes `{el.shapes_key!r}` have no finite centre (NaN "
            f"or infinite coordinates; e.g. circle {_first(shapes.index[bad].to_numpy())!r}). Drop them from the "
            "shapes and the table, or fix their coordinates."
        )
        raise ValueError(msg)
    radius = shapes["radius"].to_numpy(dtype=float)[pos]
    return ids, all_xy, pos, radius


def _check_axis_aligned(affine: np.ndarray, el: SlideElements) -> tuple[float, float]:
    lin = affine[:2, :2]
    sx, sy = abs(lin[0, 0]), abs(lin[1, 1])
    off = max(abs(lin[0, 1]), abs(lin[1, 0]))
    if off > _MAX_SHEAR * max(sx, sy) or sx == 0 or sy == 0:
        msg = (
            f"The transformation from spots `{el.shapes_key!r}` to image `{el.image_key!r}` rotates or shears "
            f"(linear part {np.round(lin, 4).tolist()}). hyperst crops axis-aligned patches; transform the image "
            "into the spots' frame first (e.g. `spatialdata.transform(...)`) or register it without rotation."
        )
        raise ValueError(msg)
    return sx, sy


def _check_diameter(diameter_px: float, el: SlideElements) -> None:
    if not np.isfinite(diameter_px) or diameter_px <= 0:
        where = f"`sdata.shapes[{el.shapes_key!r}]['radius']`"
        found = f"a median diameter of `{diameter_px:g}` px in image `{el.image_key!r}`"
        msg = (
            f"{expected_in('positive spot radii', where, found)} Set each circle's radius in the shapes' "
            "coordinate units (Visium: 27.5 µm in pixels of the full-resolution image)."
        )
        raise ValueError(msg)


def slide_layout(
    sdata: SpatialData,
    *,
    table_key: str | None = None,
    shapes_key: str | None = None,
    image_key: str | None = None,
    microns_per_pixel: float | None = None,
    spot_diameter_um: float | None = None,
    need_image: bool = True,
) -> SlideLayout:
    """Resolve a slide's elements and spot geometry.

    Parameters
    ----------
    sdata
        The slide.
    table_key, shapes_key, image_key
        Element names; ``None`` infers them.
    microns_per_pixel
        Full-resolution pixel size; derived from the spot diameter when ``None``.
    spot_diameter_um
        Physical spot diameter; taken from the grid kind (Visium 55 µm, ST 100 µm) when ``None``.
    need_image
        Whether an image is required.

    Returns
    -------
    The slide's layout.
    """
    el = resolve_elements(sdata, table_key=table_key, shapes_key=shapes_key, image_key=image_key, need_image=need_image)
    ids, all_xy, pos, radius = _spot_centres(sdata, el)
    sx, sy = _check_axis_aligned(el.affine, el)
    all_centres = (np.column_stack([all_xy, np.ones(len(all_xy))]) @ el.affine.T)[:, :2]
    centres = all_centres[pos]
    diameter_px = float(np.median(radius)) * 2 * float(np.sqrt(sx * sy)) if len(radius) else float("nan")
    # the lattice is a property of all circles, so a QC-filtered table still shows its grid
    grid = detect_grid(all_centres)
    pseudo = sdata.tables[el.table_key].uns.get(PSEUDOSPOTS_KEY)
    platform = None
    if isinstance(pseudo, dict):  # a square lattice whose pitch is the pseudo-spots' side (their diameter)
        grid, platform = GridInfo("square", diameter_px, 4), str(pseudo.get("platform", "cells"))

    image_shape = (0, 0)
    if need_image:
        level0 = image_levels(sdata.images[el.image_key])[0]
        image_shape = (int(level0.sizes["y"]), int(level0.sizes["x"]))

    if microns_per_pixel is not None:
        mpp = float(check_positive(microns_per_pixel, "microns_per_pixel"))
        source = "given"
    else:
        tech = {"hex": "visium", "square": "st"}.get(grid.kind) if platform is None else None
        if spot_diameter_um is not None:
            diam_um = float(check_positive(spot_diameter_um, "spot_diameter_um"))
            source = f"spot diameter {diam_um:g} µm (given)"
        elif platform is not None:
            diam_um = float(pseudo["size_um"])
            source = f"pseudo-spots of {diam_um:g} µm ({pseudo.get('scale_source', platform)})"
        elif tech is not None:
            diam_um = SPOT_DIAMETER_UM[tech]
            source = f"spot diameter {diam_um:g} µm ({'Visium' if tech == 'visium' else 'legacy ST'} grid)"
        elif not need_image:  # the niche graph needs no physical scale
            diam_um, source = float("nan"), "unknown (no grid, and no image to crop)"
        else:
            msg = (
                f"Cannot derive the pixel size of image `{el.image_key!r}`: the spots of `{el.shapes_key!r}` lie on "
                "neither a hexagonal (Visium) nor a square (legacy ST) grid. Pass `microns_per_pixel=` (the "
                "full-resolution pixel size, e.g. 0.25 for a 40x scan) to `hyperst.tl.fit` / `hyperst.tl.predict`."
            )
            raise ValueError(msg)
        usable = np.isfinite(diam_um) and np.isfinite(diameter_px) and diameter_px > 0
        if need_image and not usable:
            _check_diameter(diameter_px, el)
        mpp = diam_um / diameter_px if usable else float("nan")
        if tech is not None and np.isfinite(grid.pitch):
            pitch_um = grid.pitch * mpp
            expected_pitch = GRID_PITCH_UM[tech] * diam_um / SPOT_DIAMETER_UM[tech]
            if abs(pitch_um / expected_pitch - 1) > 0.15:
                logger.warning(
                    "Spot pitch is %.0f µm at %.3f µm/px, but a %s grid has %.0f µm: check the spot radii or "
                    "pass `microns_per_pixel=`.",
                    pitch_um,
                    mpp,
                    tech,
                    expected_pitch,
                )

    if need_image:
        _check_diameter(diameter_px, el)  # patches of the niche are sized by it, whatever gave the scale
        h, w = image_shape
        outside = (centres[:, 0] < 0) | (centres[:, 0] >= w) | (centres[:, 1] < 0) | (centres[:, 1] >= h)
        if outside.any():
            msg = (
                f"{int(outside.sum())} of {len(centres)} spots of `{el.shapes_key!r}` lie outside image "
                f"`{el.image_key!r}` ({w} x {h} px), e.g. spot {_first(ids[outside])!r} at pixel "
                f"{np.round(centres[outside][0], 1).tolist()}. Check the transformations, or drop those spots "
                "from the table."
            )
            raise ValueError(msg)
    return SlideLayout(
        elements=el,
        instance_ids=ids,
        centres_px=centres,
        spot_diameter_px=diameter_px,
        grid=grid,
        microns_per_pixel=mpp,
        scale_source=source,
        image_shape=image_shape,
        platform=platform,
    )
