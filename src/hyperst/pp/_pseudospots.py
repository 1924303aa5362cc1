"""``hst.pp.pseudospots``: Visium HD bins or Xenium cells summed into pseudo-spots of a physical size.

Conventions: pseudo-spots are circles in the pixels of the H&E image they were laid over, registered in every
coordinate system of that image with the image's own transformation (as :func:`hyperst.pp.tile` does), so
they line up with the bins or cells through spatialdata's transformations. Sizes are micrometres.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from .._constants import PSEUDOSPOT_UM, PSEUDOSPOTS_KEY
from .._data import fine_kind, input_tables, members
from .._data._aggregate import bin_lattice, cell_lattice, sum_counts
from .._validation import check_positive, expected, expected_type, pick_one

if TYPE_CHECKING:
    from anndata import AnnData
    from geopandas import GeoDataFrame
    from spatialdata import SpatialData

__all__ = ["pseudospots"]

logger = logging.getLogger(__name__)

#: Suffix of the pseudo-spots' shapes element, and of the bins' or cells' ``obs`` column naming their pseudo-spot.
SHAPES_SUFFIX = "_spots"
ID_SUFFIX = "_id"
REGION_KEY = "region"
INSTANCE_KEY = "spot_id"
N_MEMBERS_KEY = "n_members"
#: Bin table chosen first among several (10x's default bin size).
_DEFAULT_BINS = "square_008um"


def fine_tables(sdata: SpatialData) -> dict[str, str]:
    """Tables of bins or cells, by key, with their kind."""
    found = {k: fine_kind(sdata, k) for k in input_tables(sdata, fine=True)}
    return {k: v for k, v in found.items() if v is not None}


def _pick_source(sdata: SpatialData, table_key: str | None) -> str:
    fine = fine_tables(sdata)
    if table_key is not None:
        if table_key in sdata.tables and table_key not in fine:
            msg = (
                f"Table `{table_key!r}` holds spots, not Visium HD bins or cells: it needs no pseudo-spots. "
                f"Tables of bins or cells: {sorted(fine)}."
            )
            raise ValueError(msg)
        return pick_one(table_key, list(fine), "table_key", "sdata.tables", "table of bins or cells")
    if _DEFAULT_BINS in fine and len(fine) > 1 and set(fine.values()) == {"bins"}:
        return _DEFAULT_BINS
    return pick_one(None, list(fine), "table_key", "sdata.tables", "table of bins or cells")


def _check_free(sdata: SpatialData, shapes_key: str, table_key: str) -> bool:
    """Raise unless the output names are unused or used by an earlier :func:`pseudospots` (return ``True``)."""
    previous = sdata.tables.get(table_key)
    ours = previous is not None and isinstance(previous.uns.get(PSEUDOSPOTS_KEY), dict)
    for kind in ("images", "labels", "points", "shapes", "tables"):
        for name in getattr(sdata, kind):
            if name.lower() not in {shapes_key.lower(), table_key.lower()}:
                continue
            if ours and (kind, name) in {("shapes", shapes_key), ("tables", table_key)}:
                continue
            msg = (
                f"Element `{name!r}` already exists in `sdata.{kind}` and was not written by "
                "`hyperst.pp.pseudospots`. Pass another `key_added=`, or delete it first "
                f"(`del sdata.{kind}[{name!r}]`)."
            )
            raise ValueError(msg)
    return ours


def _counts(table: AnnData, layer: str | None) -> object:
    if layer is None:
        return table.X
    if layer not in table.layers:
        msg = f"Layer `{layer!r}` not found in the bins' or cells' table. Available layers: {sorted(table.layers)}."
        raise KeyError(msg)
    return table.layers[layer]


def pseudospots(
    sdata: SpatialData,
    *,
    table_key: str | None = None,
    size_um: float = PSEUDOSPOT_UM,
    shapes_key: str | None = None,
    image_key: str | None = None,
    microns_per_pixel: float | None = None,
    layer: str | None = None,
    min_members: int | None = None,
    key_added: str = PSEUDOSPOTS_KEY,
    inplace: bool = True,
) -> tuple[GeoDataFrame, AnnData, np.ndarray] | None:
    """Sum Visium HD bins or Xenium cells into pseudo-spots of ``size_um`` on a square lattice.

    HyperST's spots are about 55 µm wide (Visium); a Visium HD bin (2-16 µm) or a cell is too small and too
    sparse to be one. Pseudo-spots are squares of ``size_um`` side, side by side, whose counts are the sums
    of the bins or cells inside them; their niche is the ring of the 4 neighbouring pseudo-spots. They are
    written as circles of diameter ``size_um`` (the spot patch and the pixel size follow from it, as for
    Visium), so everything hyperst does with spots works on them, and sizes stay micrometres: a model trained
    on Visium predicts pseudo-spots, and the reverse.

    - **Bins** (``spatialdata_io.visium_hd``: table ``square_008um`` annotating the squares
      ``<dataset>_square_008um``): ``k = round(size_um / bin size)`` bins a side, grouped by their
      ``array_row``/``array_col`` (7 x 7 bins of 8 µm = 56 µm by default; the size used is ``k`` times the bin
      size). The pixel size comes from the bin size over the squares' side.
    - **Cells** (``spatialdata_io.xenium``: ``tables['table']`` annotating ``cell_circles`` or, with
      ``shapes_key=``, ``cell_boundaries``; the H&E aligned by an affine): squares of ``size_um`` laid in the
      H&E's pixels from the cells' smallest ``x`` and ``y``; each cell counts in the square holding its
      centroid. The cells' coordinates (µm in the Xenium reader's layout) give the pixel size.

    Parameters
    ----------
    sdata
        A slide read by :func:`spatialdata_io.visium_hd` or :func:`spatialdata_io.xenium` (or laid out alike)
        with an H&E image.
    table_key
        Table of bins or cells; inferred when there is one (``square_008um`` among several bin sizes).
    size_um
        Side of a pseudo-spot in micrometres.
    shapes_key
        Shapes of the bins or cells; inferred from the table's ``region``.
    image_key
        H&E image; inferred as the finest RGB image aligned with the bins or cells.
    microns_per_pixel
        Pixel size of the image; derived from the bin size, or from the Xenium cells' µm coordinates, when
        ``None``.
    layer
        Layer of the table holding raw counts (``None``: ``X``).
    min_members
        Fewest bins or cells a pseudo-spot must hold to be kept; ``None``: half of a full block of bins, or
        one cell.
    key_added
        Name of the table written; the circles are ``shapes[f"{key_added}_spots"]``. Elements of these names
        are replaced only if an earlier :func:`pseudospots` wrote them.
    inplace
        Write into ``sdata``; ``False`` returns the circles, the table and the assignment and changes nothing.

    Returns
    -------
    ``None`` with ``inplace=True``, after adding to ``sdata``:

    - ``shapes[f"{key_added}_spots"]``: circles of diameter ``size_um`` at the pseudo-spots' centres, in the
      image's pixels (integer index ``0 … n - 1``);
    - ``tables[key_added]``: ``n`` pseudo-spots x the source's genes, the summed counts in ``X`` (CSR),
      annotating the circles (``region_key='region'``, ``instance_key='spot_id'``); ``obs['array_row']``,
      ``obs['array_col']`` (lattice indices), ``obs['n_members']``; ``obsm['spatial']``: the pixel ``(x, y)``
      centres; ``uns['hyperst_pseudospots']``: the source table and shapes, image, platform, size, pixel size;
    - ``obs[f"{key_added}_id"]`` of the bins' or cells' table: the ``spot_id`` of each one's pseudo-spot
      (``-1`` for those in no kept pseudo-spot), which :func:`hyperst.tl.to_bins` reads.

    With ``inplace=False``, ``(circles, table, assignment)``.

    Raises
    ------
    ValueError
        If the slide has no table of bins or cells, the pixel size cannot be told, an argument is out of
        range, or an output name is taken by an element :func:`pseudospots` did not write.
    KeyError
        If ``table_key``, ``shapes_key``, ``image_key`` or ``layer`` is not found.

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.synthetic_visium_hd(tissue_mm2=0.2)[0]
    >>> hst.pp.pseudospots(sdata)
    >>> sdata.tables["hyperst_pseudospots"].uns["hyperst_pseudospots"]["size_um"]
    56.0
    """
    size_um = _check_arguments(sdata, size_um, min_members, key_added)
    out_shapes = f"{key_added}{SHAPES_SUFFIX}"
    replace = inplace and _check_free(sdata, out_shapes, key_added)
    source = _pick_source(sdata, table_key)
    m = members(sdata, source, shapes_key=shapes_key, image_key=image_key, microns_per_pixel=microns_per_pixel)
    table = sdata.tables[source]
    lattice, used_um = _lay_lattice(m, source, size_um, min_members)
    circles, spots = _elements(sdata, m, lattice, _counts(table, layer), out_shapes, used_um)
    spots.uns[PSEUDOSPOTS_KEY] = _params(m, lattice, source, size_um, used_um, layer, key_added)
    if not inplace:
        return circles, spots, lattice.assignment
    _write(sdata, circles, spots, lattice.assignment, key_added, replace=replace)
    return None


def _check_arguments(sdata: object, size_um: float, min_members: int | None, key_added: str) -> float:
    """Raise unless the arguments of :func:`pseudospots` are valid; return ``size_um`` as a float."""
    from spatialdata import SpatialData

    if not isinstance(sdata, SpatialData):
        raise TypeError(expected_type("sdata", "a SpatialData object", sdata))
    size_um = float(check_positive(size_um, "size_um"))
    if min_members is not None and (
        isinstance(min_members, bool) or not isinstance(min_members, int) or min_members < 1
    ):
        raise ValueError(expected("min_members", "None or an integer >= 1", min_members))
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(expected("key_added", "a non-empty string", key_added))
    return size_um


def _lay_lattice(m: object, source: str, size_um: float, min_members: int | None) -> tuple[object, float]:
    """Lay the pseudo-spots over the bins (on their own grid) or cells (squares); return them and their side in µm."""
    if len(m.centres_px) == 0:
        msg = f"Table `{source!r}` has no rows: there are no bins or cells to aggregate. Pass `table_key=` naming them."
        raise ValueError(msg)
    if m.kind == "bins" and m.lattice is not None and m.bin_um is not None:
        k = max(1, round(size_um / m.bin_um))
        lattice = bin_lattice(m.lattice, m.centres_px, k, min_members or math.ceil(k * k / 2))
        used_um = k * m.bin_um
    else:
        lattice = cell_lattice(m.centres_px, size_um / m.microns_per_pixel, min_members or 1)
        used_um = size_um
    if lattice.rows.size == 0:
        msg = (
            f"No pseudo-spot of {used_um:g} µm holds {min_members} or more of the {len(m.centres_px)} {m.kind} of "
            f"table `{source!r}`. Lower `min_members=` or raise `size_um=`."
        )
        raise ValueError(msg)
    return lattice, used_um


def _params(
    m: object, lattice: object, source: str, size_um: float, used_um: float, layer: str | None, key_added: str
) -> dict:
    """Return what :func:`pseudospots` records in its table's ``uns`` (``None`` values left out)."""
    params = {
        "source_table": source,
        "source_shapes": m.shapes_key,
        "image_key": m.image_key,
        "kind": m.kind,
        "platform": m.platform,
        "size_um": float(used_um),
        "requested_size_um": size_um,
        "bins_per_side": int(round(used_um / m.bin_um)) if m.kind == "bins" and m.bin_um else None,
        "microns_per_pixel": float(m.microns_per_pixel),
        "scale_source": m.scale_source,
        "layer": layer,
        "members_key": f"{key_added}{ID_SUFFIX}",
        "n_members": int((lattice.assignment >= 0).sum()),
    }
    return {k: v for k, v in params.items() if v is not None}


def _write(
    sdata: SpatialData, circles: GeoDataFrame, spots: AnnData, assignment: np.ndarray, key_added: str, *, replace: bool
) -> None:
    """Add the circles, the table and the bins' or cells' pseudo-spot column to ``sdata``."""
    out_shapes = f"{key_added}{SHAPES_SUFFIX}"
    params = spots.uns[PSEUDOSPOTS_KEY]
    if replace:
        logger.warning(
            "Replacing `shapes[%r]`, `tables[%r]` from an earlier `hyperst.pp.pseudospots`.", out_shapes, key_added
        )
        del sdata.tables[key_added]
        if out_shapes in sdata.shapes:
            del sdata.shapes[out_shapes]
    logger.info(
        "Adding `shapes[%r]`, `tables[%r]`: %d pseudo-spots of %g µm from %d %s of `%s`, and `obs[%r]` to it",
        out_shapes,
        key_added,
        spots.n_obs,
        params["size_um"],
        assignment.size,
        params["kind"],
        params["source_table"],
        params["members_key"],
    )
    sdata.shapes[out_shapes] = circles
    sdata.tables[key_added] = spots
    sdata.tables[params["source_table"]].obs[params["members_key"]] = assignment


def _elements(
    sdata: SpatialData, m: object, lattice: object, counts: object, out_shapes: str, size_um: float
) -> tuple[GeoDataFrame, AnnData]:
    """Build the pseudo-spots' circles and table."""
    import anndata as ad
    import pandas as pd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    n = lattice.rows.size
    ids = np.arange(n)
    image = sdata.images[m.image_key]
    transformations = {cs: copy.deepcopy(t) for cs, t in get_transformation(image, get_all=True).items()}
    radius = size_um / m.microns_per_pixel / 2
    circles = ShapesModel.parse(
        lattice.centres_px, geometry=0, radius=np.full(n, radius), index=pd.Index(ids), transformations=transformations
    )
    source = sdata.tables[m.table_key]
    obs = pd.DataFrame(
        {
            "array_row": lattice.rows.astype(np.int64),
            "array_col": lattice.cols.astype(np.int64),
            N_MEMBERS_KEY: lattice.n_members.astype(np.int64),
            REGION_KEY: pd.Categorical([out_shapes] * n),
            INSTANCE_KEY: ids,
        },
        index=pd.Index([f"pseudospot_{r}_{c}" for r, c in zip(lattice.rows, lattice.cols, strict=True)]),
    )
    summed = sum_counts(counts, lattice.assignment, n).astype(np.float32)
    table = ad.AnnData(X=summed, obs=obs, var=source.var.copy(), obsm={"spatial": lattice.centres_px.copy()})
    return circles, TableModel.parse(table, region=out_shapes, region_key=REGION_KEY, instance_key=INSTANCE_KEY)


def spots_or_pseudospots(
    sdata: object,
    *,
    table_key: str | None,
    shapes_key: str | None,
    image_key: str | None,
    microns_per_pixel: float | None,
    write: bool,
) -> tuple[object, str | None, str | None]:
    """Return the slide and keys to read spots from: as given, or pseudo-spots of a slide of bins or cells.

    A slide whose chosen table (or, with ``table_key=None``, every table) holds bins or cells is aggregated
    with :func:`pseudospots` at its defaults, unless an earlier call left pseudo-spots of that table. With
    ``write``, the pseudo-spots are added to ``sdata`` (documented by :func:`hyperst.tl.predict`); otherwise
    they live in a new SpatialData that shares the image and leaves ``sdata`` untouched.
    """
    from spatialdata import SpatialData

    if not isinstance(sdata, SpatialData):
        return sdata, table_key, shapes_key
    fine = fine_tables(sdata)
    spots = input_tables(sdata)
    if not fine or (table_key is None and spots) or (table_key is not None and table_key not in fine):
        return sdata, table_key, shapes_key
    source = _pick_source(sdata, table_key)
    for key in spots:
        params = sdata.tables[key].uns.get(PSEUDOSPOTS_KEY)
        if isinstance(params, dict) and params.get("source_table") == source:
            logger.info("Using the pseudo-spots `tables[%r]` of the %s of `%s`.", key, fine[source], source)
            return sdata, key, None
    logger.info(
        "The %s of table `%s` are not spots: summing them into pseudo-spots of %g µm "
        "(`hyperst.pp.pseudospots`; call it first to choose the size).",
        fine[source],
        source,
        PSEUDOSPOT_UM,
    )
    options = {"table_key": source, "shapes_key": shapes_key, "image_key": image_key}
    if write:
        pseudospots(sdata, **options, microns_per_pixel=microns_per_pixel)
        return sdata, PSEUDOSPOTS_KEY, None
    circles, table, _ = pseudospots(sdata, **options, microns_per_pixel=microns_per_pixel, inplace=False)
    image = table.uns[PSEUDOSPOTS_KEY]["image_key"]
    shapes = f"{PSEUDOSPOTS_KEY}{SHAPES_SUFFIX}"
    view = SpatialData(images={image: sdata.images[image]}, shapes={shapes: circles}, tables={PSEUDOSPOTS_KEY: table})
    return view, PSEUDOSPOTS_KEY, None
