"""`hst.pp.niche_graph` on hexagonal and square grids, filtered tables and plain AnnData."""

from __future__ import annotations

import numpy as np
import pytest

import hyperst as hst
from conftest import hex_centres, make_slide, square_centres


def _degrees(table, key="hyperst"):
    return np.asarray(table.obsp[f"{key}_connectivities"].sum(1)).ravel()


def _interior(centres: np.ndarray, margin: float) -> np.ndarray:
    lo, hi = centres.min(0) + margin, centres.max(0) - margin
    return np.all((centres > lo) & (centres < hi), axis=1)


@pytest.mark.parametrize(
    ("make", "pitch", "deg"), [(hex_centres, 100.0, 6), (square_centres, 200.0, 4)], ids=["hex", "square"]
)
def test_interior_degree_matches_the_grid(make, pitch, deg):
    centres = make(8, 8, pitch, origin=(300, 300))
    sdata = make_slide(np.full((3, 2500, 2500), 255, np.uint8), centres, radius=pitch * 0.275)
    obsm_before = sdata.tables["table"].obsm.copy()
    hst.pp.niche_graph(sdata)
    table = sdata.tables["table"]
    degrees = _degrees(table)
    inner = _interior(centres, pitch * 1.01)
    assert (degrees[inner] == deg).all()
    assert degrees.max() == deg and degrees.min() >= 2
    conn = table.obsp["hyperst_connectivities"]
    assert (conn != conn.T).nnz == 0  # symmetric
    assert conn.diagonal().sum() == 0
    # neighbours are exactly one pitch away
    i, j = conn.nonzero()
    np.testing.assert_allclose(np.linalg.norm(centres[i] - centres[j], axis=1), pitch, rtol=1e-6)
    assert table.uns["hyperst_neighbors"]["params"]["grid"] == ("hex" if deg == 6 else "square")
    assert set(table.obsm.keys()) == set(obsm_before.keys())


def test_two_rings_and_key_added():
    centres = hex_centres(9, 9, 100.0, origin=(300, 300))
    sdata = make_slide(np.full((3, 1500, 1500), 255, np.uint8), centres, radius=27.5)
    hst.pp.niche_graph(sdata, n_rings=2, key_added="niche2")
    degrees = _degrees(sdata.tables["table"], "niche2")
    inner = _interior(centres, 2 * 100 * 1.01)
    assert (degrees[inner] == 18).all()  # 6 + 12 on a hexagonal lattice
    assert "hyperst_connectivities" not in sdata.tables["table"].obsp


def test_inplace_false_returns_matrices_and_changes_nothing():
    centres = hex_centres(5, 5, 100.0, origin=(300, 300))
    sdata = make_slide(np.full((3, 1000, 1000), 255, np.uint8), centres, radius=27.5)
    conn, dist = hst.pp.niche_graph(sdata, inplace=False)
    assert conn.shape == dist.shape == (25, 25)
    assert len(sdata.tables["table"].obsp) == 0
    assert "hyperst_neighbors" not in sdata.tables["table"].uns


def test_filtered_table_keeps_grid_and_row_order():
    from spatialdata.models import TableModel

    centres = hex_centres(8, 8, 100.0, origin=(300, 300))
    sdata = make_slide(np.full((3, 1500, 1500), 255, np.uint8), centres, radius=27.5)
    table = sdata.tables["table"]
    keep = np.flatnonzero(np.arange(64) != 27)[::-1]  # one spot dropped by QC, rows reversed
    sub = table[keep].copy()
    sub.uns.pop(TableModel.ATTRS_KEY)
    sdata.tables["table"] = TableModel.parse(sub, region="sample_1", region_key="region", instance_key="spot_id")
    hst.pp.niche_graph(sdata)
    conn = sdata.tables["table"].obsp["hyperst_connectivities"]
    i, j = conn.nonzero()
    c = centres[keep]
    np.testing.assert_allclose(np.linalg.norm(c[i] - c[j], axis=1), 100.0, rtol=1e-6)


def test_plain_anndata_and_irregular_layout_use_knn():
    import anndata as ad

    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.ones((80, 2), dtype=np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 1000, size=(80, 2))
    before = adata.obsm["spatial"].copy()
    hst.pp.niche_graph(adata, n_neighs=5)
    assert adata.uns["hyperst_neighbors"]["params"]["grid"] == "irregular"
    assert (_degrees(adata) >= 5).all()
    np.testing.assert_array_equal(adata.obsm["spatial"], before)


def test_bad_arguments():
    centres = hex_centres(4, 4, 100.0, origin=(300, 300))
    sdata = make_slide(np.full((3, 1000, 1000), 255, np.uint8), centres, radius=27.5)
    with pytest.raises(ValueError, match=r"Expected `n_rings` to be an integer >= 1, found `0`"):
        hst.pp.niche_graph(sdata, n_rings=0)
    with pytest.raises(KeyError, match="table_key"):
        hst.pp.niche_graph(sdata, table_key="nope")


def test_her2st_section_is_a_square_grid(her2st_c3):
    conn, _ = hst.pp.niche_graph(her2st_c3, inplace=False)
    degrees = np.asarray(conn.sum(1)).ravel()
    assert np.bincount(degrees.astype(int)).argmax() == 4
    assert degrees.max() == 4
