"""``hst.datasets.hest``: HEST-1k-style folders built from ../shared (NCBI858 mini) and from synthetic slides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import hyperst as hst
from conftest import SHARED
from hyperst._data import slide_layout
from hyperst._data._elements import resolve_elements
from hyperst.datasets import synthetic

HEST_MINI = SHARED / "data" / "hest_ncbi858_mini"
NCBI858_MPP = 2.124


@pytest.fixture(scope="session")
def hest_mini_dir() -> Path:
    if not (HEST_MINI / "NCBI858.h5ad").exists():
        pytest.skip(f"real data not found at {HEST_MINI} (needs ../shared/data)")
    return HEST_MINI


def _write_metadata(root: Path, sample: str, meta: dict) -> None:
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / f"{sample}.json").write_text(json.dumps(meta))


def _ncbi858_folder(root: Path, mini: Path, *, image: str) -> Path:
    """A HEST-style folder for NCBI858: the h5ad copied, the JPEG as a tiled TIFF (or copied), metadata JSON."""
    (root / "st").mkdir(parents=True)
    (root / "wsis").mkdir()
    shutil.copyfile(mini / "NCBI858.h5ad", root / "st" / "NCBI858.h5ad")
    if image == "tif":
        tifffile = pytest.importorskip("tifffile")
        from PIL import Image

        with Image.open(mini / "images" / "NCBI858.jpg") as img:
            rgb = np.asarray(img.convert("RGB"))
        tifffile.imwrite(root / "wsis" / "NCBI858.tif", rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    else:
        shutil.copyfile(mini / "images" / "NCBI858.jpg", root / "wsis" / "NCBI858.jpg")
    _write_metadata(root, "NCBI858", {"pixel_size_um_estimated": NCBI858_MPP, "st_technology": "Xenium"})
    return root


def _jpeg_pixels(mini: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(mini / "images" / "NCBI858.jpg") as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


@pytest.mark.parametrize("image", ["tif", "jpg"])
def test_ncbi858_loads_with_spots_on_the_image(hest_mini_dir, tmp_path, image):
    root = _ncbi858_folder(tmp_path, hest_mini_dir, image=image)
    sdata = hst.datasets.hest(root, "NCBI858")
    source = ad.read_h5ad(hest_mini_dir / "NCBI858.h5ad")

    assert set(sdata.images) == {"NCBI858_full_image"} and set(sdata.shapes) == {"NCBI858"}
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == ("NCBI858", "region", "spot_id")
    # counts, cells and genes exactly as in the source
    np.testing.assert_array_equal(table.obs_names, source.obs_names)
    np.testing.assert_array_equal(table.var_names, source.var_names)
    assert table.X.dtype == source.X.dtype and (table.X != source.X).nnz == 0
    pd.testing.assert_frame_equal(table.obs[list(source.obs.columns)], source.obs)

    # circles at obsm["spatial"], a nominal 10 µm cell wide, all on the image
    circles = sdata.shapes["NCBI858"].loc[table.obs["spot_id"].to_numpy()]
    xy = np.column_stack([circles.geometry.x, circles.geometry.y])
    np.testing.assert_allclose(xy, source.obsm["spatial"])
    np.testing.assert_allclose(circles["radius"], 10.0 / NCBI858_MPP / 2)
    pixels = _jpeg_pixels(hest_mini_dir)
    level0 = sdata.images["NCBI858_full_image"]
    level0 = level0["scale0"]["image"] if "scale0" in getattr(level0, "children", {}) else level0
    assert level0.dtype == np.uint8 and level0.shape == pixels.shape == (3, 1249, 1431)
    assert ((xy >= 0) & (xy < [1431, 1249])).all()
    np.testing.assert_array_equal(np.asarray(level0.data[:, 300:700, 200:900]), pixels[:, 300:700, 200:900])
    # the cells sit on tissue: most of the pixels under them are not white glass
    under = pixels[:, np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)].mean(axis=0)
    assert (under < 220).mean() > 0.8

    scalefactors = table.uns["spatial"]["NCBI858"]["scalefactors"]
    assert scalefactors["microns_per_pixel"] == NCBI858_MPP
    assert table.uns["spatial"]["NCBI858"]["metadata"]["st_technology"] == "Xenium"
    el = resolve_elements(sdata)
    assert (el.table_key, el.shapes_key, el.image_key) == ("table", "NCBI858", "NCBI858_full_image")
    layout = slide_layout(sdata, microns_per_pixel=scalefactors["microns_per_pixel"])  # cells lie on no grid
    assert layout.image_shape == (1249, 1431)


def test_sequences_and_none_give_a_dict(hest_mini_dir, tmp_path):
    root = _ncbi858_folder(tmp_path, hest_mini_dir, image="tif")
    for ids in (None, ["NCBI858"], ("NCBI858", "NCBI858")):
        slides = hst.datasets.hest(root, ids)
        assert list(slides) == ["NCBI858"]
        assert slides["NCBI858"].tables["table"].n_obs == 200


# ---------------------------------------------------------------- synthetic Visium slides as HEST samples


@pytest.fixture(scope="module")
def synthetic_hest(tmp_path_factory) -> tuple[Path, dict]:
    """Two synthetic Visium slides written as HEST samples: pyramidal tiled TIFFs, h5ads, metadata, HEST table."""
    tifffile = pytest.importorskip("tifffile")
    root = tmp_path_factory.mktemp("hest")
    (root / "st").mkdir()
    (root / "wsis").mkdir()
    slides = {}
    for i, slide in enumerate(synthetic(n_slides=2, n_spots=60, n_genes=15, microns_per_pixel=0.5, seed=3)):
        sample = f"SYN{i}"
        table = slide.tables["table"]
        adata = ad.AnnData(X=table.X.copy(), obs=table.obs[["in_tissue", "array_row", "array_col"]].copy())
        adata.var_names = table.var_names
        adata.obsm["spatial"] = table.obsm["spatial"].copy()
        adata.uns["spatial"] = {"ST": {"images": {"downscaled_fullres": np.zeros((4, 4, 3), np.uint8)}}}
        adata.write_h5ad(root / "st" / f"{sample}.h5ad")
        rgb = np.asarray(slide.images[f"synthetic_{i}_full_image"]["scale0"]["image"].values).transpose(1, 2, 0)
        with tifffile.TiffWriter(root / "wsis" / f"{sample}.tif") as tif:
            options = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
            tif.write(rgb, subifds=2, **options)
            tif.write(rgb[::2, ::2], subfiletype=1, **options)
            tif.write(rgb[::4, ::4], subfiletype=1, **options)
        _write_metadata(root, sample, {"pixel_size_um_estimated": 0.5, "spot_diameter": 55.0, "inter_spot_dist": 100.0})
        slides[sample] = (adata, rgb)
    pd.DataFrame({"id": ["SYN0", "SYN1"], "organ": ["Breast", "Lung"], "st_technology": "Visium"}).to_csv(
        root / "HEST_v1_1_0.csv", index=False
    )
    return root, slides


def test_synthetic_hest_samples_load_at_their_scale(synthetic_hest):
    root, slides = synthetic_hest
    loaded = hst.datasets.hest(root)
    assert list(loaded) == ["SYN0", "SYN1"]
    for sample, sdata in loaded.items():
        adata, rgb = slides[sample]
        table = sdata.tables["table"]
        np.testing.assert_array_equal(table.X.toarray(), adata.X.toarray())
        np.testing.assert_array_equal(table.obs["spot_id"], np.arange(adata.n_obs))
        meta = table.uns["spatial"][sample]["metadata"]
        assert meta["organ"] == {"SYN0": "Breast", "SYN1": "Lung"}[sample]  # from the HEST table
        assert meta["spot_diameter"] == 55.0 and "ST" not in table.uns["spatial"]
        image = sdata.images[f"{sample}_full_image"]
        np.testing.assert_array_equal(image["scale0"]["image"].values, rgb.transpose(2, 0, 1))
        assert [c % 128 for c in image["scale0"]["image"].data.chunksize[1:]] == [0, 0]  # whole tiles of the file
        assert len(image) == 2  # 3136 px halved once to at most 2048 px
        layout = slide_layout(sdata)
        assert layout.grid.kind == "hex"
        assert layout.microns_per_pixel == pytest.approx(0.5, rel=1e-6)
        np.testing.assert_allclose(sdata.shapes[sample]["radius"], 55.0 / 0.5 / 2)


def test_spot_diameter_can_be_overridden(synthetic_hest):
    root, _ = synthetic_hest
    sdata = hst.datasets.hest(root, "SYN1", spot_diameter_um=60.0)
    np.testing.assert_allclose(sdata.shapes["SYN1"]["radius"], 60.0)


def test_hest_folder_problems_are_reported_with_their_fix(synthetic_hest, tmp_path):
    root, _ = synthetic_hest
    with pytest.raises(ValueError, match=r"HEST-1k folder holding `st/`.*snapshot_download\('MahmoodLab/hest'"):
        hst.datasets.hest(tmp_path)
    with pytest.raises(KeyError, match=r"Key `'TENX95'` not found in `.*st`. Available keys: \['SYN0', 'SYN1'\]"):
        hst.datasets.hest(root, "TENX95")
    with pytest.raises(ValueError, match=r"Expected `ids` to be a sample id, a non-empty sequence"):
        hst.datasets.hest(root, [])
    with pytest.raises(ValueError, match=r"Expected `spot_diameter_um` to be a positive finite number"):
        hst.datasets.hest(root, "SYN0", spot_diameter_um=0)

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "wsis" / "SYN0.tif").unlink()
    (broken / "metadata" / "SYN1.json").write_text(json.dumps({"spot_diameter": 55.0}))
    with pytest.raises(ValueError, match=r"has 2 problems:\n  - `wsis/SYN0.tif` not found.*\n  - no positive `pixel_"):
        hst.datasets.hest(broken)
    (broken / "metadata" / "SYN1.json").unlink()
    with pytest.raises(ValueError, match=r"pixel_size_um_embedded`\) for `SYN1` in `metadata/SYN1.json` or HEST"):
        hst.datasets.hest(broken, "SYN1")  # HEST's table has a row for it, but no pixel size
    table = pd.read_csv(broken / "HEST_v1_1_0.csv").assign(pixel_size_um_estimated=0.5, spot_diameter=55.0)
    table.to_csv(broken / "HEST_v1_1_0.csv", index=False)
    assert hst.datasets.hest(broken, "SYN1").tables["table"].uns["spatial"]["SYN1"]["metadata"]["organ"] == "Lung"
    (broken / "HEST_v1_1_0.csv").unlink()
    with pytest.raises(ValueError, match=r"`metadata/SYN1.json` not found \(it gives the pixel size\)"):
        hst.datasets.hest(broken, "SYN1")
    _write_metadata(broken, "SYN1", {"pixel_size_um_estimated": 0.5, "st_technology": "Slide-seq"})
    with pytest.raises(ValueError, match=r"`SYN1`: the metadata gives neither `spot_diameter` nor.*diameter_um=`"):
        hst.datasets.hest(broken, "SYN1")
    assert hst.datasets.hest(broken, "SYN1", spot_diameter_um=10.0).tables["table"].n_obs == 60

    adata = ad.read_h5ad(broken / "st" / "SYN1.h5ad")
    del adata.obsm["spatial"]
    adata.write_h5ad(broken / "st" / "SYN1.h5ad")
    with pytest.raises(ValueError, match=r"`st/SYN1.h5ad` has no spot coordinates: expected `obsm\['spatial'\]`"):
        hst.datasets.hest(broken, "SYN1", spot_diameter_um=10.0)
