"""``hyperst.datasets.synthetic_xenium``: synthetic cell-level slides laid out as spatialdata-io reads Xenium."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._constants import SYNTHETIC_ATTRS
from .._validation import expected
from ._synthetic import _check_int
from ._synthetic_counts import gene_programs, sample_counts
from ._synthetic_fine import SPOT_AREA_UM2, check_area, gene_table, point_signal, tissue
from ._synthetic_image import TEXTURES
from ._synthetic_tissue import DOMAINS, PARENT, SUBDOMAINS

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._synthetic_counts import GenePrograms
    from ._synthetic_fine import Tissue

__all__ = ["XENIUM_PIXEL_UM", "synthetic_xenium"]

#: Pixel size of Xenium's morphology image, the ``"global"`` coordinate system of the reader.
XENIUM_PIXEL_UM = 0.2125
#: Cells per nucleus of the image's texture (fewer cells than drawn nuclei keeps the tables small).
_CELL_FRACTION = 0.5
#: Counts of a cell relative to a Visium spot's of the same area (imaging panels detect more per µm²).
_DETECTION = 2.0
_MPP_RANGE = (0.25, 4.0)
_POLYGON_VERTICES = 8


def synthetic_xenium(
    n_slides: int = 1,
    tissue_mm2: float = 1.0,
    n_genes: int = 120,
    *,
    microns_per_pixel: float = 1.0,
    rotation_deg: float = 25.0,
    seed: int = 0,
) -> list[SpatialData]:
    """Make synthetic Xenium slides with an aligned H&E, laid out as :func:`spatialdata_io.xenium` reads them.

    The tissue, its nested domains, the H&E-like image and the gene programs are those of
    :func:`hyperst.datasets.synthetic`. Cells are scattered over the tissue with the density of each
    sub-domain's nuclei; each draws its counts from its sub-domain, the nuclear fraction of the image over a
    50 µm window around it and the domains on an 80 µm ring around it, scaled to its area. The H&E is
    registered to the Xenium frame by an affine transformation (rotation, scale, shift), as
    spatialdata-io's reader leaves an aligned image.

    Parameters
    ----------
    n_slides
        Number of slides; slide ``i`` is named ``f"synthetic_xenium_{i}"`` (``sdata.attrs``).
    tissue_mm2
        Tissue area per slide in mm², between 0.05 and 20 (about 4,000 cells per mm²).
    n_genes
        Genes of the targeted panel (at least 10).
    microns_per_pixel
        Pixel size of the H&E image, between 0.25 and 4.
    rotation_deg
        Rotation of the Xenium frame relative to the H&E image, in degrees.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives identical slides.

    Returns
    -------
    One :class:`~spatialdata.SpatialData` per slide, all in coordinate system ``"global"`` (pixels of
    Xenium's morphology image, 0.2125 µm):

    - ``images["he_image"]``: the multiscale ``(c, y, x)`` uint8 H&E with channels ``r, g, b``, mapped to
      ``"global"`` by an :class:`~spatialdata.transformations.Affine` (the alignment matrix);
    - ``shapes["cell_circles"]``: a circle per cell at its centroid, ``radius`` ``sqrt(cell_area / pi)``;
      ``shapes["cell_boundaries"]``: an octagon per cell; both in µm (``Scale(1 / 0.2125)`` to ``"global"``),
      indexed by ``cell_id``;
    - ``tables["table"]``: raw counts in ``X`` (CSR float32), annotating ``cell_circles`` through
      ``region``/``cell_id`` (as ``xenium(..., cells_as_circles=True)`` reads it); ``obs`` holds ``cell_id``,
      ``transcript_counts``, ``cell_area``, ``nucleus_area``, ``region`` and the ground truth ``domain`` and
      ``subdomain``; ``obsm["spatial"]`` the centroids in µm; ``var`` holds ``gene_ids``, ``feature_types``,
      ``genome`` and ``synthetic_role``.

    ``sdata.attrs["spatialdata_io_reader"]`` is ``"xenium"``, as the reader sets it.

    Raises
    ------
    ValueError
        If an argument is out of range.

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.synthetic_xenium(tissue_mm2=0.1)[0]
    >>> sdata.tables["table"].uns["spatialdata_attrs"]["region"]
    'cell_circles'
    """
    n_slides = _check_int("n_slides", n_slides, 1)
    n_genes = _check_int("n_genes", n_genes, 10)
    seed = _check_int("seed", seed, 0)
    tissue_mm2 = check_area(tissue_mm2)
    low, high = _MPP_RANGE
    if isinstance(microns_per_pixel, bool) or not isinstance(microns_per_pixel, int | float):
        raise ValueError(expected("microns_per_pixel", f"a number in [{low}, {high}]", microns_per_pixel))
    if not low <= microns_per_pixel <= high:
        raise ValueError(expected("microns_per_pixel", f"a number in [{low}, {high}]", microns_per_pixel))
    if isinstance(rotation_deg, bool) or not isinstance(rotation_deg, int | float) or not np.isfinite(rotation_deg):
        raise ValueError(expected("rotation_deg", "a finite number", rotation_deg))
    programs_seed, *slide_seeds = np.random.SeedSequence(seed).spawn(n_slides + 1)
    programs = gene_programs(np.random.default_rng(programs_seed), n_genes)
    return [
        _slide(f"synthetic_xenium_{i}", np.random.default_rng(s), programs, tissue_mm2, microns_per_pixel, rotation_deg)
        for i, s in enumerate(slide_seeds)
    ]


def _cells(rng: np.random.Generator, t: Tissue) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centroids ``(y, x)`` in µm of the image frame and their areas, a Poisson process over the tissue."""
    cell = t.factor * t.microns_per_pixel
    lab = t.labels
    rate = np.where(lab >= 0, TEXTURES["density"][np.maximum(lab, 0)], 0.0) * cell**2 / 1000.0 * _CELL_FRACTION
    n = rng.poisson(rate).ravel()
    flat = np.repeat(np.arange(n.size), n)
    row, col = np.divmod(flat, lab.shape[1])
    y = (row + rng.random(flat.size)) * cell
    x = (col + rng.random(flat.size)) * cell
    radius = TEXTURES["radius"][lab.ravel()[flat]] * 1.8 * np.exp(0.15 * rng.standard_normal(flat.size))
    return y, x, np.pi * radius**2


def _cell_ids(n: int) -> np.ndarray:
    """Xenium-style cell ids: eight letters from ``a`` to ``p`` (the base-16 cell number) and ``-1``."""
    digits = (np.arange(n)[:, None] // 16 ** np.arange(7, -1, -1)) % 16
    return np.array(["".join(chr(97 + d) for d in row) + "-1" for row in digits])


def _table(programs: GenePrograms, counts: np.ndarray, ids: np.ndarray, area: np.ndarray, sub: np.ndarray) -> AnnData:
    n = counts.shape[0]
    obs = pd.DataFrame(
        {
            "cell_id": ids,
            "transcript_counts": counts.sum(1).astype(np.int64),
            "control_probe_counts": np.zeros(n, dtype=np.int64),
            "cell_area": area,
            "nucleus_area": area * 0.35,
            "domain": pd.Categorical.from_codes(PARENT[sub], categories=list(DOMAINS)),
            "subdomain": pd.Categorical.from_codes(sub, categories=list(SUBDOMAINS)),
            "region": pd.Categorical(["cell_circles"] * n),
        },
        index=pd.Index(ids),
    )
    return AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=obs, var=gene_table(programs))


def _slide(
    name: str,
    rng: np.random.Generator,
    programs: GenePrograms,
    tissue_mm2: float,
    microns_per_pixel: float,
    rotation_deg: float,
) -> SpatialData:
    from geopandas import GeoDataFrame
    from shapely import Polygon
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Affine, Scale
    from xarray import DataArray

    t = tissue(rng, tissue_mm2, microns_per_pixel, 1)
    y, x, area = _cells(rng, t)
    sub = np.maximum(t.label_at(y, x), 0)
    nuclear, composition = point_signal(t, y, x)
    counts = sample_counts(rng, programs, sub, nuclear, composition, size_factor=_DETECTION * area / SPOT_AREA_UM2)
    ids = _cell_ids(y.size)
    adata = _table(programs, counts, ids, area, sub)

    # the Xenium frame (µm): the image frame rotated and shifted so that every cell has positive coordinates
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    h, w = t.image.shape[1:]
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]]) * microns_per_pixel @ rot.T
    shift = 20.0 - corners.min(0)
    xy_um = np.column_stack([x, y]) @ rot.T + shift
    adata.obsm["spatial"] = xy_um
    to_global = Scale(np.full(2, 1 / XENIUM_PIXEL_UM), axes=("x", "y"))
    radius = np.sqrt(area / np.pi)
    index = pd.Index(ids, name="cell_id")
    circles = ShapesModel.parse(xy_um, geometry=0, radius=radius, index=index, transformations={"global": to_global})
    angles = 2 * np.pi * np.arange(_POLYGON_VERTICES) / _POLYGON_VERTICES
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    polygons = [Polygon(c + r * ring) for c, r in zip(xy_um, radius, strict=True)]
    boundaries = ShapesModel.parse(
        GeoDataFrame(geometry=polygons, index=index.copy()), transformations={"global": to_global}
    )
    # the alignment matrix: H&E pixels -> Xenium µm -> morphology pixels
    alignment = np.eye(3)
    alignment[:2, :2] = rot * microns_per_pixel / XENIUM_PIXEL_UM
    alignment[:2, 2] = shift / XENIUM_PIXEL_UM
    he = Image2DModel.parse(
        DataArray(t.image, dims=("c", "y", "x")),
        scale_factors=[2, 2],
        c_coords=["r", "g", "b"],
        transformations={"global": Affine(alignment, input_axes=("x", "y"), output_axes=("x", "y"))},
    )
    table = TableModel.parse(adata, region="cell_circles", region_key="region", instance_key="cell_id")
    sdata = SpatialData(
        images={"he_image": he},
        shapes={"cell_circles": circles, "cell_boundaries": boundaries},
        tables={"table": table},
    )
    sdata.attrs["spatialdata_io_reader"] = "xenium"
    sdata.attrs[SYNTHETIC_ATTRS] = {
        "technology": "xenium",
        "name": name,
        "microns_per_pixel": microns_per_pixel,
        "rotation_deg": float(rotation_deg),
        "alignment": alignment.tolist(),
    }
    return sdata
