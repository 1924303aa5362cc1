"""Element resolution, spot geometry and patches (`hyperst._data`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import hex_centres, make_slide, square_centres
from hyperst import settings
from hyperst._data import PatchGeometry, PatchReader, as_spatialdata, detect_grid, dihedral, slide_layout


def _white(h: int, w: int) -> np.ndarray:
    return np.full((3, h, w), 255, dtype=np.uint8)


def _visium_slide(mpp: float = 1.0, n_rows: int = 6, n_cols: int = 6, **kw):
    """Visium-like hex grid: 100 µm pitch, 55 µm spots, at ``mpp`` µm/px, with a 300 µm margin."""
    pitch = 100 / mpp
    centres = hex_centres(n_rows, n_cols, pitch, origin=(300 / mpp, 300 / mpp))
    h = int(centres[:, 1].max() + 300 / mpp)
    w = int(centres[:, 0].max() + 300 / mpp)
    return make_slide(_white(h, w), centres, radius=27.5 / mpp, **kw), centres


# ---------------------------------------------------------------- grids and scale


def test_detect_grid_hex_and_square():
    hexg = detect_grid(hex_centres(8, 8, 100.0))
    assert (hexg.kind, hexg.n_neighbors) == ("hex", 6)
    assert hexg.pitch == pytest.approx(100.0)
    sq = detect_grid(square_centres(8, 8, 200.0))
    assert (sq.kind, sq.n_neighbors) == ("square", 4)
    rng = np.random.default_rng(0)
    assert detect_grid(rng.uniform(0, 1000, size=(200, 2))).kind == "irregular"


@pytest.mark.parametrize("mpp", [0.25, 1.0])
def test_microns_per_pixel_from_visium_spot_diameter(mpp):
    sdata, centres = _visium_slide(mpp)
    layout = slide_layout(sdata)
    assert layout.technology == "visium"
    assert layout.microns_per_pixel == pytest.approx(mpp)
    assert "55" in layout.scale_source
    np.testing.assert_allclose(layout.centres_px, centres)


def test_layout_leaves_no_hash_table_on_the_callers_indexes():
    sdata, _ = _visium_slide(1.0)
    slide_layout(sdata)
    table, shapes = sdata.tables["table"], next(iter(sdata.shapes.values()))
    # pandas keeps an index's hash table once it is built; for a cohort that is ~32 bytes a spot per index
    assert "_engine" not in table.obs.index._cache
    assert "_engine" not in shapes.index._cache


def test_microns_per_pixel_from_st_grid_and_override():
    centres = square_centres(5, 5, 290.0, origin=(400, 400))
    sdata = make_slide(_white(2000, 2000), centres, radius=72.5)  # 100 µm spots at 0.69 µm/px
    layout = slide_layout(sdata)
    assert layout.technology == "st"
    assert layout.microns_per_pixel == pytest.approx(100 / 145)
    assert slide_layout(sdata, microns_per_pixel=0.5).microns_per_pixel == 0.5
    with pytest.raises(ValueError, match="microns_per_pixel"):
        slide_layout(sdata, microns_per_pixel=-1)


def test_irregular_layout_needs_a_scale():
    rng = np.random.default_rng(1)
    sdata = make_slide(_white(1000, 1000), rng.uniform(100, 900, size=(50, 2)), radius=5)
    with pytest.raises(ValueError, match="Pass `microns_per_pixel=`"):
        slide_layout(sdata)
    assert slide_layout(sdata, microns_per_pixel=0.5).microns_per_pixel == 0.5


# ---------------------------------------------------------------- transformations


def test_centres_follow_scale_and_translation_of_the_image():
    from spatialdata.transformations import Scale, Sequence, Translation

    centres = hex_centres(5, 5, 100.0, origin=(200, 200))
    # image pixels are 2x coarser than the shapes' units, and the image starts at (50, 20) in the CS
    t_img = Sequence([Scale([2.0, 2.0], axes=("x", "y")), Translation([50.0, 20.0], axes=("x", "y"))])
    sdata = make_slide(_white(600, 600), centres, radius=27.5, cs="any_name", image_transform=t_img)
    layout = slide_layout(sdata)
    expected = (centres - [50.0, 20.0]) / 2.0
    np.testing.assert_allclose(layout.centres_px, expected)
    assert layout.spot_diameter_px == pytest.approx(27.5)
    assert layout.microns_per_pixel == pytest.approx(2.0)


def test_rotation_is_refused_with_a_clear_error():
    from spatialdata.transformations import Affine

    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    t = Affine(rot, input_axes=("x", "y"), output_axes=("x", "y"))
    sdata = make_slide(_white(900, 900), hex_centres(4, 4, 100, (300, 300)), radius=27.5, image_transform=t)
    with pytest.raises(ValueError, match="rotates or shears"):
        slide_layout(sdata)


def test_spots_outside_the_image_are_refused():
    sdata = make_slide(_white(300, 300), hex_centres(4, 4, 100, (100, 100)), radius=27.5)
    with pytest.raises(ValueError, match=r"lie outside image `'sample_1_full_image'`"):
        slide_layout(sdata)


# ---------------------------------------------------------------- key inference


def test_finest_of_several_images_of_the_slide_is_used():
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale
    from xarray import DataArray

    sdata, _ = _visium_slide(1.0)
    h, w = sdata.images["sample_1_full_image"].shape[1:]
    low = Image2DModel.parse(
        DataArray(_white(h // 8 + 1, w // 8 + 1), dims=("c", "y", "x")),
        transformations={"sample_1": Scale([8.0, 8.0], axes=("x", "y"))},
    )
    sdata.images["sample_1_lowres_image"] = low
    assert slide_layout(sdata).elements.image_key == "sample_1_full_image"
    assert slide_layout(sdata, image_key="sample_1_lowres_image").microns_per_pixel == pytest.approx(8.0)


def test_two_images_at_the_same_resolution_are_ambiguous():
    sdata, _ = _visium_slide(1.0)
    sdata.images["if_image"] = sdata.images["sample_1_full_image"]
    with pytest.raises(ValueError, match=r"several candidates .*\['if_image', 'sample_1_full_image'\].*image_key="):
        slide_layout(sdata)
    with pytest.raises(KeyError, match=r"Candidates in `sdata.images`"):
        slide_layout(sdata, image_key="nope")


def test_table_inference_errors_list_candidates():
    sdata, _ = _visium_slide(1.0)
    sdata.tables["other"] = sdata.tables["table"].copy()
    with pytest.raises(
        ValueError, match=r"several candidates for the table of spots in `sdata.tables`: \['other', 'table'\]"
    ):
        slide_layout(sdata)
    assert slide_layout(sdata, table_key="other").elements.table_key == "other"
    del sdata.tables["other"], sdata.tables["table"]
    with pytest.raises(ValueError, match="Found no table of spots"):
        slide_layout(sdata)


def test_filtered_and_reordered_table_matches_rows_by_instance_key():
    sdata, centres = _visium_slide(1.0)
    full = sdata.tables["table"]
    keep = np.arange(full.n_obs)[::3][::-1]  # QC-filtered and reversed
    sub = full[keep].copy()
    del sdata.tables["table"]
    from spatialdata.models import TableModel

    sub.uns.pop(TableModel.ATTRS_KEY)
    sdata.tables["table"] = TableModel.parse(sub, region="sample_1", region_key="region", instance_key="spot_id")
    layout = slide_layout(sdata)
    np.testing.assert_array_equal(layout.instance_ids, full.obs["spot_id"].to_numpy()[keep])
    np.testing.assert_allclose(layout.centres_px, centres[keep])


def test_legacy_anndata_is_converted():
    import anndata as ad

    centres = hex_centres(6, 6, 200.0, origin=(400, 400))  # full-res px, 0.5 µm/px
    hires = np.full((800, 800, 3), 230, dtype=np.uint8)  # hires = full-res / 2
    adata = ad.AnnData(np.ones((len(centres), 3), dtype=np.float32))
    adata.obsm["spatial"] = centres
    adata.uns["spatial"] = {
        "lib": {
            "images": {"hires": hires},
            "scalefactors": {"tissue_hires_scalef": 0.5, "spot_diameter_fullres": 110.0},
        }
    }
    sdata = as_spatialdata(adata)
    layout = slide_layout(sdata)
    np.testing.assert_allclose(layout.centres_px, centres * 0.5)
    assert layout.technology == "visium"
    assert layout.microns_per_pixel == pytest.approx(1.0)  # 55 µm spot over 55 hires px
    with pytest.raises(ValueError, match="legacy Visium layout"):
        as_spatialdata(ad.AnnData(np.ones((3, 2), dtype=np.float32)))
    # fit and predict read slides through load_slide: it names the library, the image, its size and pixel size
    from hyperst.tl._prepare import load_slide

    msg = (
        r"library `lib` holds only the reduced-resolution images .* uses `lib_hires` \(800 x 800 px, "
        r"1\.00 µm/px\), not the full-resolution scan.*spatialdata_io\.visium\(path, fullres_image_file=\.\.\.\)"
    )
    with pytest.warns(UserWarning, match=msg):
        load_slide(adata, table_key=None, image_key=None, shapes_key=None, microns_per_pixel=None)


# ---------------------------------------------------------------- patches


def test_dihedral_views_are_the_eight_symmetries():
    x = np.random.default_rng(0).integers(0, 255, size=(2, 3, 5, 5)).astype(np.uint8)
    views = [dihedral(x, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    np.testing.assert_array_equal(dihedral(views[1], 3), x)  # 90° then 270°
    np.testing.assert_array_equal(dihedral(views[4], 4), x)  # transpose is an involution
    np.testing.assert_array_equal(views[2], x[..., ::-1, ::-1])
    with pytest.raises(ValueError, match=r"Expected `k` to be an integer in range\(8\)"):
        dihedral(x, 8)


@pytest.mark.parametrize("mpp", [0.5, 1.0])
def test_marker_at_spot_centre_lands_at_patch_centre_and_patch_covers_112_um(mpp):
    sdata, centres = _visium_slide(mpp, n_rows=3, n_cols=3)
    image = sdata.images["sample_1_full_image"].values.copy()
    cx, cy = centres[4]
    half = 28 / mpp  # black square of 56 µm, half the patch side
    image[:, int(round(cy - half)) : int(round(cy + half)), int(round(cx - half)) : int(round(cx + half))] = 0
    sdata2 = make_slide(image, centres, radius=27.5 / mpp)
    layout = slide_layout(sdata2)
    spot, niche = PatchReader(sdata2, layout).read([4])
    dark = spot[0].mean(0) < 128
    ys, xs = np.nonzero(dark)
    # the 56 µm square covers the middle half of a 112 µm patch: pixels 56..167 of 224
    assert ys.min() == pytest.approx(56, abs=2) and ys.max() == pytest.approx(167, abs=2)
    assert xs.min() == pytest.approx(56, abs=2) and xs.max() == pytest.approx(167, abs=2)
    assert dark.mean() == pytest.approx(0.25, abs=0.02)
    # niche: 2 * (100 + 27.5) = 255 µm, so the square takes 56/255 of its side
    frac = (niche[0].mean(0) < 128).mean()
    assert frac == pytest.approx((56 / 255) ** 2, rel=0.1)


def test_border_spots_are_padded_not_dropped():
    centres = hex_centres(3, 3, 100, origin=(10, 10))  # first spot 10 px from the corner
    image = np.zeros((3, 400, 400), dtype=np.uint8)
    sdata = make_slide(image, centres, radius=27.5)
    layout = slide_layout(sdata)
    reader = PatchReader(sdata, layout, PatchGeometry(out_px=112))
    batches = list(reader.iter_batches(4))
    assert sum(len(i) for i, _, _ in batches) == len(centres)
    spot, _ = reader.read([0])
    assert spot.shape == (1, 3, 112, 112)
    assert (spot[0, :, :40, :40] == 255).all()  # outside the image: white padding
    assert (spot[0, :, 70:, 70:] == 0).all()  # inside: the black image


def test_reading_ahead_gives_the_same_batches_and_raises_the_readers_errors(monkeypatch):
    rng = np.random.default_rng(4)
    centres = hex_centres(4, 5, 100, origin=(60, 60))
    image = rng.integers(0, 255, size=(3, 560, 600), dtype=np.uint8)
    sdata = make_slide(image, centres, radius=27.5)
    reader = PatchReader(sdata, slide_layout(sdata), PatchGeometry(out_px=32))
    runs = {}
    for ahead in (0, 1, 3):
        monkeypatch.setattr(settings, "read_ahead", ahead)
        runs[ahead] = list(reader.iter_batches(3))
    assert len(runs[0]) == 7  # 20 spots in batches of 3
    for ahead in (1, 3):
        for (i0, s0, n0), (i1, s1, n1) in zip(runs[0], runs[ahead], strict=True):
            np.testing.assert_array_equal(i0, i1)
            np.testing.assert_array_equal(s0, s1)
            np.testing.assert_array_equal(n0, n1)
    # a read that fails in the reader thread fails the loop, at the batch it belongs to
    real_read = reader.read
    order = reader.reading_order()

    def failing(idx):
        if idx[0] == order[9]:
            msg = "disk gone"
            raise OSError(msg)
        return real_read(idx)

    monkeypatch.setattr(reader, "read", failing)
    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for idx, _, _ in reader.iter_batches(3):
            seen.append(int(idx[0]))
    assert seen == [order[0], order[3], order[6]]


def test_direct_slicing_gives_the_same_pixels_as_squidpy():
    rng = np.random.default_rng(3)
    centres = hex_centres(4, 4, 100, origin=(20, 30))
    image = rng.integers(0, 255, size=(3, 420, 460), dtype=np.uint8)
    sdata = make_slide(image, centres, radius=27.5, scale_factors=[2])
    layout = slide_layout(sdata)
    geo = PatchGeometry(out_px=56)
    direct = PatchReader(sdata, layout, geo, method="direct")
    squid = PatchReader(sdata, layout, geo, method="squidpy")
    assert direct._level_for(direct.sides[1]) == 1  # niche comes from the coarser level
    idx = np.arange(len(centres))
    for a, b in zip(direct.read(idx), squid.read(idx), strict=True):
        np.testing.assert_array_equal(a, b)


def test_patch_reader_rejects_non_rgb_images():
    centres = hex_centres(3, 3, 100, origin=(200, 200))
    sdata = make_slide(np.zeros((4, 600, 600), dtype=np.uint8), centres, radius=27.5)
    with pytest.raises(ValueError, match="RGB with 3 channels"):
        PatchReader(sdata, slide_layout(sdata))
    sdata = make_slide(np.zeros((3, 600, 600), dtype=np.float32), centres, radius=27.5)
    with pytest.raises(ValueError, match="uint8"):
        PatchReader(sdata, slide_layout(sdata))


def test_memory_is_bounded_by_the_batch_not_the_slide(tmp_path, monkeypatch):
    """A 40,000 x 40,000 px slide in zarr (4.8 GB as RGB): patches are read within the chunk cache's budget."""
    import tracemalloc

    import dask.array as da
    from spatialdata import SpatialData, read_zarr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    side = 40_000
    arr = da.full((3, side, side), 255, dtype=np.uint8, chunks=(3, 2048, 2048))
    tissue = da.from_array(np.random.default_rng(0).integers(0, 255, (3, 2048, 2048), dtype=np.uint8))
    arr[:, 16384:18432, 16384:18432] = tissue  # one chunk of "tissue" in a sea of background
    path = tmp_path / "large.zarr"
    SpatialData(
        images={"he": Image2DModel.parse(DataArray(arr, dims=("c", "y", "x")), transformations={"s": Identity()})}
    ).write(path)
    lazy = read_zarr(path)
    centres = hex_centres(10, 40, 400, origin=(15000, 15000))  # 0.25 µm/px Visium: 400 px pitch
    sdata = make_slide(np.zeros((3, 8, 8), dtype=np.uint8), centres, radius=110, cs="s")
    sdata.images["s_full_image"] = lazy.images["he"]
    layout = slide_layout(sdata)
    image_bytes = 3 * side * side
    digests = {}
    for cache_mb in (32, 256):  # the chunk cache's budget, and the default
        monkeypatch.setattr(settings, "patch_cache_mb", cache_mb)
        reader = PatchReader(sdata, layout)
        digest = hashlib.sha256()
        tracemalloc.start()
        n = 0
        for idx, spot, niche in reader.iter_batches(32):
            n += len(idx)
            digest.update(idx.tobytes() + spot.tobytes() + niche.tobytes())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        digests[cache_mb] = digest.hexdigest()
        assert n == len(centres) == 400
        print(
            f"cache {cache_mb} MiB: peak traced memory {peak / 2**20:.0f} MiB for a {image_bytes / 2**30:.2f} GiB image"
        )
        # The cache (48 MiB when one niche box's four 12 MiB chunks exceed a 32 MiB budget), zarr's and dask's
        # buffers while they fetch (zstd's output, zarr's array, dask's copy: 60-96 MiB traced at the peak,
        # with zarr decoding 2-3 chunks at once) and the batches in flight (about 20 MiB). Measured 124-138 MiB
        # with a 32 MiB cache on the old and the new reader alike, the spread from zarr's concurrency: what must
        # not appear is a term in the slide's 4.5 GiB.
        chunk = 3 * 2048 * 2048
        bound = max(cache_mb * 2**20, 4 * chunk) + 8 * chunk + 24 * 2**20
        assert peak < bound, f"peak {peak / 2**20:.0f} MiB with a {cache_mb} MiB cache (bound {bound / 2**20:.0f})"
    assert digests[32] == digests[256]  # a smaller cache reads again, and gives the same patches
