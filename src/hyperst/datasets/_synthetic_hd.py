"""``hyperst.datasets.synthetic_visium_hd``: synthetic slides laid out as spatialdata-io reads Visium HD."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._constants import SYNTHETIC_ATTRS
from .._validation import expected
from ._synthetic import _check_int, visium_images
from ._synthetic_counts import gene_programs, sample_counts
from ._synthetic_fine import SCAFFOLD_UM, SPOT_AREA_UM2, check_area, gene_table, point_signal, tissue
from ._synthetic_tissue import DOMAINS, PARENT, SUBDOMAINS

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._synthetic_counts import GenePrograms
    from ._synthetic_fine import Tissue

__all__ = ["synthetic_visium_hd"]

_HIRES_UM_PER_PX = 4.0
_BIN_UM = int(SCAFFOLD_UM)
_MPP_RANGE = (0.25, 4.0)


def synthetic_visium_hd(
    n_slides: int = 1,
    tissue_mm2: float = 1.0,
    n_genes: int = 100,
    *,
    bin_sizes: tuple[int, ...] = (8, 16),
    microns_per_pixel: float = 1.0,
    seed: int = 0,
) -> list[SpatialData]:
    """Make synthetic H&E slides with Visium HD bins, laid out as :func:`spatialdata_io.visium_hd` reads them.

    The tissue, its nested domains, the H&E-like image and the gene programs are those of
    :func:`hyperst.datasets.synthetic`. Each 8 µm bin under the tissue draws its counts from its sub-domain,
    the nuclear fraction of the image over a 50 µm window around it and the domains on an 80 µm ring around
    it, scaled to its area (an 8 µm bin holds about 3 % of a Visium spot's counts). Coarser bins are sums of
    the 8 µm ones. A pseudo-spot of 7 x 7 bins (:func:`hyperst.pp.pseudospots`) therefore carries the signal of
    a Visium spot, and the image-to-gene signal is real and learnable.

    Parameters
    ----------
    n_slides
        Number of slides; slide ``i`` is named ``f"synthetic_hd_{i}"``.
    tissue_mm2
        Tissue area per slide in mm² (1 mm² is 15,625 bins of 8 µm); between 0.05 and 20.
    n_genes
        Number of genes (at least 10).
    bin_sizes
        Bin sizes in µm, multiples of 8 (one table each).
    microns_per_pixel
        Pixel size of the full-resolution image, between 0.25 and 4.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives identical slides.

    Returns
    -------
    list of SpatialData
        One slide per entry; its elements are listed under Notes.

    Raises
    ------
    ValueError
        If an argument is out of range.

    Notes
    -----
    Each slide has ``dataset_id = f"synthetic_hd_{i}"`` and, for each bin size ``b``
    (``s = f"square_{b:03d}um"``):

    - ``images[f"{dataset_id}_full_image"]`` (multiscale), ``[f"{dataset_id}_hires_image"]`` and
      ``[f"{dataset_id}_lowres_image"]``, in coordinate system ``dataset_id`` (full-resolution pixels) as for
      :func:`hyperst.datasets.synthetic`;
    - ``shapes[f"{dataset_id}_{s}"]``: the bins as squares (polygons, no ``radius`` column), index
      ``0 … n - 1``, in full-resolution pixels;
    - ``tables[s]``: raw counts in ``X`` (CSR float32) of the bins under the tissue, annotating the squares
      through ``region``/``location_id``; ``obs`` holds ``in_tissue``, ``array_row``, ``array_col``,
      ``location_id``, ``region`` and, for the 8 µm bins, the ground truth ``domain`` and ``subdomain``;
      ``obsm["spatial"]`` the pixel ``(x, y)`` of each bin centre; ``var`` holds ``gene_ids``,
      ``feature_types``, ``genome`` and ``synthetic_role``.

    ``sdata.attrs["spatialdata_io_reader"]`` is ``"visium_hd"``, as the reader sets it.

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.synthetic_visium_hd(tissue_mm2=0.1)[0]
    >>> sorted(sdata.tables)
    ['square_008um', 'square_016um']
    """
    n_slides = _check_int("n_slides", n_slides, 1)
    n_genes = _check_int("n_genes", n_genes, 10)
    seed = _check_int("seed", seed, 0)
    tissue_mm2 = check_area(tissue_mm2)
    sizes = tuple(bin_sizes) if isinstance(bin_sizes, tuple | list) else ()
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 8 or b % 8 for b in sizes):
        raise ValueError(expected("bin_sizes", "a non-empty tuple of multiples of 8 (µm)", bin_sizes))
    low, high = _MPP_RANGE
    if isinstance(microns_per_pixel, bool) or not isinstance(microns_per_pixel, int | float):
        raise ValueError(expected("microns_per_pixel", f"a number in [{low}, {high}]", microns_per_pixel))
    if not low <= microns_per_pixel <= high:
        raise ValueError(expected("microns_per_pixel", f"a number in [{low}, {high}]", microns_per_pixel))
    programs_seed, *slide_seeds = np.random.SeedSequence(seed).spawn(n_slides + 1)
    programs = gene_programs(np.random.default_rng(programs_seed), n_genes)
    return [
        _slide(
            f"synthetic_hd_{i}", np.random.default_rng(s), programs, tissue_mm2, sorted(set(sizes)), microns_per_pixel
        )
        for i, s in enumerate(slide_seeds)
    ]


def _bins(t: Tissue, counts: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray, sparse.csr_matrix, np.ndarray]:
    """Bins of ``factor`` x ``factor`` 8 µm bins: rows, columns, summed counts, members' first 8 µm bin."""
    key = (t.row // factor) * (int(t.col.max()) // factor + 1) + t.col // factor
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    member = sparse.csr_matrix((np.ones(key.size), (inverse, np.arange(key.size))), shape=(uniq.size, key.size))
    return t.row[first] // factor, t.col[first] // factor, member @ sparse.csr_matrix(counts), first


def _slide(
    dataset_id: str,
    rng: np.random.Generator,
    programs: GenePrograms,
    tissue_mm2: float,
    sizes: list[int],
    microns_per_pixel: float,
) -> SpatialData:
    from geopandas import GeoDataFrame
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    hires_factor = max(1, round(_HIRES_UM_PER_PX / microns_per_pixel))
    t = tissue(rng, tissue_mm2, microns_per_pixel, hires_factor)
    nuclear, composition = point_signal(t, t.y, t.x)
    counts = sample_counts(rng, programs, t.subdomain, nuclear, composition, size_factor=_BIN_UM**2 / SPOT_AREA_UM2)
    images, transformations, scalefactors = visium_images(dataset_id, t.image, hires_factor)
    # the scaffold's first site sits at (y, x) = (y0, x0) µm; bin (r, c) of size b is centred at
    # (y0 + (r f + (f - 1) / 2) 8, x0 + ...) with f = b / 8
    y0, x0 = float(t.y.min()) - t.row.min() * SCAFFOLD_UM, float(t.x.min()) - t.col.min() * SCAFFOLD_UM
    shapes, tables = {}, {}
    for size in sizes:
        f = size // _BIN_UM
        row, col, summed, first = _bins(t, counts, f)
        name = f"square_{size:03d}um"
        n = row.size
        xy = np.column_stack([x0 + (col * f + (f - 1) / 2) * SCAFFOLD_UM, y0 + (row * f + (f - 1) / 2) * SCAFFOLD_UM])
        xy /= microns_per_pixel
        obs = pd.DataFrame(
            {
                "in_tissue": np.ones(n, dtype=np.int64),
                "array_row": row.astype(np.int64),
                "array_col": col.astype(np.int64),
                "location_id": np.arange(n),
            },
            index=pd.Index([f"s_{size:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(row, col, strict=True)]),
        )
        if f == 1:
            obs["domain"] = pd.Categorical.from_codes(PARENT[t.subdomain[first]], categories=list(DOMAINS))
            obs["subdomain"] = pd.Categorical.from_codes(t.subdomain[first], categories=list(SUBDOMAINS))
        shapes_key = f"{dataset_id}_{name}"
        obs["region"] = pd.Categorical([shapes_key] * n)
        adata = AnnData(X=summed.astype(np.float32).tocsr(), obs=obs, var=gene_table(programs))
        adata.obsm["spatial"] = xy
        half = size / microns_per_pixel / 2
        circles = ShapesModel.parse(xy, geometry=0, radius=half, index=obs["location_id"].copy())
        # as the reader does it: each bin's centre buffered into an axis-aligned square of its side
        squares = GeoDataFrame(geometry=circles.buffer(half, cap_style=3))
        shapes[shapes_key] = ShapesModel.parse(squares, transformations=transformations)
        tables[name] = TableModel.parse(adata, region=shapes_key, region_key="region", instance_key="location_id")
    sdata = SpatialData(images=images, shapes=shapes, tables=tables)
    sdata.attrs["spatialdata_io_reader"] = "visium_hd"
    sdata.attrs[SYNTHETIC_ATTRS] = {
        "technology": "visium_hd",
        "microns_per_pixel": microns_per_pixel,
        "bin_sizes_um": list(sizes),
        **scalefactors,
    }
    return sdata
