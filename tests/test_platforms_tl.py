"""fit / predict / evaluate / to_bins on Visium HD and Xenium slides, and models moving between platforms."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import hyperst as hst
from hyperst._constants import PSEUDOSPOTS_KEY
from hyperst._data import PatchGeometry, slide_layout

FIT = {"encoder": "squidpy", "max_epochs": 10, "batch_size": 64, "embed_dim": 32, "refit": False, "random_state": 0}


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def hd_slides():
    # the same seed and gene count as `visium_slides`: the same gene programs
    slides = hst.datasets.synthetic_visium_hd(2, tissue_mm2=0.18, n_genes=60, seed=1)
    # the third slide of the same seed (other tissue, same gene programs) at another pixel size
    return slides + hst.datasets.synthetic_visium_hd(3, tissue_mm2=0.18, n_genes=60, microns_per_pixel=0.75, seed=1)[2:]


@pytest.fixture(scope="module")
def visium_slides():
    return hst.datasets.synthetic(n_slides=3, n_spots=90, n_genes=60, seed=1)


@pytest.fixture(scope="module")
def hd_model(hd_slides, feature_cache, one_torch_thread):
    return hst.tl.fit(hd_slides[:2], genes=30, cache=feature_cache, **FIT)


@pytest.fixture(scope="module")
def visium_model(visium_slides, hd_model, feature_cache, one_torch_thread):
    return hst.tl.fit(visium_slides[:2], genes=list(hd_model.genes), cache=feature_cache, **FIT)


@pytest.fixture(scope="module")
def predicted_hd(hd_slides, hd_model, feature_cache):
    sdata = copy.deepcopy(hd_slides[2])
    hst.tl.predict(sdata, hd_model, cache=feature_cache)
    return sdata


def _mean_pcc(sdata) -> float:
    return float(hst.tl.evaluate(sdata)["pearson"].mean())


def test_fit_on_bins_aggregates_pseudospots_without_touching_the_slides(hd_model, hd_slides):
    assert hd_model.training.technology == ("visium_hd",)
    assert hd_model.training.slides == ("synthetic_hd_0_square_008um", "synthetic_hd_1_square_008um")
    assert hd_model.training.microns_per_pixel["synthetic_hd_0_square_008um"] == pytest.approx(1.0)
    # niche: the pseudo-spot and its ring, 2 * (56 + 28) µm
    assert hd_model.training.niche_side_um["synthetic_hd_0_square_008um"] == pytest.approx(168.0)
    for sdata in hd_slides[:2]:
        assert set(sdata.tables) == {"square_008um", "square_016um"}
        assert f"{PSEUDOSPOTS_KEY}_spots" not in sdata.shapes
        assert f"{PSEUDOSPOTS_KEY}_id" not in sdata.tables["square_008um"].obs


def test_predict_on_bins_writes_the_pseudospots_and_their_predictions(predicted_hd, hd_model):
    assert {PSEUDOSPOTS_KEY, "hyperst"} <= set(predicted_hd.tables)
    spots = predicted_hd.tables[PSEUDOSPOTS_KEY]
    assert spots.layers["hyperst"].shape == spots.shape
    assert np.isfinite(predicted_hd.tables["hyperst"].X).all()
    uns = spots.uns["hyperst"]
    assert uns["spot_patch_um"] == 112.0 and uns["microns_per_pixel"] == pytest.approx(0.75)
    assert _mean_pcc(predicted_hd) > 0.15  # a held-out slide at another pixel size (untrained: about 0 +- 0.05)


def test_plots_draw_pseudospots(predicted_hd):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    genes = list(predicted_hd.tables["hyperst"].var_names[:2])
    fig = hst.pl.spatial(predicted_hd, genes=genes)
    assert isinstance(fig, Figure) and len(fig.axes) >= 4  # observed and predicted, per gene
    assert isinstance(hst.pl.poincare(predicted_hd), Axes)
    plt.close("all")


def test_to_bins_gives_each_bin_its_pseudospot_prediction(predicted_hd):
    sdata = predicted_hd
    untouched = set(sdata.tables)
    table = hst.tl.to_bins(sdata, inplace=False)
    assert set(sdata.tables) == untouched
    bins = sdata.tables["square_008um"]
    pred, spots = sdata.tables["hyperst"], sdata.tables[PSEUDOSPOTS_KEY]
    assert table.shape == (bins.n_obs, pred.n_vars) and list(table.obs_names) == list(bins.obs_names)
    spot = bins.obs[f"{PSEUDOSPOTS_KEY}_id"].to_numpy()
    row = spots.obs_names.get_indexer(spots.obs_names[np.maximum(spot, 0)])
    kept = spot >= 0
    np.testing.assert_array_equal(table.X[kept], pred.X[pred.obs_names.get_indexer(spots.obs_names)][row[kept]])
    assert np.isnan(table.X[~kept]).all() and kept.mean() > 0.9
    np.testing.assert_array_equal(table.layers["hyperst_lower"][kept][:, 0], pred.layers["hyperst_lower"][row[kept], 0])
    hst.tl.to_bins(sdata, table_key="square_016um", genes=list(pred.var_names[:3]))
    coarse = sdata.tables["hyperst_square_016um"]
    assert coarse.shape == (sdata.tables["square_016um"].n_obs, 3)
    # a 16 µm bin gets the pseudo-spot whose 56 µm square holds its centre
    centre = sdata.tables["square_016um"].obsm["spatial"]  # pixels, 0.75 µm each
    for i in np.flatnonzero(~np.isnan(coarse.X[:, 0]))[:20]:
        # (16 µm bins straddle 56 µm squares: a centre on the edge of two belongs to either)
        j = np.flatnonzero(np.abs(spots.obsm["spatial"] - centre[i]).max(1) <= 28 / 0.75 + 1e-6)
        assert 1 <= len(j) <= 2 and coarse.X[i, 0] in pred.X[j, 0]
    from spatialdata.models import get_table_keys

    assert get_table_keys(coarse)[0] == "synthetic_hd_2_square_016um"


def test_a_visium_model_predicts_visium_hd_and_the_reverse_with_sizes_in_um(
    visium_model, hd_model, visium_slides, hd_slides, feature_cache
):
    hd = copy.deepcopy(hd_slides[2])  # 0.75 µm/px, where the Visium slides have 1 µm/px
    hst.tl.predict(hd, visium_model, cache=feature_cache)
    layout = slide_layout(hd)
    spot_px, niche_px = PatchGeometry(n_rings=1).sides_px(layout)
    assert spot_px * 0.75 == pytest.approx(112.0) and niche_px * 0.75 == pytest.approx(168.0)
    assert hd.tables["hyperst"].uns["hyperst"]["spot_patch_um"] == 112.0
    assert _mean_pcc(hd) > 0.15
    visium = copy.deepcopy(visium_slides[2])
    hst.tl.predict(visium, hd_model, cache=feature_cache)
    assert visium.tables["table"].uns["hyperst"]["niche_patch_um"] == pytest.approx(255.0)
    assert _mean_pcc(visium) > 0.15


@pytest.mark.slow  # the real Xenium sample (tests/test_real_xenium.py) runs the same steps by default
def test_xenium_fit_predict_evaluate_and_cells(feature_cache, one_torch_thread):
    slides = hst.datasets.synthetic_xenium(3, tissue_mm2=0.12, n_genes=40, seed=2)
    model = hst.tl.fit(slides[:2], genes=20, cache=feature_cache, **{**FIT, "max_epochs": 6})
    assert model.training.technology == ("xenium",)
    sdata = slides[2]
    hst.tl.predict(sdata, model, cache=feature_cache)
    assert _mean_pcc(sdata) > 0.1
    hst.tl.to_bins(sdata)
    cells = sdata.tables["hyperst_table"]
    assert cells.n_obs == sdata.tables["table"].n_obs and not np.isnan(cells.X).any()


@pytest.mark.slow
def test_cli_predicts_a_visium_hd_store_and_keeps_its_pseudospots(hd_model, hd_slides, tmp_path, capsys, monkeypatch):
    from spatialdata import read_zarr

    from hyperst._cli import main
    from hyperst._utils import quiet_third_party

    monkeypatch.setattr(hst.settings, "cache_dir", tmp_path / "cache")
    store, model_dir = tmp_path / "hd.zarr", tmp_path / "model"
    with quiet_third_party():
        copy.deepcopy(hd_slides[2]).write(store)
    hd_model.save(model_dir)
    assert main(["predict", str(store), "--model", str(model_dir)]) == 0
    assert "and the pseudo-spots (`hyperst_pseudospots_spots`, `hyperst_pseudospots`)" in capsys.readouterr().out
    back = read_zarr(store)
    assert {PSEUDOSPOTS_KEY, "hyperst"} <= set(back.tables) and f"{PSEUDOSPOTS_KEY}_spots" in back.shapes
    assert main(["evaluate", str(store)]) == 0
    hst.tl.to_bins(back)  # the bins' pseudo-spot column was not written back: matched by position
    kept = ~np.isnan(back.tables["hyperst_square_008um"].X[:, 0])
    assert kept.mean() > 0.9
