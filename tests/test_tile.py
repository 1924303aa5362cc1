"""``hst.pp.tile``: virtual Visium-like spots over the tissue of an H&E image."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hyperst as hst
from hyperst._data import detect_grid, slide_layout

KEY = "hyperst_tiles"
SHAPES = f"{KEY}_spots"
FULL = "synthetic_0_full_image"
HIRES = "synthetic_0_hires_image"


def _image_slide(image: np.ndarray, *, cs: str = "global", scale_factors: list[int] | None = None):
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    el = Image2DModel.parse(
        DataArray(image, dims=("c", "y", "x")), transformations={cs: Identity()}, scale_factors=scale_factors
    )
    return SpatialData(images={"he": el})


def _disk_image(size: int, radius: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """White glass with a textured pink/purple disk of tissue; returns the ``(3, y, x)`` image and the disk."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disk = (xx + 0.5 - size / 2) ** 2 + (yy + 0.5 - size / 2) ** 2 < radius**2
    pink, purple = np.array([225, 140, 200]), np.array([120, 70, 160])
    nuclei = rng.random((size, size)) < 0.15
    tissue = np.where(nuclei[..., None], purple, pink) + rng.normal(0, 8, (size, size, 3))
    glass = 247 + rng.normal(0, 2, (size, size, 3))
    rgb = np.where(disk[..., None], tissue, glass).clip(0, 255).astype(np.uint8)
    return rgb.transpose(2, 0, 1), disk


@pytest.fixture(scope="module")
def _synthetic():
    return hst.datasets.synthetic(n_slides=1, n_spots=200, seed=0)[0]


@pytest.fixture
def synthetic_slide(_synthetic):
    from spatialdata import deepcopy

    return deepcopy(_synthetic)


@pytest.fixture
def image_only(synthetic_slide):
    """The synthetic slide with its spots (circles and table) removed: only the three images remain."""
    del synthetic_slide.tables["table"]
    del synthetic_slide.shapes["synthetic_0"]
    return synthetic_slide


def test_count_matches_tissue_area_and_grid_is_hexagonal():
    mpp, spacing = 2.0, 150.0
    image, disk = _disk_image(1600, radius=650)
    sdata = _image_slide(image)
    hst.pp.tile(sdata, microns_per_pixel=mpp, spacing_um=spacing)
    table = sdata.tables[KEY]
    cell_um2 = spacing**2 * math.sqrt(3) / 2
    assert table.n_obs == pytest.approx(disk.sum() * mpp**2 / cell_um2, rel=0.1)
    grid = detect_grid(table.obsm["spatial"] * mpp)
    assert grid.kind == "hex"
    assert grid.pitch == pytest.approx(spacing, rel=1e-6)
    # Visium numbering: rows sqrt(3)/2 pitches apart, array_col steps of 2 are one pitch
    xy = table.obsm["spatial"] * mpp
    row, col = table.obs["array_row"].to_numpy(), table.obs["array_col"].to_numpy()
    assert np.all((row + col) % 2 == 0)
    np.testing.assert_allclose(np.diff(xy[:, 1])[np.diff(row) == 1], spacing * math.sqrt(3) / 2)
    np.testing.assert_allclose(xy[:, 0] - col * spacing / 2, (xy[:, 0] - col * spacing / 2)[0])
    assert table.obs_names[:2].tolist() == ["tile_0", "tile_1"]
    assert table.obs["spot_id"].tolist() == list(range(table.n_obs))
    assert (table.obs["tissue_fraction"] >= 0.5).all()


def test_tiles_lie_on_tissue(image_only):
    hst.pp.tile(image_only, microns_per_pixel=1.0)
    centres = image_only.tables[KEY].obsm["spatial"]
    grey = image_only.images[HIRES].data.compute().astype(float).mean(0)  # 4 µm/px copy, in memory
    darkness = 255 - grey
    r, c = (centres[:, 1] / 4).astype(int), (centres[:, 0] / 4).astype(int)
    under = np.array([darkness[i - 3 : i + 4, j - 3 : j + 4].mean() for i, j in zip(r, c, strict=True)])
    background = np.concatenate([darkness[:20].ravel(), darkness[-20:].ravel()])
    assert under.mean() > background.mean() + 20
    assert np.mean(under > np.percentile(background, 99)) > 0.95


def test_slide_layout_resolves_tiles_with_the_given_scale():
    image, _ = _disk_image(1200, radius=500, seed=1)
    sdata = _image_slide(image, cs="sample_9", scale_factors=[2])
    hst.pp.tile(sdata, microns_per_pixel=0.8, spacing_um=100.0)
    layout = slide_layout(sdata, table_key=KEY)
    assert layout.microns_per_pixel == pytest.approx(0.8, rel=1e-9)
    assert layout.grid.kind == "hex"
    assert layout.elements.shapes_key == SHAPES
    np.testing.assert_allclose(layout.centres_px, sdata.tables[KEY].obsm["spatial"])
    assert layout.spot_diameter_px == pytest.approx(55 / 0.8)


def test_circles_share_the_image_transformations(image_only):
    from spatialdata.transformations import get_transformation

    hst.pp.tile(image_only, image_key=HIRES, microns_per_pixel=4.0)
    image_t = get_transformation(image_only.images[HIRES], get_all=True)
    shapes_t = get_transformation(image_only.shapes[SHAPES], get_all=True)
    assert set(shapes_t) == set(image_t) == {"synthetic_0", "synthetic_0_downscaled_hires"}
    for cs, t in image_t.items():
        np.testing.assert_allclose(
            shapes_t[cs].to_affine_matrix(("x", "y"), ("x", "y")), t.to_affine_matrix(("x", "y"), ("x", "y"))
        )
    # seen from the full-resolution image (1 µm/px) the same circles give its scale
    layout = slide_layout(image_only, table_key=KEY, image_key=FULL)
    assert layout.microns_per_pixel == pytest.approx(1.0)


def test_scale_reused_from_existing_circles(synthetic_slide):
    hst.pp.tile(synthetic_slide)
    table = synthetic_slide.tables[KEY]
    assert table.uns[KEY]["microns_per_pixel"] == pytest.approx(1.0)
    assert table.uns[KEY]["image_key"] == FULL  # the finest of the three images
    assert "spots of table 'table'" in table.uns[KEY]["scale_source"]
    # the synthetic slide's 200 in-tissue spots lie on the same 100 µm lattice
    assert table.n_obs == pytest.approx(200, rel=0.15)


def test_retiling_replaces_and_reuses_the_scale(image_only):
    hst.pp.tile(image_only, microns_per_pixel=1.0)
    n = image_only.tables[KEY].n_obs
    hst.pp.tile(image_only, spacing_um=200.0)  # scale from the earlier tiling
    table = image_only.tables[KEY]
    assert table.uns[KEY]["microns_per_pixel"] == pytest.approx(1.0)
    assert table.n_obs == pytest.approx(n / 4, rel=0.15)
    assert len(image_only.shapes[SHAPES]) == table.n_obs


def test_inplace_false_changes_nothing(image_only):
    from anndata import AnnData
    from geopandas import GeoDataFrame

    before = {kind: sorted(getattr(image_only, kind)) for kind in ("images", "shapes", "tables")}
    circles, table = hst.pp.tile(image_only, microns_per_pixel=1.0, inplace=False)
    assert {kind: sorted(getattr(image_only, kind)) for kind in before} == before
    assert isinstance(circles, GeoDataFrame)
    assert isinstance(table, AnnData)
    assert len(circles) == table.n_obs > 0
    np.testing.assert_allclose(circles["radius"], 27.5)


def test_error_without_scale(image_only):
    with pytest.raises(ValueError, match=r"Pass `microns_per_pixel=`"):
        hst.pp.tile(image_only)


def test_error_on_blank_image():
    rng = np.random.default_rng(0)
    blank = (247 + rng.normal(0, 2, (3, 600, 600))).clip(0, 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"Found no tissue .* lower `min_tissue`"):
        hst.pp.tile(_image_slide(blank), microns_per_pixel=1.0)


def test_error_on_several_unrelated_images():
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    image, _ = _disk_image(300, radius=100)
    sdata = _image_slide(image, cs="a")
    sdata.images["other"] = Image2DModel.parse(
        DataArray(image, dims=("c", "y", "x")), transformations={"b": Identity()}
    )
    with pytest.raises(ValueError, match=r"several candidates .* \['he', 'other'\]. Pass `image_key=`"):
        hst.pp.tile(sdata, microns_per_pixel=1.0)
    with pytest.raises(KeyError, match=r"Expected `image_key` to name"):
        hst.pp.tile(sdata, image_key="missing", microns_per_pixel=1.0)
    hst.pp.tile(sdata, image_key="other", microns_per_pixel=1.0)
    assert sdata.tables[KEY].uns[KEY]["image_key"] == "other"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing_um": 0}, r"Expected `spacing_um` to be a positive finite number, found `0`"),
        ({"spot_diameter_um": -1.0}, r"Expected `spot_diameter_um` to be a positive"),
        ({"min_tissue": 0}, r"Expected `min_tissue` to be a number in \(0, 1\]"),
        ({"microns_per_pixel": float("nan")}, r"Expected `microns_per_pixel` to be a positive"),
        ({"key_added": ""}, r"Expected `key_added` to be a non-empty string"),
    ],
)
def test_error_on_bad_arguments(image_only, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hst.pp.tile(image_only, **({"microns_per_pixel": 1.0} | kwargs))


def test_error_on_wrong_input():
    from anndata import AnnData

    with pytest.raises(TypeError, match=r"Expected `sdata` to be a SpatialData object, found `AnnData`"):
        hst.pp.tile(AnnData(np.zeros((2, 2))), microns_per_pixel=1.0)
    grey = np.full((1, 100, 100), 128, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"Expected `images\['he'\]` to be an RGB image \(3 channels\), found `1`"):
        hst.pp.tile(_image_slide(grey), microns_per_pixel=1.0)


def test_refuses_to_overwrite_foreign_elements(synthetic_slide):
    with pytest.raises(ValueError, match=r"Element `'table'` already exists in `sdata.tables` and was not written"):
        hst.pp.tile(synthetic_slide, key_added="TABLE")  # spatialdata names are unique regardless of case
    synthetic_slide.shapes["mine_spots"] = synthetic_slide.shapes["synthetic_0"]
    with pytest.raises(ValueError, match=r"Element `'mine_spots'` already exists in `sdata.shapes`"):
        hst.pp.tile(synthetic_slide, key_added="mine")
    assert "mine" not in synthetic_slide.tables


def test_bounded_memory_on_a_large_lazy_image(tmp_path):
    """A 20,000 x 20,000 px single-scale zarr image (1.2 GB) is tiled with a small fraction of it in memory."""
    import tracemalloc

    import dask
    import dask.array as da
    from spatialdata import SpatialData, read_zarr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    n, chunk = 20_000, 2048
    colour = np.array([200, 110, 170], dtype=np.uint8)[:, None, None]

    def paint(block: np.ndarray, block_info: dict) -> np.ndarray:
        """Glass, with a 8,000 x 10,000 px block of tissue at rows 6,000-14,000 and columns 5,000-15,000."""
        _, (y0, y1), (x0, x1) = block_info[None]["array-location"]
        yy, xx = np.ogrid[y0:y1, x0:x1]
        tissue = (yy >= 6000) & (yy < 14000) & (xx >= 5000) & (xx < 15000)
        return np.where(tissue, colour, np.uint8(248)).astype(np.uint8)

    image = da.empty((3, n, n), dtype=np.uint8, chunks=(3, chunk, chunk)).map_blocks(paint, dtype=np.uint8)
    el = Image2DModel.parse(DataArray(image, dims=("c", "y", "x")), transformations={"global": Identity()})
    SpatialData(images={"he": el}).write(tmp_path / "big.zarr")
    sdata = read_zarr(tmp_path / "big.zarr")

    tracemalloc.start()
    try:
        with dask.config.set(num_workers=2):  # chunks in flight grow with the threads: pin them
            hst.pp.tile(sdata, microns_per_pixel=0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * n * n / 8  # an eighth of the image's 1.2 GB (about 75 MB in practice)
    expected = (8000 * 10000 * 0.5**2) / (100**2 * math.sqrt(3) / 2)
    assert sdata.tables[KEY].n_obs == pytest.approx(expected, rel=0.05)
