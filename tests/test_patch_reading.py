"""The chunked patch reader: same pixels as squidpy's crops, any cache budget, any thread count, any table order."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from conftest import hex_centres, make_slide
from hyperst import settings
from hyperst._data import PatchGeometry, PatchReader, slide_layout
from hyperst._data import _pixels as pixels_module
from hyperst._data._pixels import ChunkedPixels


def _lazy_slide(tmp_path, *, chunk: int = 96, shuffle: bool = True):
    """A two-level slide written to zarr and read back lazily, small chunks, spots over its borders."""
    from spatialdata import read_zarr

    rng = np.random.default_rng(7)
    centres = hex_centres(5, 6, 100, origin=(10, 15))  # patches of the first column cross the border
    if shuffle:  # table rows in no spatial order, as spatialdata-io's barcode order
        centres = centres[rng.permutation(len(centres))]
    image = rng.integers(0, 255, size=(3, 520, 590), dtype=np.uint8)
    sdata = make_slide(image, centres, radius=27.5, scale_factors=[2])
    path = tmp_path / "slide.zarr"
    sdata.write(path)
    lazy = read_zarr(path)
    for name in lazy.images:  # rechunk small, so that one patch spans several chunks
        tree = lazy.images[name]
        for scale in tree:
            tree[scale]["image"] = tree[scale]["image"].chunk({"y": chunk, "x": chunk})
    return lazy, image


@pytest.mark.parametrize(("cache_mb", "tile_px"), [(0, 96), (1, 96), (256, 96), (256, 200), (256, 1024)])
def test_chunked_reader_gives_squidpys_pixels_from_a_lazy_slide(tmp_path, monkeypatch, cache_mb, tile_px):
    """Borders padded white, two pyramid levels, tiles smaller than a patch, any cache budget, 1 or 3 threads."""
    monkeypatch.setattr(pixels_module, "TILE_PX", tile_px)  # tiles of 1 or 2 chunks of 96 px, or the whole image
    sdata, _ = _lazy_slide(tmp_path)
    layout = slide_layout(sdata)
    geo = PatchGeometry(out_px=40)
    monkeypatch.setattr(settings, "patch_cache_mb", cache_mb)
    squid = PatchReader(sdata, layout, geo, method="squidpy")
    idx = np.arange(len(layout.centres_px))
    want = squid.read(idx)
    for workers in (1, 3):
        monkeypatch.setattr(settings, "read_workers", workers)
        direct = PatchReader(sdata, layout, geo)
        assert direct._level_for(direct.sides[1]) == 1  # the niche comes from the coarser level
        for _ in range(2):  # a second read comes from the cache (or re-reads it, with no budget)
            for got, ref in zip(direct.read(idx), want, strict=True):
                np.testing.assert_array_equal(got, ref)


def test_crops_match_numpy_slicing_with_white_outside():
    import dask.array as da

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(3, 70, 90), dtype=np.uint8)
    boxes = np.array([[-10, -5, 30], [60, 50, 40], [0, 0, 70], [100, 10, 8], [20, 30, 17]])
    for data in (image, da.from_array(image, chunks=(3, 16, 25)), da.from_array(image, chunks=(3, 7, 9))):
        pixels = ChunkedPixels(data, cache_bytes=0)
        for box, crop in zip(boxes, pixels.crops(boxes), strict=True):
            x0, y0, s = box
            padded = np.full((3, 70 + 2 * 120, 90 + 2 * 120), 255, dtype=np.uint8)
            padded[:, 120:190, 120:210] = image
            ref = padded[:, y0 + 120 : y0 + 120 + s, x0 + 120 : x0 + 120 + s].transpose(1, 2, 0)
            np.testing.assert_array_equal(crop, ref)


def test_the_cache_stays_within_its_budget_and_groups_split_a_batch(monkeypatch):
    import dask.array as da

    monkeypatch.setattr(pixels_module, "TILE_PX", 50)  # a tile per chunk

    image = np.zeros((3, 200, 200), dtype=np.uint8)
    data = da.from_array(image, chunks=(3, 50, 50))  # 16 chunks of 7.5 kB
    chunk_bytes = 3 * 50 * 50
    pixels = ChunkedPixels(data, cache_bytes=3 * chunk_bytes)
    boxes = np.array([[0, 0, 40], [60, 0, 40], [110, 0, 40], [160, 0, 40], [0, 160, 40]])
    groups = pixels.groups(boxes)
    assert [i for g in groups for i in g] == list(range(5))  # every box once, in order
    assert len(groups) == 2
    pixels.crops(boxes)
    assert pixels._cached_bytes <= 3 * chunk_bytes


def test_batches_follow_the_slide_not_the_table_and_cover_every_spot(tmp_path):
    sdata, _ = _lazy_slide(tmp_path)
    reader = PatchReader(sdata, slide_layout(sdata), PatchGeometry(out_px=32))
    order = reader.reading_order()
    assert sorted(order.tolist()) == list(range(len(reader)))
    seen = np.concatenate([idx for idx, _, _ in reader.iter_batches(7)])
    np.testing.assert_array_equal(seen, order)
    # consecutive spots in reading order are neighbours far more often than consecutive table rows
    centres = reader.layout.centres_px
    step_read = np.linalg.norm(np.diff(centres[order], axis=0), axis=1)
    step_table = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert np.median(step_read) < 0.5 * np.median(step_table)


def _read_in_child(reader, idx, queue):
    spot, niche = reader.read(idx)
    queue.put((spot.sum(dtype=np.int64), niche.sum(dtype=np.int64)))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_a_forked_process_reads_with_its_own_threads(monkeypatch):
    """A data-loader worker forked after the parent read: the thread pool is the child's own, not a dead copy."""
    monkeypatch.setattr(settings, "read_workers", 2)
    rng = np.random.default_rng(1)
    centres = hex_centres(3, 4, 100, origin=(80, 80))
    sdata = make_slide(rng.integers(0, 255, (3, 400, 500), dtype=np.uint8), centres, radius=27.5)
    reader = PatchReader(sdata, slide_layout(sdata), PatchGeometry(out_px=48))
    idx = np.arange(len(centres))
    spot, niche = reader.read(idx)  # the parent's pool now exists
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, idx, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, "the forked reader hung or failed"
    assert queue.get(timeout=5) == (spot.sum(dtype=np.int64), niche.sum(dtype=np.int64))


def test_bilinear_resample_resizes_the_same_crops_with_another_filter(tmp_path):
    """``resample="bilinear"``: the default reader's crops, resized a batch at once by torch's antialiased bilinear.

    LANCZOS is PIL's, crop by crop; torch's bilinear gives PIL's bilinear pixels when enlarging and is within one
    grey level of them when shrinking.
    """
    import torch
    from PIL import Image

    from hyperst import HyperSTConfig
    from hyperst.tl._prepare import geometry_from

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(3, 400, 420), dtype=np.uint8)
    sdata = make_slide(image, hex_centres(3, 4, 100, origin=(60, 60)), radius=27.5)
    layout = slide_layout(sdata)
    idx = np.arange(6)
    lanczos = PatchReader(sdata, layout, PatchGeometry(spot_um=112, out_px=64))
    bilinear = PatchReader(sdata, layout, PatchGeometry(spot_um=112, out_px=64, resample="bilinear"))
    for reader, name in ((lanczos, "LANCZOS"), (bilinear, "BILINEAR")):
        for side, got in zip(reader.sides, reader.read(idx), strict=True):
            crops = np.stack(ChunkedPixels(image, cache_bytes=0).crops(reader.crop_boxes(idx, side, 0)))
            filt = getattr(Image.Resampling, name)
            pil = np.stack([np.asarray(Image.fromarray(c).resize((64, 64), filt)) for c in crops]).transpose(0, 3, 1, 2)
            if name == "LANCZOS":
                np.testing.assert_array_equal(got, pil)
                continue
            x = torch.from_numpy(crops).permute(0, 3, 1, 2)
            ref = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True).numpy()
            np.testing.assert_array_equal(got, ref)
            assert np.abs(got.astype(int) - pil).max() <= 1
    assert not np.array_equal(lanczos.read(idx)[0], bilinear.read(idx)[0])
    with pytest.raises(ValueError, match="resample"):
        PatchGeometry(resample="nearest")
    with pytest.raises(ValueError, match="resample"):
        HyperSTConfig(resample="nearest")
    assert geometry_from(HyperSTConfig(resample="bilinear")).resample == "bilinear"


@pytest.mark.parametrize("resample", ["lanczos", "bilinear"])
def test_batches_are_the_same_for_any_thread_count_batch_size_and_read_ahead(tmp_path, monkeypatch, resample):
    """Each thread crops part of a batch into its own reused buffer: no batch sees another's pixels."""
    sdata, _ = _lazy_slide(tmp_path)
    layout = slide_layout(sdata)
    geo = PatchGeometry(out_px=40, resample=resample)
    monkeypatch.setattr(settings, "read_workers", 1)
    idx = np.arange(len(layout.centres_px))
    want = PatchReader(sdata, layout, geo).read(idx)
    for workers, batch, ahead in ((1, 5, 0), (2, 7, 1), (3, 4, 2), (4, 64, 1)):
        monkeypatch.setattr(settings, "read_workers", workers)
        monkeypatch.setattr(settings, "read_ahead", ahead)
        batches = list(PatchReader(sdata, layout, geo).iter_batches(batch))
        order = np.concatenate([b[0] for b in batches])
        for k in (1, 2):  # spot, niche
            got = np.empty_like(want[k - 1])
            got[order] = np.concatenate([b[k] for b in batches])
            np.testing.assert_array_equal(got, want[k - 1])


@pytest.mark.parametrize("resample", ["lanczos", "bilinear"])
def test_crop_buffers_are_bounded_and_give_the_same_patches(monkeypatch, resample):
    """Each thread keeps one crop buffer of at most ``CROP_BUFFER_BYTES``; a smaller budget changes no pixel."""
    from hyperst._data import _patches as patches_module

    monkeypatch.setattr(settings, "read_workers", 1)
    rng = np.random.default_rng(2)
    sdata = make_slide(rng.integers(0, 255, (3, 400, 500), dtype=np.uint8), hex_centres(3, 4, 100, (80, 80)), 27.5)
    layout = slide_layout(sdata)
    geo = PatchGeometry(out_px=48, resample=resample)
    idx = np.arange(12)
    want = PatchReader(sdata, layout, geo).read(idx)
    for n_crops in (1, 5, 12):
        reader = PatchReader(sdata, layout, geo)
        niche_px = int(reader.crop_boxes(idx[:1], reader.sides[1], 0)[0, 2])
        budget = n_crops * 3 * niche_px**2
        monkeypatch.setattr(patches_module, "CROP_BUFFER_BYTES", budget)
        for got, ref in zip(reader.read(idx), want, strict=True):
            np.testing.assert_array_equal(got, ref)
        kept = list(reader._buffers.__dict__.values())  # the niche crops' buffer, the last one used
        assert len(kept) == 1 and kept[0].nbytes <= budget and len(kept[0]) in {n_crops, 12 % n_crops}


def test_feature_cache_keys_keep_lanczos_and_move_bilinear(tmp_path):
    """LANCZOS keys are the ones of before the option; bilinear ones changed with its resize (PIL -> torch)."""
    import hashlib
    import json

    from hyperst._records import EncoderRecord
    from hyperst.tl._features import _CACHE_VERSION, FeatureExtractor, _cache_path, _slide_fingerprint

    rng = np.random.default_rng(4)
    sdata = make_slide(rng.integers(0, 255, (3, 400, 500), dtype=np.uint8), hex_centres(3, 4, 100, (80, 80)), 27.5)
    layout = slide_layout(sdata)
    extractor = FeatureExtractor(EncoderRecord(name="e", n_features=2, fingerprint="f"))
    assert PatchGeometry().cache_key() == {}
    for resample, extra in (("lanczos", {}), ("bilinear", {"resample": "bilinear"})):
        reader = PatchReader(sdata, layout, PatchGeometry(out_px=32, resample=resample))
        old = {"version": _CACHE_VERSION, "slide": _slide_fingerprint(reader), "encoder": "f"}
        old |= {"sides_px": [round(s, 3) for s in reader.sides], "out_px": 32, "views": 1, **extra}
        digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:24]
        same = _cache_path(tmp_path, reader, extractor, 1).name == f"e-{digest}.zarr"
        assert same == (resample == "lanczos")
