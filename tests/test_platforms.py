"""Visium HD and Xenium layouts: the synthetic slides, pseudo-spots, their layout and niche graph, refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp

import hyperst as hst
from hyperst._constants import PSEUDOSPOTS_KEY
from hyperst._data import members, resolve_elements, slide_layout
from hyperst._data._aggregate import bin_lattice, cell_lattice, lattice_graph

HD, XENIUM = "synthetic_hd_0", "synthetic_xenium_0"


@pytest.fixture(scope="module")
def hd_slides():
    return hst.datasets.synthetic_visium_hd(2, tissue_mm2=0.25, n_genes=30, seed=3)


@pytest.fixture(scope="module")
def xenium_slides():
    return hst.datasets.synthetic_xenium(1, tissue_mm2=0.25, n_genes=30, seed=3)


@pytest.fixture
def hd(hd_slides):
    return copy.deepcopy(hd_slides[0])


@pytest.fixture
def xenium(xenium_slides):
    return copy.deepcopy(xenium_slides[0])


def _affine(sdata, element, cs):
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))


def test_visium_hd_slide_is_laid_out_as_the_reader_lays_it_out(hd):
    from spatialdata.models import get_table_keys

    assert set(hd.tables) == {"square_008um", "square_016um"}
    assert hd.attrs["spatialdata_io_reader"] == "visium_hd"
    assert set(hd.images) == {f"{HD}_full_image", f"{HD}_hires_image", f"{HD}_lowres_image"}
    for size in (8, 16):
        table = hd.tables[f"square_{size:03d}um"]
        assert get_table_keys(table) == (f"{HD}_square_{size:03d}um", "region", "location_id")
        squares = hd.shapes[f"{HD}_square_{size:03d}um"]
        assert "radius" not in squares.columns and squares.index.name == "location_id"
        assert (squares.geom_type == "Polygon").all()
        bounds = squares.bounds
        np.testing.assert_allclose(bounds.maxx - bounds.minx, size)  # 1 µm/px: a side of `size` pixels
        centroid = np.column_stack([squares.centroid.x, squares.centroid.y])[table.obs["location_id"].to_numpy()]
        np.testing.assert_allclose(centroid, table.obsm["spatial"])
        assert {"in_tissue", "array_row", "array_col"} <= set(table.obs.columns)
        np.testing.assert_allclose(_affine(hd, squares, HD), np.eye(3))
    # the 16 µm bins are sums of the 8 µm ones
    fine, coarse = hd.tables["square_008um"], hd.tables["square_016um"]
    np.testing.assert_allclose(fine.X.sum(0), coarse.X.sum(0))
    assert coarse.n_obs < fine.n_obs / 3


def test_synthetic_platforms_are_seeded():
    a = hst.datasets.synthetic_visium_hd(tissue_mm2=0.05, n_genes=12, seed=4)[0]
    b = hst.datasets.synthetic_visium_hd(tissue_mm2=0.05, n_genes=12, seed=4)[0]
    c = hst.datasets.synthetic_visium_hd(tissue_mm2=0.05, n_genes=12, seed=5)[0]
    assert (a.tables["square_008um"].X != b.tables["square_008um"].X).nnz == 0
    assert a.tables["square_008um"].shape != c.tables["square_008um"].shape or (
        (a.tables["square_008um"].X != c.tables["square_008um"].X).nnz > 0
    )
    x = hst.datasets.synthetic_xenium(tissue_mm2=0.05, n_genes=12, seed=4)[0]
    y = hst.datasets.synthetic_xenium(tissue_mm2=0.05, n_genes=12, seed=4)[0]
    assert (x.tables["table"].X != y.tables["table"].X).nnz == 0


def test_xenium_slide_is_laid_out_as_the_reader_lays_it_out_and_the_affine_aligns_the_he(xenium):
    from spatialdata.models import get_table_keys
    from spatialdata.transformations import get_transformation

    table = xenium.tables["table"]
    assert get_table_keys(table) == ("cell_circles", "region", "cell_id")
    assert xenium.attrs["spatialdata_io_reader"] == "xenium"
    circles = xenium.shapes["cell_circles"]
    np.testing.assert_allclose(_affine(xenium, circles, "global")[:2, :2], np.eye(2) / 0.2125)
    np.testing.assert_allclose(np.pi * circles["radius"] ** 2, table.obs["cell_area"].to_numpy())
    assert list(xenium.images["he_image"]["scale0"]["image"].coords["c"].values) == ["r", "g", "b"]
    assert type(get_transformation(xenium.images["he_image"], "global")).__name__ == "Affine"
    # cells mapped through the alignment land on tissue, and would not without the rotation
    m = members(xenium, "table")
    assert m.microns_per_pixel == pytest.approx(1.0) and m.platform == "xenium"
    image = np.asarray(xenium.images["he_image"]["scale0"]["image"].values).mean(0)
    h, w = image.shape

    def on_tissue(xy):
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        i, j = xy[inside, 1].astype(int), xy[inside, 0].astype(int)
        return (image[i, j] < 235).sum() / len(xy)

    assert on_tissue(m.centres_px) > 0.95
    assert on_tissue(table.obsm["spatial"]) < 0.8  # µm of the Xenium frame, read as H&E pixels


def test_pseudospots_of_bins_sum_7_by_7_bins_on_a_56_um_lattice(hd):
    bins = hd.tables["square_008um"]
    hst.pp.pseudospots(hd)
    spots = hd.tables[PSEUDOSPOTS_KEY]
    params = spots.uns[PSEUDOSPOTS_KEY]
    assert params["size_um"] == 56.0 and params["bins_per_side"] == 7 and params["platform"] == "visium_hd"
    assert params["source_table"] == "square_008um" and params["microns_per_pixel"] == pytest.approx(1.0)
    assign = bins.obs[f"{PSEUDOSPOTS_KEY}_id"].to_numpy()
    kept = assign >= 0
    # each pseudo-spot's counts are the sum of its bins; its bins form one 7 x 7 block of the bin grid
    one_hot = sp.csr_matrix(
        (np.ones(kept.sum()), (assign[kept], np.flatnonzero(kept))), shape=(spots.n_obs, bins.n_obs)
    )
    np.testing.assert_allclose((one_hot @ bins.X).toarray(), spots.X.toarray())
    block = bins.obs[["array_row", "array_col"]].to_numpy()[kept] // 7
    np.testing.assert_array_equal(block, spots.obs[["array_row", "array_col"]].to_numpy()[assign[kept]])
    assert spots.obs["n_members"].min() >= 25 and spots.obs["n_members"].max() == 49
    full = spots.obs["n_members"].to_numpy() == 49
    centroid = (one_hot @ bins.obsm["spatial"]) / spots.obs["n_members"].to_numpy()[:, None]
    np.testing.assert_allclose(centroid[full], spots.obsm["spatial"][full])
    circles = hd.shapes[f"{PSEUDOSPOTS_KEY}_spots"]
    np.testing.assert_allclose(circles["radius"], 28.0)
    assert set(circles.index) == set(spots.obs["spot_id"])


def test_pseudospots_of_cells_hold_their_cells_and_keep_the_input_otherwise_untouched(xenium):
    before = {k: set(getattr(xenium, k)) for k in ("images", "shapes", "tables")}
    columns = list(xenium.tables["table"].obs.columns)
    circles, spots, assign = hst.pp.pseudospots(xenium, size_um=80.0, inplace=False)
    assert {k: set(getattr(xenium, k)) for k in before} == before
    assert list(xenium.tables["table"].obs.columns) == columns
    m = members(xenium, "table")
    assert (assign >= 0).all()  # one cell suffices by default
    offset = np.abs(m.centres_px - spots.obsm["spatial"][assign])
    assert offset.max() <= 40.0 + 1e-9  # the 80 µm square of the cell's pseudo-spot holds it (1 µm/px)
    assert spots.obs["n_members"].sum() == xenium.tables["table"].n_obs
    np.testing.assert_allclose(np.asarray(spots.X.sum(0)).ravel(), np.asarray(xenium.tables["table"].X.sum(0)).ravel())
    # the circles share the H&E's transformation to the Xenium frame
    np.testing.assert_allclose(_affine(xenium, circles, "global"), _affine(xenium, xenium.images["he_image"], "global"))
    hst.pp.pseudospots(xenium)
    assert set(xenium.shapes) == before["shapes"] | {f"{PSEUDOSPOTS_KEY}_spots"}
    assert set(xenium.tables) == before["tables"] | {PSEUDOSPOTS_KEY}
    assert set(xenium.tables["table"].obs.columns) == {*columns, f"{PSEUDOSPOTS_KEY}_id"}


def test_pseudospots_carry_the_domain_signal(hd):
    hst.pp.pseudospots(hd)
    bins, spots = hd.tables["square_008um"], hd.tables[PSEUDOSPOTS_KEY]
    assign = bins.obs[f"{PSEUDOSPOTS_KEY}_id"].to_numpy()
    kept = assign >= 0
    domains = bins.obs["domain"].cat.codes.to_numpy()
    frac = np.zeros((spots.n_obs, 3))
    np.add.at(frac, (assign[kept], domains[kept]), 1.0)
    frac /= frac.sum(1, keepdims=True)
    logs = np.log1p(spots.X.toarray())
    genes = np.flatnonzero(spots.var["synthetic_role"].to_numpy() == "domain")
    best = [max(abs(np.corrcoef(logs[:, g], frac[:, d])[0, 1]) for d in range(3)) for g in genes]
    assert np.median(best) > 0.6


def test_a_pseudospot_table_is_a_slide_hyperst_understands(hd, xenium):
    for sdata, platform in ((hd, "visium_hd"), (xenium, "xenium")):
        hst.pp.pseudospots(sdata)
        layout = slide_layout(sdata)
        assert layout.elements.table_key == PSEUDOSPOTS_KEY
        assert layout.technology == platform
        assert layout.microns_per_pixel == pytest.approx(1.0, rel=1e-6)
        assert layout.grid.kind == "square" and layout.grid.pitch == pytest.approx(56.0)
        assert layout.spot_diameter_px == pytest.approx(56.0)


def test_niche_graph_of_pseudospots_follows_the_lattice(hd):
    hst.pp.pseudospots(hd)
    hst.pp.niche_graph(hd)
    spots = hd.tables[PSEUDOSPOTS_KEY]
    conn = spots.obsp["hyperst_connectivities"]
    rc = spots.obs[["array_row", "array_col"]].to_numpy()
    i, j = conn.nonzero()
    np.testing.assert_array_equal(np.abs(rc[i] - rc[j]).sum(1), 1)
    degree = np.asarray(conn.sum(1)).ravel()
    assert degree.max() == 4 and (degree == 4).mean() > 0.4
    conn2, dist2 = lattice_graph(rc[:, 0], rc[:, 1], 2)
    assert np.asarray(conn2.sum(1)).max() == 12 and set(np.unique(dist2.data)) == {1.0, 2.0}


def test_bin_lattice_follows_a_rotated_bin_grid():
    rows, cols = np.divmod(np.arange(28 * 28), 28)
    theta, pitch = np.deg2rad(0.7), 8.0 / 0.27
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    xy = np.column_stack([cols, rows]) * pitch @ rot.T + [500.0, 300.0]
    lat = bin_lattice(np.column_stack([rows, cols]), xy, 7, 25)
    assert lat.rows.size == 16 and lat.side_px == pytest.approx(7 * pitch)
    for s in range(16):
        np.testing.assert_allclose(lat.centres_px[s], xy[lat.assignment == s].mean(0))
    cells = cell_lattice(xy, 100.0, 1)
    assert (np.abs(xy - cells.centres_px[cells.assignment]) <= 50.0).all()


def test_rgb_image_is_preferred_over_a_finer_morphology_image(xenium):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    dapi = np.zeros((1, 400, 400), dtype=np.uint16)
    xenium.images["morphology_focus"] = Image2DModel.parse(
        DataArray(dapi, dims=("c", "y", "x")), transformations={"global": Identity()}
    )
    assert members(xenium, "table").image_key == "he_image"
    hst.pp.pseudospots(xenium)
    assert slide_layout(xenium).elements.image_key == "he_image"


def test_slides_of_bins_are_refused_as_spots_with_the_fix(hd):
    with pytest.raises(ValueError, match=r"holds no table of spots.*hold bins.*hyperst\.pp\.pseudospots"):
        resolve_elements(hd)
    with pytest.raises(ValueError, match=r"`'square_016um'` holds bins, not spots.*pseudospots\(sdata"):
        resolve_elements(hd, table_key="square_016um")
    table = hd.tables["square_008um"]
    del hd.tables["square_008um"]
    hd.tables["square_002um"] = table  # two bin sizes, neither of them 8 µm: the user chooses
    with pytest.raises(ValueError, match=r"several candidates for the table of bins or cells.*Pass `table_key=`"):
        hst.pp.pseudospots(hd)


def test_pseudospots_refuse_bad_arguments(hd, hd_slides):
    visium = hst.datasets.synthetic(n_slides=1, n_spots=40, n_genes=12)[0]
    with pytest.raises(ValueError, match=r"`size_um`.*positive"):
        hst.pp.pseudospots(hd, size_um=-5)
    with pytest.raises(ValueError, match=r"`min_members`"):
        hst.pp.pseudospots(hd, min_members=0)
    with pytest.raises(ValueError, match=r"Found no table of bins or cells"):
        hst.pp.pseudospots(visium)
    with pytest.raises(ValueError, match=r"`'table'` holds spots, not Visium HD bins or cells"):
        hst.pp.pseudospots(visium, table_key="table")
    with pytest.raises(ValueError, match=r"No pseudo-spot of 56 µm holds 1000 or more"):
        hst.pp.pseudospots(hd, min_members=1000)
    hd.shapes[PSEUDOSPOTS_KEY + "_spots"] = hd.shapes[f"{HD}_square_016um"]
    with pytest.raises(ValueError, match=r"already exists in `sdata.shapes` and was not written by"):
        hst.pp.pseudospots(hd)
    assert PSEUDOSPOTS_KEY not in hd.tables


def test_cells_without_a_known_scale_ask_for_the_pixel_size(xenium):
    del xenium.attrs["spatialdata_io_reader"]  # cells of an unknown platform: their units are unknown
    with pytest.raises(ValueError, match=r"Cannot tell the pixel size of image `'he_image'`.*`microns_per_pixel=`"):
        members(xenium, "table")
    m = members(xenium, "table", microns_per_pixel=1.0)
    assert m.microns_per_pixel == 1.0


def test_tile_finds_the_pixel_size_from_bins_or_cells(hd, xenium):
    hst.pp.tile(hd)
    params = hd.tables["hyperst_tiles"].uns["hyperst_tiles"]
    assert (
        params["microns_per_pixel"] == pytest.approx(1.0) and "bins of table 'square_008um'" in params["scale_source"]
    )
    hst.pp.tile(xenium)
    assert xenium.tables["hyperst_tiles"].uns["hyperst_tiles"]["microns_per_pixel"] == pytest.approx(1.0)
    assert slide_layout(hd, table_key="hyperst_tiles").microns_per_pixel == pytest.approx(1.0)
    # virtual spots on a Xenium slide are spots, not cells
    assert slide_layout(xenium).elements.table_key == "hyperst_tiles"


def test_a_targeted_panel_smaller_than_the_genes_asked_gets_a_fix(xenium):
    from hyperst._data._genes import select_hmhvg

    with pytest.raises(ValueError, match=r"Only 30 candidate genes .* of the 30 genes .* targeted panel .*`genes=30`"):
        select_hmhvg([xenium.tables["table"]], 200)
    assert len(select_hmhvg([xenium.tables["table"]], 30)) == 30  # the whole panel, ranked


def test_xenium_default_layout_table_on_labels_reads_centres_from_the_boundaries(xenium):
    """``spatialdata_io.xenium`` without ``cells_as_circles``: the table annotates labels by their integer index."""
    import pandas as pd
    from geopandas import GeoDataFrame
    from spatialdata.models import Labels2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, get_transformation
    from xarray import DataArray

    expected = hst.pp.pseudospots(xenium, inplace=False)[1]
    table = xenium.tables["table"]
    n = table.n_obs
    labels = np.zeros((64, 64), dtype=np.uint32)
    xenium.labels["cell_labels"] = Labels2DModel.parse(
        DataArray(labels, dims=("y", "x")), transformations={"global": Identity()}
    )
    old = xenium.shapes["cell_boundaries"]
    boundaries = GeoDataFrame(
        {"geometry": old.geometry.to_numpy(), "cell_id": old.index.to_numpy()},
        index=pd.Index(np.arange(1, n + 1), name="label_index"),  # the reader's label_index
    )
    transform = get_transformation(old, get_all=True)
    xenium.shapes["cell_boundaries"] = ShapesModel.parse(boundaries, transformations=transform)
    adata = table.copy()
    del adata.uns["spatialdata_attrs"]
    adata.obs["cell_labels"] = np.arange(1, n + 1)
    adata.obs["region"] = pd.Categorical(["cell_labels"] * n)
    del xenium.tables["table"]
    xenium.tables["table"] = TableModel.parse(
        adata, region="cell_labels", region_key="region", instance_key="cell_labels"
    )
    _, spots, _ = hst.pp.pseudospots(xenium, inplace=False)
    assert spots.uns[PSEUDOSPOTS_KEY]["source_shapes"] == "cell_boundaries"
    np.testing.assert_array_equal(spots.obs["n_members"], expected.obs["n_members"])
    np.testing.assert_allclose(spots.X.toarray(), expected.X.toarray())
    del xenium.shapes["cell_boundaries"]
    with pytest.raises(ValueError, match=r"annotates \['cell_labels'\], which is not one shapes element.*shapes_key="):
        hst.pp.pseudospots(xenium)
