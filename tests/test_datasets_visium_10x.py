"""``hst.datasets.visium_10x``: registry, refusals, and offline loads of a fake Space Ranger sample."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pooch
import pytest
from spatialdata.transformations import get_transformation

import hyperst as hst
from hyperst._data import slide_layout
from hyperst._data._elements import resolve_elements
from hyperst._settings import Settings
from hyperst.datasets import _registry_10x as reg
from hyperst.datasets import _visium_10x as visium_module
from hyperst.datasets import synthetic
from test_datasets import _write_visium

SAMPLE = "synthetic_0"  # the fake sample's name: _write_visium reads the synthetic slide's elements by it

pytestmark = pytest.mark.usefixtures("downloads")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> tuple[Path, Path]:
    """A fake Space Ranger output folder and, beside it, its three files under 10x's download names."""
    slide = synthetic(n_slides=1, n_spots=40, n_genes=12, seed=5)[0]
    folder = tmp_path_factory.mktemp("spaceranger") / "outs"
    _write_visium(slide, folder, SAMPLE)
    served = tmp_path_factory.mktemp("served")
    shutil.copyfile(folder / "filtered_feature_bc_matrix.h5", served / "filtered_feature_bc_matrix.h5")
    shutil.copyfile(folder / "image.tif", served / "image.tif")
    with tarfile.open(served / "spatial.tar.gz", "w:gz") as tar:
        tar.add(folder / "spatial", arcname="spatial")
    return folder, served


@pytest.fixture
def fake_sample(outs, monkeypatch) -> dict[str, Path]:
    """Register the fake sample with checksums of its files; return cache name -> source file."""
    _, served = outs
    monkeypatch.setitem(reg.VISIUM_10X_SAMPLES, SAMPLE, ("9.9.9", "tif", "synthetic test slide"))
    sources = {}
    for kind, fname in reg.visium_10x_files(SAMPLE).items():
        source = served / fname.split("/", 1)[1]
        monkeypatch.setitem(reg.VISIUM_10X_SHA256, fname, _sha256(source))
        sources[fname] = source
        assert kind in ("counts", "spatial", "image")
    return sources


def _lay_out(cache: Path, sources: dict[str, Path]) -> Path:
    for fname, source in sources.items():
        (cache / fname).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, cache / fname)
    return cache


def _serve(monkeypatch, by_url: dict[str, bytes | Exception]) -> list[str]:
    served: list[str] = []

    def serve(self, url, output_file, pup, check_only=False):
        served.append(url)
        body = by_url[url]
        if isinstance(body, Exception):
            raise body
        Path(output_file).write_bytes(body)

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", serve)
    return served


def _affine(element, cs: str) -> np.ndarray:
    return get_transformation(element, cs).to_affine_matrix(("x", "y"), ("x", "y"))


# ---------------------------------------------------------------- offline loads


def test_cached_sample_loads_as_spatialdata_io_reads_it(outs, fake_sample, tmp_path, downloads):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    folder, _ = outs
    cache = _lay_out(tmp_path, fake_sample)
    sdata = hst.datasets.visium_10x(SAMPLE, cache_dir=cache, progress=False)
    ref = spatialdata_io.visium(folder, dataset_id=SAMPLE, fullres_image_file="image.tif")
    assert downloads == []
    assert (cache / SAMPLE / "spatial" / "scalefactors_json.json").is_file()  # the archive was extracted

    assert set(sdata.images) == set(ref.images) == {f"{SAMPLE}_{r}_image" for r in ("full", "hires", "lowres")}
    assert set(sdata.shapes) == set(ref.shapes) == {SAMPLE}
    assert set(sdata.coordinate_systems) == set(ref.coordinate_systems)
    for name in [*sdata.images, *sdata.shapes]:
        mine, theirs = get_transformation(sdata[name], get_all=True), get_transformation(ref[name], get_all=True)
        assert set(mine) == set(theirs), name
        for cs in mine:
            np.testing.assert_allclose(_affine(sdata[name], cs), _affine(ref[name], cs), err_msg=f"{name} -> {cs}")
    full, full_ref = sdata.images[f"{SAMPLE}_full_image"], ref.images[f"{SAMPLE}_full_image"]
    assert list(full) == list(full_ref) == [f"scale{i}" for i in range(5)]
    for level in ("scale0", "scale2"):
        np.testing.assert_array_equal(full[level]["image"].values, full_ref[level]["image"].values)
    assert full["scale0"]["image"].dtype == np.uint8

    table, table_ref = sdata.tables["table"], ref.tables["table"]
    assert table.uns["spatialdata_attrs"] == table_ref.uns["spatialdata_attrs"]
    pd.testing.assert_frame_equal(table.obs, table_ref.obs)
    np.testing.assert_array_equal(table.X.toarray(), table_ref.X.toarray())
    scalefactors = table.uns["spatial"][SAMPLE]["scalefactors"]
    diameter = 2 * float(sdata.shapes[SAMPLE]["radius"].iloc[0])
    assert scalefactors["microns_per_pixel"] == pytest.approx(55.0 / diameter)
    metadata = table.uns["spatial"][SAMPLE]["metadata"]
    assert metadata["urls"]["image"] == reg.visium_10x_url(f"{SAMPLE}/image.tif")
    assert metadata["checksums"] == reg.VISIUM_10X_HASH_SOURCE

    # what hyperst's tools resolve: one table, the circles, the full-resolution image, and the Visium scale
    el = resolve_elements(sdata)
    assert (el.table_key, el.shapes_key, el.image_key) == ("table", SAMPLE, f"{SAMPLE}_full_image")
    layout = slide_layout(sdata)
    assert layout.grid.kind == "hex" and layout.technology == "visium"
    assert layout.microns_per_pixel == pytest.approx(1.0, rel=1e-3)  # synthetic's default


def test_local_space_ranger_folder_needs_no_download(outs, tmp_path, downloads):
    folder, _ = outs
    sdata = hst.datasets.visium_10x("my_slide", path=folder)  # any name; finds image.tif
    assert set(sdata.shapes) == {"my_slide"} and "my_slide_full_image" in sdata.images
    assert sdata.tables["table"].uns["spatial"]["my_slide"]["metadata"]["source"] == str(folder.resolve())

    # a tiled TIFF elsewhere is read tile by tile
    tifffile = pytest.importorskip("tifffile")
    pixels = np.asarray(sdata.images["my_slide_full_image"]["scale0"]["image"].values).transpose(1, 2, 0)
    tifffile.imwrite(tmp_path / "he.tif", pixels, tile=(128, 128), photometric="rgb", compression="zlib")
    tiled = hst.datasets.visium_10x("my_slide", path=folder, fullres_image_file=tmp_path / "he.tif")
    level0 = tiled.images["my_slide_full_image"]["scale0"]["image"]
    assert level0.data.chunksize[1] % 128 == 0 and level0.data.chunksize[1] < pixels.shape[0]
    crop = np.asarray(level0.data[:, 100:300, 50:400])
    np.testing.assert_array_equal(crop, pixels[100:300, 50:400].transpose(2, 0, 1))
    assert downloads == []


def test_missing_files_are_downloaded_from_pinned_10x_urls(fake_sample, tmp_path, monkeypatch):
    by_url = {reg.visium_10x_url(f): source.read_bytes() for f, source in fake_sample.items()}
    served = _serve(monkeypatch, by_url)
    sdata = hst.datasets.visium_10x(SAMPLE, cache_dir=tmp_path / "fresh")
    assert sorted(served) == sorted(by_url)
    assert all(url.startswith(f"{reg.VISIUM_10X_BASE_URL}9.9.9/{SAMPLE}/{SAMPLE}_") for url in served)
    assert sdata.tables["table"].n_obs == 40
    for fname in fake_sample:
        assert (tmp_path / "fresh" / fname).is_file()


def test_scverse_mirror_is_tried_when_10x_fails(fake_sample, tmp_path, monkeypatch):
    by_url: dict[str, bytes | Exception] = {}
    for fname, source in fake_sample.items():
        by_url[reg.visium_10x_url(fname)] = ConnectionError("403 Forbidden")  # an OSError, as requests' are
        by_url[reg.visium_10x_url(fname, mirror=True)] = source.read_bytes()
    served = _serve(monkeypatch, by_url)
    monkeypatch.setattr(visium_module, "_RETRIES", 0)
    sdata = hst.datasets.visium_10x(SAMPLE, cache_dir=tmp_path)
    assert sdata.tables["table"].n_obs == 40
    assert sorted(served) == sorted(by_url)
    assert [u for u in served if u.startswith(reg.VISIUM_10X_MIRROR_URL)] == [
        f"{reg.VISIUM_10X_MIRROR_URL}{SAMPLE}/{f.replace('/', '_')}" for f in fake_sample
    ]


def test_wrong_checksum_from_every_source_raises(fake_sample, tmp_path, monkeypatch):
    _lay_out(tmp_path, fake_sample)
    counts = tmp_path / SAMPLE / "filtered_feature_bc_matrix.h5"
    data = bytearray(counts.read_bytes())
    data[200] ^= 0x01
    counts.write_bytes(bytes(data))  # corrupted in the cache: downloaded again, and served corrupted too
    fname = f"{SAMPLE}/filtered_feature_bc_matrix.h5"
    served = _serve(monkeypatch, {reg.visium_10x_url(fname, mirror=m): bytes(data) for m in (False, True)})
    monkeypatch.setattr(visium_module, "_RETRIES", 0)
    with pytest.raises(ValueError, match=r"SHA256 hash of downloaded file .* does not match"):
        hst.datasets.visium_10x(SAMPLE, cache_dir=tmp_path)
    assert served == [reg.visium_10x_url(fname), reg.visium_10x_url(fname, mirror=True)]


def test_corrupted_cache_file_is_downloaded_again(fake_sample, tmp_path, monkeypatch):
    _lay_out(tmp_path, fake_sample)
    fname = f"{SAMPLE}/image.tif"
    (tmp_path / fname).write_bytes(b"not an image")
    served = _serve(monkeypatch, {reg.visium_10x_url(fname): fake_sample[fname].read_bytes()})
    sdata = hst.datasets.visium_10x(SAMPLE, cache_dir=tmp_path)
    assert served == [reg.visium_10x_url(fname)]
    assert _sha256(tmp_path / fname) == reg.VISIUM_10X_SHA256[fname]
    assert sdata.images[f"{SAMPLE}_full_image"]["scale0"]["image"].shape[0] == 3


def test_hyperst_data_dir_is_honoured(fake_sample, tmp_path, monkeypatch, downloads):
    _lay_out(tmp_path / "visium_10x", fake_sample)
    monkeypatch.setenv("HYPERST_DATA_DIR", str(tmp_path))
    fresh = Settings()
    assert fresh.cache_dir == tmp_path
    monkeypatch.setattr(hst.settings, "cache_dir", fresh.cache_dir)
    sdata = hst.datasets.visium_10x(SAMPLE)
    assert sdata.tables["table"].n_obs == 40
    assert downloads == []


def test_spatial_archive_extraction_stays_inside_the_folder(tmp_path):
    archive = tmp_path / "spatial.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in [("spatial/ok.json", b"{}"), ("spatial/../../evil.txt", b"x"), ("/abs.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        link = tarfile.TarInfo("spatial/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    folder = tmp_path / "sample"
    visium_module._extract_spatial(archive, folder, "abc")
    assert sorted(p.name for p in (folder / "spatial").iterdir()) == [".hyperst_extracted_from", "ok.json"]
    assert not (tmp_path / "evil.txt").exists() and not (folder / "evil.txt").exists()
    (folder / "spatial" / "ok.json").unlink()
    visium_module._extract_spatial(archive, folder, "abc")  # same archive checksum: not extracted again
    assert not (folder / "spatial" / "ok.json").exists()


# ---------------------------------------------------------------- refusals


def test_unknown_or_unpinned_samples_are_refused(tmp_path, downloads):
    with pytest.raises(ValueError, match=r"Unknown 10x Visium sample 'V1_Mouse_Brain'.*can download \['V1_Breast"):
        hst.datasets.visium_10x("V1_Mouse_Brain", cache_dir=tmp_path)
    with pytest.raises(
        ValueError,
        match=r"'Visium_FFPE_Human_Normal_Prostate' has no pinned SHA-256 checksum for "
        r"\['Visium_FFPE_Human_Normal_Prostate/image.jpg'\].*pass `path=`",
    ):
        hst.datasets.visium_10x("Visium_FFPE_Human_Normal_Prostate", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Expected `sample` to be a non-empty sample name, found `''`"):
        hst.datasets.visium_10x("", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"`fullres_image_file=` .* together with `path=`"):
        hst.datasets.visium_10x("V1_Human_Lymph_Node", fullres_image_file="image.tif")
    with pytest.raises(ValueError, match=r"either `path=` .* or `cache_dir=`"):
        hst.datasets.visium_10x("V1_Human_Lymph_Node", path=tmp_path, cache_dir=tmp_path)
    assert downloads == []
    assert not any(tmp_path.iterdir())


def test_incomplete_local_folders_are_refused(outs, tmp_path):
    folder, _ = outs
    with pytest.raises(ValueError, match=r"Space Ranger folder `.*nowhere` not found"):
        hst.datasets.visium_10x("s", path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has 3 problems:\n  - no `filtered_feature_bc_matrix.h5`.*\n  - no `spa"):
        hst.datasets.visium_10x("s", path=tmp_path / "empty")
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / "image.tif").unlink()
    with pytest.raises(ValueError, match=r"No full-resolution image found in .*Pass `fullres_image_file=`"):
        hst.datasets.visium_10x("s", path=partial)
    with pytest.raises(ValueError, match=r"Full-resolution image `.*he.tif` not found"):
        hst.datasets.visium_10x("s", path=partial, fullres_image_file="he.tif")


# ---------------------------------------------------------------- registry


def test_registry_integrity():
    verified = reg.visium_10x_verified_samples()
    assert verified == [
        "V1_Breast_Cancer_Block_A_Section_1",
        "V1_Human_Lymph_Node",
        "Visium_FFPE_Human_Breast_Cancer",
        "Visium_FFPE_Human_Prostate_Cancer",
    ]
    for sample, (version, ext, description) in reg.VISIUM_10X_SAMPLES.items():
        assert re.fullmatch(r"1\.[0-9]\.0", version) and ext in ("tif", "jpg") and description.startswith("human")
        files = reg.visium_10x_files(sample)
        assert set(files) == {"counts", "spatial", "image"}
        prefix = f"https://cf.10xgenomics.com/samples/spatial-exp/{version}/{sample}/{sample}_"
        for fname in files.values():
            assert reg.visium_10x_url(fname) == prefix + fname.split("/", 1)[1]
            assert reg.visium_10x_url(fname, mirror=True).startswith("https://exampledata.scverse.org/squidpy/")
        pinned = [f in reg.VISIUM_10X_SHA256 for f in files.values()]
        assert all(pinned) == (sample in verified)
    registry, urls = reg.visium_10x_registry()
    _, mirror_urls = reg.visium_10x_registry(mirror=True)
    assert set(registry) == set(reg.VISIUM_10X_SHA256) == set(urls) == set(mirror_urls)
    assert {f for s in verified for f in reg.visium_10x_files(s).values()} <= set(registry)
    for fname, known in registry.items():
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", known), fname
        assert urls[fname].startswith("https://cf.10xgenomics.com/"), fname
    assert len(set(reg.VISIUM_10X_SHA256.values())) == len(reg.VISIUM_10X_SHA256)


def test_registry_matches_squidpys_published_checksums():
    """Every pinned checksum is the one squidpy's dataset registry publishes for the same file."""
    yaml = pytest.importorskip("yaml")
    squidpy = pytest.importorskip("squidpy")
    source = Path(squidpy.__file__).parent / "datasets" / "datasets.yaml"
    if not source.is_file():
        pytest.skip("this squidpy has no datasets.yaml")
    datasets = yaml.safe_load(source.read_text())["datasets"]
    for fname, digest in reg.VISIUM_10X_SHA256.items():
        sample, name = fname.split("/", 1)
        entry = {f["name"]: f for f in datasets[sample]["files"]}[name]
        assert entry["sha256"] == digest, fname
        assert reg.visium_10x_url(fname, mirror=True).endswith(entry["s3_key"]), fname
        if "fallback_url" in entry:
            assert entry["fallback_url"] == reg.visium_10x_url(fname), fname
    for sample in set(reg.VISIUM_10X_SAMPLES) - set(reg.visium_10x_verified_samples()):
        unpinned = [f for f in reg.visium_10x_files(sample).values() if f not in reg.VISIUM_10X_SHA256]
        for fname in unpinned:
            entry = {f["name"]: f for f in datasets[sample]["files"]}[fname.split("/", 1)[1]]
            assert entry["sha256"] is None, fname  # refused because upstream publishes no checksum
