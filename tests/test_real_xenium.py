"""The real Xenium sample NCBI858 (../shared/data/hest_ncbi858_mini), read as a cell-level slide, end to end.

200 cells x 338 genes of a human lung section with its H&E at 2.12 µm/px: a check that real cells, a real
H&E and a real affine registration go through pseudo-spots, fit, predict and back to the cells. It is far too
small to say anything about accuracy (about one cell per pseudo-spot), so no score is asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

import hyperst as hst
from conftest import SHARED
from hyperst._constants import PSEUDOSPOTS_KEY

MINI = SHARED / "data" / "hest_ncbi858_mini"
#: µm per pixel of the JPEG (README: HEST's 0.2125 µm/px frame downsampled 9.996x), and of Xenium's frame.
JPEG_UM, XENIUM_UM = 2.1242, 0.2125


@pytest.fixture(scope="module")
def ncbi858():
    """The sample laid out as ``spatialdata_io.xenium(..., cells_as_circles=True)`` with its aligned H&E."""
    if not (MINI / "NCBI858.h5ad").exists():
        pytest.skip(f"real data not found at {MINI} (needs ../shared/data)")
    import anndata as ad
    import pandas as pd
    from PIL import Image
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Affine, Scale
    from xarray import DataArray

    adata = ad.read_h5ad(MINI / "NCBI858.h5ad")
    with Image.open(MINI / "images" / "NCBI858.jpg") as img:
        rgb = np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy()
    # cells in µm of the Xenium frame, as the reader keeps them; the JPEG's pixels map there by an affine
    um = np.asarray(adata.obsm["spatial"], dtype=float) * JPEG_UM
    cells = pd.Index(adata.obs["cell_id"].astype(str).to_numpy(), name="cell_id")
    adata.obs_names = cells.to_numpy()
    adata.obs = adata.obs[["cell_id"]].astype(str).assign(region=pd.Categorical(["cell_circles"] * adata.n_obs))
    adata.obsm["spatial"] = um
    del adata.uns["spatial"]
    to_global = Scale(np.full(2, 1 / XENIUM_UM), axes=("x", "y"))
    circles = ShapesModel.parse(um, geometry=0, radius=5.0, index=cells, transformations={"global": to_global})
    alignment = np.diag([JPEG_UM / XENIUM_UM, JPEG_UM / XENIUM_UM, 1.0])
    he = Image2DModel.parse(
        DataArray(rgb, dims=("c", "y", "x")),
        c_coords=["r", "g", "b"],
        transformations={"global": Affine(alignment, input_axes=("x", "y"), output_axes=("x", "y"))},
    )
    table = TableModel.parse(adata, region="cell_circles", region_key="region", instance_key="cell_id")
    sdata = SpatialData(images={"he_image": he}, shapes={"cell_circles": circles}, tables={"table": table})
    sdata.attrs["spatialdata_io_reader"] = "xenium"
    return sdata


def test_real_xenium_cells_fit_predict_and_return_to_the_cells(ncbi858, tmp_path, one_torch_thread):
    hst.pp.pseudospots(ncbi858, size_um=150.0)
    spots = ncbi858.tables[PSEUDOSPOTS_KEY]
    params = spots.uns[PSEUDOSPOTS_KEY]
    assert params["microns_per_pixel"] == pytest.approx(JPEG_UM, rel=1e-6) and params["platform"] == "xenium"
    assert spots.obs["n_members"].sum() == 200
    np.testing.assert_allclose(spots.X.sum(), ncbi858.tables["table"].X.sum())
    # every cell lies in its pseudo-spot's square, in the JPEG's pixels (150 µm = 70.6 px)
    assign = ncbi858.tables["table"].obs[f"{PSEUDOSPOTS_KEY}_id"].to_numpy()
    jpeg_xy = ncbi858.tables["table"].obsm["spatial"] / JPEG_UM
    assert (np.abs(jpeg_xy - spots.obsm["spatial"][assign]) <= 75.0 / JPEG_UM + 1e-6).all()

    model = hst.tl.fit(ncbi858, genes=20, encoder="squidpy", max_epochs=2, batch_size=64, embed_dim=32, cache=tmp_path)
    assert model.training.technology == ("xenium",)
    assert model.training.microns_per_pixel["cell_circles"] == pytest.approx(JPEG_UM, rel=1e-6)
    hst.tl.predict(ncbi858, model, cache=tmp_path)
    pred = ncbi858.tables["hyperst"]
    assert pred.shape == (spots.n_obs, 20) and np.isfinite(pred.X).all()
    assert ncbi858.tables[PSEUDOSPOTS_KEY].uns["hyperst"]["spot_patch_um"] == 112.0
    scores = hst.tl.evaluate(ncbi858)
    assert len(scores) == 20
    hst.tl.to_bins(ncbi858)
    per_cell = ncbi858.tables["hyperst_table"]
    assert per_cell.shape == (200, 20) and np.isfinite(per_cell.X).all()
