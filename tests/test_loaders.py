"""``hst.datasets.her2st``: offline loads from a cache laid out from ../shared, checksums, registry."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pooch
import pytest

import hyperst as hst
from hyperst._data import slide_layout
from hyperst._settings import Settings
from hyperst.datasets import _her2st as her2st_module
from hyperst.datasets import _registry as reg

SECTIONS = ["C3", "B4"]

pytestmark = pytest.mark.usefixtures("downloads")


def _source(her2st_dir: Path, fname: str) -> Path:
    """The file in ../shared/data/her2st holding the bytes of cache name ``fname``."""
    folder, name = fname.split("/", 1)
    return her2st_dir / "images" / name if folder == "ST-imgs" else her2st_dir / "raw" / fname


def _lay_out(her2st_dir: Path, cache: Path, sections: list[str]) -> Path:
    for section in sections:
        for fname in reg.her2st_files(section).values():
            (cache / fname).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_source(her2st_dir, fname), cache / fname)
    return cache


@pytest.fixture(scope="module")
def cache(her2st_dir, tmp_path_factory) -> Path:
    return _lay_out(her2st_dir, tmp_path_factory.mktemp("her2st_cache"), SECTIONS)


@pytest.fixture(scope="module")
def loaded(cache) -> dict:
    # module-scoped fixtures run before the `downloads` guard: refuse downloads here too, so the cache alone serves
    def refuse(*args, **kwargs):
        msg = "download attempted"
        raise AssertionError(msg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pooch.HTTPDownloader, "__call__", refuse)
        slides = hst.datasets.her2st(SECTIONS, cache_dir=cache, progress=False)
    return dict(zip(SECTIONS, slides, strict=True))


@pytest.mark.parametrize("section", SECTIONS)
def test_offline_load_matches_h5ad(loaded, her2st_dir, section):
    import anndata as ad

    sdata = loaded[section]
    ref = ad.read_h5ad(her2st_dir / f"{section}.h5ad")
    assert set(sdata.images) == {f"{section}_full_image"}
    assert set(sdata.shapes) == {section}
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (section, "region", "spot_id")

    # same spots, genes and counts (aligned by name, although the order is the same too)
    assert sorted(table.obs_names) == sorted(ref.obs_names)
    assert sorted(table.var_names) == sorted(ref.var_names)
    ours = table[ref.obs_names, ref.var_names]
    assert np.issubdtype(table.X.dtype, np.integer)
    assert (ours.X != ref.X).nnz == 0
    assert (ours.obs["array_col"].to_numpy() == ref.obs["array_col"].to_numpy()).all()
    assert (ours.obs["array_row"].to_numpy() == ref.obs["array_row"].to_numpy()).all()

    # same pixel positions, through the circles the table annotates
    circles = sdata.shapes[section].loc[ours.obs["spot_id"].to_numpy()]
    xy = np.column_stack([circles.geometry.x, circles.geometry.y])
    np.testing.assert_allclose(xy, ref.obsm["spatial"], atol=1e-6)
    diameter = ref.uns["spatial"][section]["scalefactors"]["spot_diameter_fullres"]
    np.testing.assert_allclose(2 * circles["radius"], diameter, rtol=1e-5)

    meta = ref.uns["spatial"][section]["metadata"]
    level0 = sdata.images[f"{section}_full_image"]["scale0"]["image"]
    assert level0.dtype == np.uint8
    assert dict(level0.sizes) == {"c": 3, "y": meta["image_height"], "x": meta["image_width"]}
    assert len(sdata.images[f"{section}_full_image"]) == 4


@pytest.mark.parametrize("section", SECTIONS)
def test_slide_layout_finds_square_grid_and_scale(loaded, section):
    layout = slide_layout(loaded[section])
    assert layout.grid.kind == "square"
    assert layout.technology == "st"
    assert layout.microns_per_pixel == pytest.approx(0.688, rel=0.02)
    mpp = loaded[section].tables["table"].uns["spatial"][section]["scalefactors"]["microns_per_pixel"]
    assert layout.microns_per_pixel == pytest.approx(mpp, rel=1e-6)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_pixels_are_the_jpeg(loaded, her2st_dir):
    from PIL import Image

    level0 = loaded["C3"].images["C3_full_image"]["scale0"]["image"].data
    crop = np.asarray(level0[:, 4000:4100, 3000:3150])
    with Image.open(her2st_dir / "images" / "C3.jpg") as img:
        ref = np.asarray(img.crop((3000, 4000, 3150, 4100)).convert("RGB"))
    np.testing.assert_array_equal(crop, ref.transpose(2, 0, 1))


def test_single_section_returns_one_slide(cache):
    sdata = hst.datasets.her2st("C3", cache_dir=cache)
    assert sdata.tables["table"].n_obs == 180
    assert sdata.tables["table"].obs_names[0].startswith("C3_")


def test_corrupted_cache_file_is_not_used(her2st_dir, tmp_path, monkeypatch):
    cache = _lay_out(her2st_dir, tmp_path, ["C3"])
    spots = cache / "ST-spotfiles" / "C3_selection.tsv"
    data = bytearray(spots.read_bytes())
    data[100] ^= 0x01
    spots.write_bytes(bytes(data))
    served: list[str] = []

    def serve_corrupted(self, url, output_file, pup, check_only=False):
        served.append(url)
        Path(output_file).write_bytes(bytes(data))

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", serve_corrupted)
    monkeypatch.setattr(her2st_module, "_RETRIES", 0)
    with pytest.raises(ValueError, match=r"SHA256 hash of downloaded file .* does not match"):
        hst.datasets.her2st("C3", cache_dir=cache)
    assert served == [reg.her2st_url("ST-spotfiles/C3_selection.tsv")]


def test_missing_files_are_downloaded_from_pinned_urls(her2st_dir, tmp_path, monkeypatch):
    slides = pd.read_csv(her2st_dir / "slides.csv").set_index("slide")
    by_url = {reg.her2st_url(f): _source(her2st_dir, f) for f in reg.her2st_files("C3").values()}
    assert by_url[reg.her2st_url("ST-imgs/C3.jpg")].name == "C3.jpg"
    assert reg.her2st_url("ST-imgs/C3.jpg").endswith(f"/ST-imgs/C/C3/{slides.loc['C3', 'image_original']}")
    served: list[str] = []

    def serve_local(self, url, output_file, pup, check_only=False):
        served.append(url)
        shutil.copyfile(by_url[url], output_file)

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", serve_local)
    sdata = hst.datasets.her2st("C3", cache_dir=tmp_path / "fresh")
    assert sorted(served) == sorted(by_url)
    assert sdata.tables["table"].n_obs == 180
    for fname in reg.her2st_files("C3").values():
        assert (tmp_path / "fresh" / fname).is_file()


def test_hyperst_data_dir_is_honoured(her2st_dir, tmp_path, monkeypatch, downloads):
    _lay_out(her2st_dir, tmp_path / "her2st", ["C3"])
    monkeypatch.setenv("HYPERST_DATA_DIR", str(tmp_path))
    fresh = Settings()
    assert fresh.cache_dir == tmp_path
    monkeypatch.setattr(hst.settings, "cache_dir", fresh.cache_dir)
    sdata = hst.datasets.her2st(["C3"])[0]
    assert sdata.tables["table"].n_obs == 180
    assert downloads == []


def test_unknown_or_unpinned_sections_are_refused(tmp_path, downloads):
    with pytest.raises(ValueError, match=r"Unknown HER2ST section\(s\) \['Z9'\].*can load \['B4', 'C2'"):
        hst.datasets.her2st("Z9", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"\['B1'\] have no pinned SHA-256.*Available sections: \['B4', 'C2'"):
        hst.datasets.her2st(["C3", "B1"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Expected `sections` to be a section name"):
        hst.datasets.her2st([], cache_dir=tmp_path)
    assert downloads == []
    assert not any(tmp_path.iterdir())


def test_registry_integrity():
    assert re.fullmatch(r"[0-9a-f]{40}", reg.HER2ST_COMMIT)
    assert len(reg.HER2ST_IMAGE_NAMES) == 36
    verified = reg.her2st_verified_sections()
    assert verified == ["B4", "C2", "C3", "C4", "C5", "C6"]
    registry, urls = reg.her2st_registry()
    assert set(registry) == {f for s in verified for f in reg.her2st_files(s).values()} == set(urls)
    prefix = f"https://raw.githubusercontent.com/almaan/her2st/{reg.HER2ST_COMMIT}/data/"
    for fname, known in registry.items():
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", known), fname
        assert urls[fname].startswith(prefix), fname
        assert urls[fname].rsplit("/", 1)[-1] in (fname.rsplit("/", 1)[-1], *reg.HER2ST_IMAGE_NAMES.values())


def test_registry_matches_shared_checksums(her2st_dir):
    sums = dict(line.split()[::-1] for line in (her2st_dir / "raw" / "SHA256SUMS").read_text().splitlines())
    slides = pd.read_csv(her2st_dir / "slides.csv").set_index("slide")
    for section in reg.her2st_verified_sections():
        files = reg.her2st_files(section)
        assert reg.HER2ST_SHA256[files["counts"]] == sums[files["counts"]]
        assert reg.HER2ST_SHA256[files["spots"]] == sums[files["spots"]]
        assert reg.HER2ST_SHA256[files["image"]] == slides.loc[section, "image_sha256"]
        assert reg.HER2ST_IMAGE_NAMES[section] == slides.loc[section, "image_original"]


def test_offline_download_failure_says_where_the_files_go(tmp_path, monkeypatch):
    import requests

    def no_network(self, url, output_file, pup, check_only=False):
        msg = f"Failed to resolve host for {url}"
        raise requests.exceptions.ConnectionError(msg)

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", no_network)
    monkeypatch.setattr(her2st_module, "_RETRIES", 0)  # pooch's retries sleep between tries
    cache = tmp_path / "cache"
    names = list(reg.her2st_files("C3").values())
    with pytest.raises(ConnectionError, match=r"Could not download .* of HER2ST section C3 \(ConnectionError") as info:
        hst.datasets.her2st("C3", cache_dir=cache)
    text = str(info.value)
    assert f"`{cache}`" in text and all(f"`{n}`" in text for n in names) and "HYPERST_DATA_DIR" in text
