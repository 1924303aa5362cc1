"""``hyperst.datasets.synthetic``: the embedded default dataset, laid out as spatialdata-io reads Visium."""

from __future__ import annotations

from numbers import Integral, Real
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale
from xarray import DataArray

from .._constants import GRID_PITCH_UM, SPOT_DIAMETER_UM, SYNTHETIC_ATTRS
from .._validation import expected
from ._synthetic_counts import ROLES, GenePrograms, gene_programs, niche_composition, sample_counts
from ._synthetic_image import downscale, render
from ._synthetic_tissue import DOMAINS, PARENT, SUBDOMAINS, make_layout

if TYPE_CHECKING:
    from ._synthetic_tissue import Layout

__all__ = ["synthetic", "visium_images"]

_HIRES_UM_PER_PX = 4.0  # like a Visium ``tissue_hires_image.png`` (about 2000 px over the capture area)
_LOWRES_LONG_SIDE_PX = 600
_MPP_RANGE = (0.2, 10.0)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(expected(name, f"an integer >= {minimum}", value))
    return int(value)


def synthetic(
    n_slides: int = 3,
    n_spots: int = 1000,
    n_genes: int = 300,
    *,
    technology: Literal["visium", "st"] = "visium",
    microns_per_pixel: float = 1.0,
    seed: int = 0,
) -> list[SpatialData]:
    """Make synthetic H&E slides with spot counts, laid out as :func:`spatialdata_io.visium` reads a sample.

    Each slide is tissue of three nested domains (``tumour``, ``stroma``, ``immune``), each split into two or
    three sub-domains with their own texture (nuclear density and size, stroma tone, fibres, lumens), plus a
    spot-scale cell-density field. Counts depend on the domain (strongly), the sub-domain (moderately), the
    nuclear fraction of the pixels under the spot, and the domains of the spot's grid neighbours, so the
    image-to-gene signal, the hierarchy and the niche signal are all real and learnable from the pixels.

    Parameters
    ----------
    n_slides
        Number of slides; slide ``i`` is named ``f"synthetic_{i}"``.
    n_spots
        Number of in-tissue spots per slide.
    n_genes
        Number of genes (at least 10).
    technology
        ``"visium"``: hexagonal grid, 100 µm pitch, 55 µm spots. ``"st"``: legacy Spatial Transcriptomics,
        square grid, 200 µm pitch, 100 µm spots.
    microns_per_pixel
        Pixel size of the full-resolution image, between 0.2 and 10.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives identical slides.

    Returns
    -------
    One :class:`~spatialdata.SpatialData` per slide, with ``dataset_id = f"synthetic_{i}"``:

    - ``images[f"{dataset_id}_full_image"]``: the multiscale ``(c, y, x)`` uint8 H&E image, in coordinate
      system ``dataset_id``; ``images[f"{dataset_id}_hires_image"]`` and ``[f"{dataset_id}_lowres_image"]``:
      its downscaled copies, also in ``f"{dataset_id}_downscaled_hires"`` / ``"…_downscaled_lowres"``;
    - ``shapes[dataset_id]``: the spot circles (``radius`` column, index ``spot_id``);
    - ``tables["table"]``: raw counts in ``X`` (CSR float32), annotating the circles through
      ``region``/``spot_id``; ``obs`` holds ``in_tissue``, ``array_row``, ``array_col``, ``spot_id``,
      ``region`` and the ground truth ``domain`` and ``subdomain``; ``obsm["spatial"]`` the full-resolution
      pixel ``(x, y)`` of each spot; ``var`` holds ``gene_ids``, ``feature_types``, ``genome`` and
      ``synthetic_role`` (``"domain"``, ``"subdomain"``, ``"morphology"``, ``"niche"`` or ``"noise"``).

    Raises
    ------
    ValueError
        If an argument is out of range.

    Examples
    --------
    >>> import hyperst
    >>> slides = hyperst.datasets.synthetic(n_slides=1, n_spots=200)
    >>> slides[0].tables["table"].n_obs
    200
    """
    n_slides = _check_int("n_slides", n_slides, 1)
    n_spots = _check_int("n_spots", n_spots, 10)
    n_genes = _check_int("n_genes", n_genes, 10)
    seed = _check_int("seed", seed, 0)
    if technology not in SPOT_DIAMETER_UM:
        raise ValueError(expected("technology", f"one of {sorted(SPOT_DIAMETER_UM)}", technology))
    low, high = _MPP_RANGE
    if (
        isinstance(microns_per_pixel, bool)
        or not isinstance(microns_per_pixel, Real)
        or not low <= microns_per_pixel <= high
    ):
        raise ValueError(expected("microns_per_pixel", f"a number in [{low}, {high}]", microns_per_pixel))

    programs_seed, *slide_seeds = np.random.SeedSequence(seed).spawn(n_slides + 1)
    programs = gene_programs(np.random.default_rng(programs_seed), n_genes)
    return [
        _slide(
            f"synthetic_{i}",
            np.random.default_rng(s),
            programs,
            n_spots,
            technology,
            float(microns_per_pixel),
        )
        for i, s in enumerate(slide_seeds)
    ]


def _disc_mean(mask: np.ndarray, y: np.ndarray, x: np.ndarray, radius: float) -> np.ndarray:
    """Mean of a ``(H, W)`` mask over the pixels whose centres lie within ``radius`` of each ``(y, x)``."""
    reach = int(np.ceil(radius)) + 1
    dy, dx = (g.ravel() for g in np.mgrid[-reach : reach + 1, -reach : reach + 1])
    out = np.empty(y.size)
    chunk = max(1, 4_000_000 // dy.size)
    for s in range(0, y.size, chunk):
        cy, cx = y[s : s + chunk, None], x[s : s + chunk, None]
        rows, cols = np.floor(cy).astype(np.int64) + dy, np.floor(cx).astype(np.int64) + dx
        inside = (rows + 0.5 - cy) ** 2 + (cols + 0.5 - cx) ** 2 <= radius**2
        inside &= (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
        values = mask[np.clip(rows, 0, mask.shape[0] - 1), np.clip(cols, 0, mask.shape[1] - 1)] & inside
        out[s : s + chunk] = values.sum(axis=1) / np.maximum(inside.sum(axis=1), 1)
    return out


def _barcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw unique 10x-style barcodes ``"ACGT…-1"`` (16 bases), sorted as in a filtered feature matrix."""
    codes = np.unique(rng.integers(0, 4**16, size=2 * n + 16, dtype=np.int64))
    codes = rng.permutation(codes)[:n]
    digits = (codes[:, None] // 4 ** np.arange(15, -1, -1)) % 4
    return np.sort(np.array(["".join("ACGT"[d] for d in row) + "-1" for row in digits]))


def _table(
    dataset_id: str,
    rng: np.random.Generator,
    layout: Layout,
    counts: np.ndarray,
    programs: GenePrograms,
    microns_per_pixel: float,
) -> AnnData:
    n_spots, n_genes = counts.shape
    barcodes = _barcodes(rng, n_spots)
    order = rng.permutation(n_spots)  # spots listed in barcode order, as read from a 10x matrix
    subdomain = layout.subdomain[order]
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "array_row": layout.array_row[order].astype(np.int64),
            "array_col": layout.array_col[order].astype(np.int64),
            "spot_id": np.arange(n_spots),
            "domain": pd.Categorical.from_codes(PARENT[subdomain], categories=list(DOMAINS)),
            "subdomain": pd.Categorical.from_codes(subdomain, categories=list(SUBDOMAINS)),
        },
        index=pd.Index(barcodes),
    )
    width = max(4, len(str(n_genes)))
    var = pd.DataFrame(
        {
            "gene_ids": [f"SYNG{i:011d}" for i in range(1, n_genes + 1)],
            "feature_types": "Gene Expression",
            "genome": "synthetic",
            "synthetic_role": pd.Categorical(programs.role, categories=list(ROLES)),
        },
        index=pd.Index([f"SYN{i:0{width}d}" for i in range(1, n_genes + 1)]),
    )
    adata = AnnData(X=sparse.csr_matrix(counts[order].astype(np.float32)), obs=obs, var=var)
    adata.obsm["spatial"] = np.column_stack([layout.x[order], layout.y[order]]) / microns_per_pixel
    adata.uns["spatial"] = {dataset_id: {"metadata": {"chemistry_description": "hyperst synthetic"}}}
    adata.obs["region"] = pd.Categorical([dataset_id] * n_spots)
    return adata


def _slide(
    dataset_id: str,
    rng: np.random.Generator,
    programs: GenePrograms,
    n_spots: int,
    technology: str,
    microns_per_pixel: float,
) -> SpatialData:
    hexagonal = technology == "visium"
    hires_factor = max(1, round(_HIRES_UM_PER_PX / microns_per_pixel))
    layout = make_layout(
        rng,
        n_spots,
        pitch_um=GRID_PITCH_UM[technology],
        hexagonal=hexagonal,
        microns_per_pixel=microns_per_pixel,
        pixel_multiple=hires_factor,
    )
    image, nuclei = render(rng, layout, microns_per_pixel)
    radius_px = SPOT_DIAMETER_UM[technology] / 2.0 / microns_per_pixel
    y_px, x_px = layout.y / microns_per_pixel, layout.x / microns_per_pixel
    nuclear_fraction = _disc_mean(nuclei, y_px, x_px, radius_px)
    composition = niche_composition(PARENT[layout.subdomain], layout.neighbours)
    counts = sample_counts(rng, programs, layout.subdomain, nuclear_fraction, composition)
    adata = _table(dataset_id, rng, layout, counts, programs, microns_per_pixel)

    images, transformations, scalefactors = visium_images(dataset_id, image, hires_factor)
    circles = ShapesModel.parse(
        adata.obsm["spatial"],
        geometry=0,
        radius=radius_px,
        index=adata.obs["spot_id"].copy(),
        transformations=transformations,
    )
    table = TableModel.parse(adata, region=dataset_id, region_key="region", instance_key="spot_id")
    sdata = SpatialData(images=images, shapes={dataset_id: circles}, tables={"table": table})
    sdata.attrs[SYNTHETIC_ATTRS] = {
        "technology": technology,
        "microns_per_pixel": microns_per_pixel,
        "spot_diameter_fullres": 2.0 * radius_px,
        **scalefactors,
    }
    return sdata


def visium_images(
    dataset_id: str, image: np.ndarray, hires_factor: int
) -> tuple[dict[str, DataArray], dict[str, object], dict[str, float]]:
    """Lay out a sample's full, hires and lowres images as spatialdata-io's Visium (and Visium HD) readers do.

    Parameters
    ----------
    dataset_id
        The sample's name: the coordinate system of the full-resolution pixels.
    image
        ``(3, height, width)`` uint8 full-resolution image.
    hires_factor
        Full-resolution pixels per hires pixel.

    Returns
    -------
    ``(images, transformations, scalefactors)``: the image elements, the transformations of shapes drawn in
    full-resolution pixels (one per coordinate system) and the hires and lowres scale factors.
    """
    hires = downscale(image, hires_factor)
    lowres_factor = max(1, round(max(hires.shape[1:]) / _LOWRES_LONG_SIDE_PX))
    lowres = downscale(hires, lowres_factor)
    hires_scalef = 1.0 / hires_factor
    lowres_scalef = hires_scalef / lowres_factor
    transform_lowres = Scale(np.array([lowres_scalef, lowres_scalef]), axes=("y", "x"))
    transform_hires = Scale(np.array([hires_scalef, hires_scalef]), axes=("y", "x"))
    transformations = {
        dataset_id: Identity(),
        f"{dataset_id}_downscaled_hires": transform_hires,
        f"{dataset_id}_downscaled_lowres": transform_lowres,
    }
    images = {
        f"{dataset_id}_full_image": Image2DModel.parse(
            DataArray(image, dims=("c", "y", "x")),
            scale_factors=[2, 2],
            transformations={dataset_id: Identity()},
            rgb=None,
        ),
    }
    for name, small, transform in (("hires", hires, transform_hires), ("lowres", lowres, transform_lowres)):
        images[f"{dataset_id}_{name}_image"] = Image2DModel.parse(
            DataArray(small, dims=("c", "y", "x")),
            transformations={f"{dataset_id}_downscaled_{name}": Identity(), dataset_id: transform.inverse()},
            rgb=None,
        )
    scalefactors = {"tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": lowres_scalef}
    return images, transformations, scalefactors
