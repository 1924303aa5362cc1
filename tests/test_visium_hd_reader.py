"""A synthetic Visium HD slide written as a Space Ranger output folder, read by ``spatialdata_io.visium_hd``.

The folder holds what the reader opens (spatialdata-io 0.7): ``feature_slice.h5`` (its ``metadata_json``
attribute, for the file format), ``microscope_image/`` (the full-resolution H&E), ``spatial/`` (hires and lowres
PNGs, ``scalefactors_json.json``) and, per bin size, ``binned_outputs/square_XXXum/`` with
``filtered_feature_bc_matrix.h5`` and ``spatial/{tissue_positions.parquet, scalefactors_json.json}``. What
the reader returns then goes through pseudo-spots, fit, predict and back to the bins, so the layout hyperst
is tested on is the reader's own, not only the one ``hst.datasets.synthetic_visium_hd`` imitates.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import hyperst as hst
from conftest import write_cellranger_h5
from hyperst._constants import PSEUDOSPOTS_KEY, SYNTHETIC_ATTRS

spatialdata_io = pytest.importorskip("spatialdata_io")
tifffile = pytest.importorskip("tifffile")

FIT = {"encoder": "squidpy", "max_epochs": 5, "batch_size": 64, "embed_dim": 32, "refit": False, "random_state": 0}


def _write_bins(table, folder: Path, scalefactors: dict) -> None:
    import pandas as pd

    (folder / "spatial").mkdir(parents=True)
    write_cellranger_h5(table, folder / "filtered_feature_bc_matrix.h5")
    xy = np.asarray(table.obsm["spatial"])
    positions = {"barcode": table.obs_names.to_numpy()}
    positions.update({c: table.obs[c].to_numpy() for c in ("in_tissue", "array_row", "array_col")})
    positions.update({"pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0]})
    pd.DataFrame(positions).to_parquet(folder / "spatial" / "tissue_positions.parquet")
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))


def _write_space_ranger_hd(sdata, root: Path) -> Path:
    """Write a slide of ``hst.datasets.synthetic_visium_hd`` as Space Ranger 3 lays out a Visium HD run."""
    from PIL import Image

    (dataset_id,) = {k.removesuffix("_full_image") for k in sdata.images if k.endswith("_full_image")}
    attrs = sdata.attrs[SYNTHETIC_ATTRS]
    mpp = attrs["microns_per_pixel"]
    (root / "microscope_image").mkdir(parents=True)
    (root / "spatial").mkdir()
    with h5py.File(root / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps({"file_format": "1.0"})})
    full = np.asarray(sdata.images[f"{dataset_id}_full_image"]["scale0"]["image"].values)
    tifffile.imwrite(root / "microscope_image" / "tissue.tif", full.transpose(1, 2, 0))
    for res in ("hires", "lowres"):
        image = np.asarray(sdata.images[f"{dataset_id}_{res}_image"].values).transpose(1, 2, 0)
        Image.fromarray(image).save(root / "spatial" / f"tissue_{res}_image.png")
    scales = {k: attrs[k] for k in ("tissue_hires_scalef", "tissue_lowres_scalef")}
    for name, table in sdata.tables.items():
        size = float(name.removeprefix("square_").removesuffix("um"))
        scalefactors = {**scales, "bin_size_um": size, "spot_diameter_fullres": size / mpp, "microns_per_pixel": mpp}
        _write_bins(table, root / "binned_outputs" / name, scalefactors)
        if name == "square_008um":
            (root / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    return root


@pytest.fixture(scope="module")
def synthetic():
    return hst.datasets.synthetic_visium_hd(2, tissue_mm2=0.15, n_genes=30, seed=4)


@pytest.fixture(scope="module")
def read(synthetic, tmp_path_factory):
    """The synthetic slides as ``spatialdata_io.visium_hd`` reads them back from Space Ranger folders."""
    root = tmp_path_factory.mktemp("visium_hd")
    return [
        spatialdata_io.visium_hd(
            _write_space_ranger_hd(s, root / f"hd{i}"), dataset_id=f"hd{i}", load_segmentations_only=False
        )
        for i, s in enumerate(synthetic)
    ]


def test_the_reader_reads_the_folder_as_the_synthetic_slide_lays_it_out(synthetic, read):
    from spatialdata.models import get_table_keys

    ours, theirs = synthetic[0], read[0]
    assert theirs.attrs["spatialdata_io_reader"] == "visium_hd"
    assert set(theirs.tables) == set(ours.tables) == {"square_008um", "square_016um"}
    assert set(theirs.images) == {"hd0_full_image", "hd0_hires_image", "hd0_lowres_image"}
    for name in ours.tables:
        mine, reader = ours.tables[name], theirs.tables[name]
        assert get_table_keys(reader) == (f"hd0_{name}", "region", "location_id")
        np.testing.assert_array_equal(mine.obs_names, reader.obs_names)
        np.testing.assert_array_equal(mine.X.toarray(), reader.X.toarray())
        np.testing.assert_allclose(mine.obsm["spatial"], reader.obsm["spatial"])
        for column in ("array_row", "array_col", "location_id"):
            np.testing.assert_array_equal(mine.obs[column], reader.obs[column])
        np.testing.assert_allclose(
            ours.shapes[f"synthetic_hd_0_{name}"].bounds.to_numpy(), theirs.shapes[f"hd0_{name}"].bounds.to_numpy()
        )


def test_pseudospots_of_the_read_slide_equal_those_of_the_synthetic_one(synthetic, read):
    mine = hst.pp.pseudospots(synthetic[0], inplace=False)[1]
    theirs = hst.pp.pseudospots(read[0], inplace=False)[1]
    assert theirs.uns[PSEUDOSPOTS_KEY]["size_um"] == 56.0
    assert theirs.uns[PSEUDOSPOTS_KEY]["image_key"] == "hd0_full_image"
    assert theirs.n_obs == mine.n_obs > 20
    np.testing.assert_array_equal(theirs.X.toarray(), mine.X.toarray())
    np.testing.assert_allclose(theirs.obsm["spatial"], mine.obsm["spatial"])


def test_fit_predict_and_to_bins_on_the_read_slides(read, tmp_path, one_torch_thread):
    train, test = read
    model = hst.tl.fit([train], genes=20, cache=tmp_path, **FIT)
    assert model.training.technology == ("visium_hd",)
    assert PSEUDOSPOTS_KEY not in train.tables  # fit leaves its slides untouched
    hst.tl.predict(test, model, cache=tmp_path)
    pred = test.tables["hyperst"]
    assert pred.n_obs == test.tables[PSEUDOSPOTS_KEY].n_obs and pred.n_vars == 20
    assert np.isfinite(pred.X).all()
    assert np.isfinite(hst.tl.evaluate(test)["pearson"]).all()
    hst.tl.to_bins(test)
    bins = test.tables["hyperst_square_008um"]
    assert bins.n_obs == test.tables["square_008um"].n_obs
    inside = test.tables["square_008um"].obs[f"{PSEUDOSPOTS_KEY}_id"].to_numpy() >= 0
    assert np.isfinite(bins.X[inside]).all() and np.isnan(bins.X[~inside]).all()
