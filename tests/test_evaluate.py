"""`hst.tl.evaluate`: per-gene metrics checked against scipy/numpy on hand-made tables, plus one end-to-end run."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import hyperst as hst

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def _table(counts: np.ndarray, pred: np.ndarray, *, target: str | None = "log2", obs: dict | None = None) -> ad.AnnData:
    """A table of raw counts with predictions in ``layers['hyperst']`` (NaN columns: not predicted)."""
    n, g = counts.shape
    adata = ad.AnnData(
        np.asarray(counts, dtype=np.float32),
        obs=pd.DataFrame(obs or {}, index=[f"s{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(g)]),
    )
    adata.layers["hyperst"] = np.asarray(pred, dtype=np.float32)
    adata.var["hyperst_predicted"] = ~np.isnan(adata.layers["hyperst"]).all(0)
    if target is not None:
        adata.uns["hyperst"] = {"target": target, "version": "test"}
    return adata


@pytest.fixture
def case() -> ad.AnnData:
    """G0 perfect, G1 anti-correlated, G2 noisy, G3 constant measured, G4 constant predicted, G5 not predicted."""
    rng = np.random.default_rng(0)
    n = 40
    counts = rng.poisson(4.0, size=(n, 6)).astype(float)
    counts[:, 3] = 5
    log = np.log2(1 + counts)
    pred = np.empty_like(log)
    pred[:, 0] = log[:, 0]
    pred[:, 1] = 10 - log[:, 1]
    pred[:, 2] = log[:, 2] + rng.normal(0, 1.0, n)
    pred[:, 3] = rng.normal(2, 1, n)
    pred[:, 4] = 1.5
    pred[:, 5] = np.nan
    return _table(counts, pred)


def test_per_gene_metrics_match_scipy_and_numpy(case):
    truth = np.log2(1 + case.X.astype(np.float64))
    pred = case.layers["hyperst"].astype(np.float64)
    df = hst.tl.evaluate(case)
    assert list(df.columns) == ["pearson", "spearman", "mse", "mae", "constant", "mean_measured"]
    assert sorted(df.index) == ["G0", "G1", "G2", "G3", "G4"]
    for g in ["G0", "G1", "G2"]:
        j = int(g[1:])
        assert df.loc[g, "pearson"] == pytest.approx(stats.pearsonr(truth[:, j], pred[:, j])[0], abs=1e-6)
        assert df.loc[g, "spearman"] == pytest.approx(stats.spearmanr(truth[:, j], pred[:, j])[0], abs=1e-6)
        assert df.loc[g, "mse"] == pytest.approx(np.mean((truth[:, j] - pred[:, j]) ** 2), rel=1e-5)
        assert df.loc[g, "mae"] == pytest.approx(np.mean(np.abs(truth[:, j] - pred[:, j])), rel=1e-5)
        assert df.loc[g, "mean_measured"] == pytest.approx(truth[:, j].mean())
        assert not df.loc[g, "constant"]
    # perfect prediction (up to the float32 storage of the layer)
    assert df.loc["G0", "pearson"] == pytest.approx(1.0) and df.loc["G0", "spearman"] == pytest.approx(1.0)
    assert df.loc["G0", "mse"] == pytest.approx(0, abs=1e-12) and df.loc["G0", "mae"] == pytest.approx(0, abs=1e-6)
    assert df.loc["G1", "pearson"] == pytest.approx(-1.0) and df.loc["G1", "spearman"] == pytest.approx(-1.0)
    for g in ["G3", "G4"]:  # constant measured / constant predicted
        assert np.isnan(df.loc[g, "pearson"]) and np.isnan(df.loc[g, "spearman"]) and df.loc[g, "constant"]
        assert np.isfinite(df.loc[g, "mse"])
    # sorted by pearson, NaN last
    assert list(df.index[:3]) == ["G0", "G2", "G1"] and set(df.index[3:]) == {"G3", "G4"}

    pcc = case.var["hyperst_pcc"]
    np.testing.assert_allclose(pcc[df.index], df["pearson"])
    assert np.isnan(pcc["G5"])
    m = case.uns["hyperst"]["metrics"]
    assert case.uns["hyperst"]["version"] == "test"  # provenance kept
    r = df["pearson"].to_numpy()
    assert m["pcc_mean"]["pooled"] == pytest.approx(np.nanmean(r))
    # 5 genes < k: PCC@k is the mean over all of them, with the two constant genes counted as 0
    for k in (10, 50, 200):
        assert m[f"pcc_at_{k}"]["pooled"] == pytest.approx(np.nan_to_num(r).sum() / 5)
        assert "fewer than" in m[f"pcc_at_{k}"]["definition"] and "counted as 0" in m[f"pcc_at_{k}"]["definition"]
    assert m["mse"]["pooled"] == pytest.approx(np.mean((truth[:, :5] - pred[:, :5]) ** 2), rel=1e-5)
    assert m["mae"]["pooled"] == pytest.approx(np.mean(np.abs(truth[:, :5] - pred[:, :5])), rel=1e-5)
    assert m["n_genes"]["pooled"] == 5 and m["n_spots"]["pooled"] == 40
    assert "per_slide_mean" not in m["pcc_mean"]  # one slide: pooled only


def test_pcc_at_k_takes_the_top_k_with_constant_genes_as_zero():
    rng = np.random.default_rng(1)
    n, g = 60, 14
    counts = rng.poisson(6.0, size=(n, g)).astype(float)
    counts[:, 0] = 3  # constant: r NaN -> 0, which beats the negative genes
    log = np.log2(1 + counts)
    weights = np.linspace(-0.9, 0.9, g)[:, None].T
    pred = weights * log + rng.normal(0, 0.5, (n, g))
    df = hst.tl.evaluate(_table(counts, pred), inplace=False)
    r = np.array([stats.pearsonr(log[:, j], pred[:, j])[0] for j in range(1, g)])
    filled = np.sort(np.r_[0.0, r])[::-1]
    np.testing.assert_allclose(df["pearson"].dropna().sort_values(ascending=False), np.sort(r)[::-1], atol=1e-6)
    adata = _table(counts, pred)
    hst.tl.evaluate(adata)
    m = adata.uns["hyperst"]["metrics"]
    assert m["pcc_at_10"]["pooled"] == pytest.approx(filled[:10].mean())
    assert m["pcc_at_50"]["pooled"] == pytest.approx(filled.mean())
    assert m["pcc_mean"]["pooled"] == pytest.approx(r.mean())


def test_log2_cp10k_target_hand_checked():
    counts = np.array([[1, 3, 6], [2, 2, 0], [0, 4, 4], [5, 0, 5]], dtype=float)
    pred = np.zeros_like(counts)
    pred[:, 2] = np.nan  # G2 not predicted, but it counts towards the library size
    lib = counts.sum(1, keepdims=True)  # 10, 4, 8, 10
    truth = np.log2(1 + counts[:, :2] / lib * 1e4)
    for adata, kwargs in [
        (_table(counts, pred, target="log2_cp10k"), {}),
        (_table(counts, pred, target=None), {"target": "log2_cp10k"}),
    ]:
        df = hst.tl.evaluate(adata, inplace=False, **kwargs)
        np.testing.assert_allclose(df.loc[["G0", "G1"], "mean_measured"], truth.mean(0), rtol=1e-6)
        np.testing.assert_allclose(df.loc[["G0", "G1"], "mse"], (truth**2).mean(0), rtol=1e-6)
        assert np.isnan(df["pearson"]).all() and df["constant"].all()  # constant predictions
    assert np.log2(1 + 1 / 10 * 1e4) == pytest.approx(truth[0, 0])
    # without a stored target, log2(1 + counts)
    df = hst.tl.evaluate(_table(counts, pred, target=None), inplace=False)
    np.testing.assert_allclose(df.loc[["G0", "G1"], "mean_measured"], np.log2(1 + counts[:, :2]).mean(0), rtol=1e-6)


def _two_slides() -> tuple[ad.AnnData, np.ndarray, np.ndarray, np.ndarray]:
    """Within each slide measured and predicted are unrelated; slide B sits much higher on both."""
    rng = np.random.default_rng(3)
    n = 50
    counts = np.vstack([rng.poisson(2.0, size=(n, 3)), rng.poisson(200.0, size=(n, 3))]).astype(float)
    log = np.log2(1 + counts)
    pred = np.vstack([rng.normal(1.5, 0.5, (n, 3)), rng.normal(7.6, 0.5, (n, 3))])
    slide = np.repeat(["A", "B"], n)
    adata = _table(counts, pred, obs={"region": pd.Categorical(slide), "spot": np.arange(2 * n)})
    adata.uns["spatialdata_attrs"] = {"region": ["A", "B"], "region_key": "region", "instance_key": "spot"}
    return adata, log, pred, slide


def test_per_slide_differs_from_pooled():
    adata, log, pred, slide = _two_slides()
    df = hst.tl.evaluate(adata)
    m = adata.uns["hyperst"]["metrics"]
    assert (df["pearson"] > 0.95).all() and m["pcc_mean"]["pooled"] > 0.95  # the slide offset alone
    per_slide = []
    for s in ["A", "B"]:
        rows = slide == s
        per_slide.append(np.mean([stats.pearsonr(log[rows, j], pred[rows, j])[0] for j in range(3)]))
    np.testing.assert_allclose(m["pcc_mean"]["per_slide"], per_slide, atol=1e-6)
    assert m["pcc_mean"]["per_slide_mean"] == pytest.approx(np.mean(per_slide), abs=1e-6)
    assert m["pcc_mean"]["per_slide_std"] == pytest.approx(np.std(per_slide), abs=1e-6)
    assert abs(m["pcc_mean"]["per_slide_mean"]) < 0.3
    mse_b = np.mean((log[slide == "B"] - pred[slide == "B"]) ** 2)
    assert m["mse"]["per_slide"][1] == pytest.approx(mse_b, rel=1e-5)
    assert m["n_spots"]["per_slide"] == [50, 50] and m["n_spots"]["pooled"] == 100
    assert m["evaluation"]["slide_key"] == "region" and m["evaluation"]["slides"] == ["A", "B"]
    # an explicit slide_key works without spatialdata_attrs
    del adata.uns["spatialdata_attrs"]
    adata.obs["library"] = slide
    hst.tl.evaluate(adata)
    assert "per_slide" not in adata.uns["hyperst"]["metrics"]["pcc_mean"]
    hst.tl.evaluate(adata, slide_key="library")
    assert adata.uns["hyperst"]["metrics"]["pcc_mean"]["per_slide_mean"] == pytest.approx(np.mean(per_slide))
    with pytest.raises(KeyError, match=r"Key `'batch'` not found in `obs`"):
        hst.tl.evaluate(adata, slide_key="batch")


def test_gene_selection_and_its_errors(case):
    df = hst.tl.evaluate(case, genes=["G2", "G0"])
    assert sorted(df.index) == ["G0", "G2"]
    assert case.uns["hyperst"]["metrics"]["n_genes"]["pooled"] == 2
    assert np.isnan(case.var.loc["G1", "hyperst_pcc"]) and np.isfinite(case.var.loc["G0", "hyperst_pcc"])
    assert list(hst.tl.evaluate(case, genes="G1", inplace=False).index) == ["G1"]
    with pytest.raises(KeyError, match=r"not in `var_names`: \['nope'\]"):
        hst.tl.evaluate(case, genes=["G0", "nope"])
    with pytest.raises(ValueError, match=r"not predicted .*`var\['hyperst_predicted'\]` is False\): \['G5'\]"):
        hst.tl.evaluate(case, genes=["G0", "G5"])
    with pytest.raises(ValueError, match=r"at least one gene"):
        hst.tl.evaluate(case, genes=[])
    # without the flag column, every column of the layer that holds predictions
    del case.var["hyperst_predicted"]
    assert len(hst.tl.evaluate(case, inplace=False)) == 5
    with pytest.raises(ValueError, match=r"`layers\['hyperst'\]` is all NaN\): \['G5'\]"):
        hst.tl.evaluate(case, genes=["G5"])


def test_input_errors(case):
    with pytest.raises(KeyError, match=r"Key `'other'` not found in `adata.layers`.*\['hyperst'\].*Run `hyperst.tl"):
        hst.tl.evaluate(case, layer="other")
    with pytest.raises(KeyError, match=r"Key `'counts'` not found in `adata.layers`"):
        hst.tl.evaluate(case, counts_layer="counts")
    with pytest.raises(ValueError, match=r"Expected `target` to be one of \['log2', 'log2_cp10k'\]"):
        hst.tl.evaluate(case, target="log1p")
    normalised = case.copy()
    normalised.X = np.log1p(normalised.X)
    with pytest.raises(ValueError, match=r"non-integer values.*`counts_layer='counts'`"):
        hst.tl.evaluate(normalised)
    normalised.layers["counts"] = case.X.copy()
    assert len(hst.tl.evaluate(normalised, counts_layer="counts", inplace=False)) == 5
    empty = ad.AnnData(obs=case.obs.copy(), var=case.var.copy())
    empty.layers["hyperst"] = case.layers["hyperst"]
    with pytest.raises(ValueError, match=r"Table `adata` holds no counts .*`counts_layer=`"):
        hst.tl.evaluate(empty)
    broken = case.copy()
    broken.layers["hyperst"][3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite predictions for genes \['G0'\]"):
        hst.tl.evaluate(broken)


def test_inplace_false_writes_nothing(case):
    before = copy.deepcopy(case.uns)
    var_before = case.var.copy()
    df = hst.tl.evaluate(case, inplace=False)
    assert len(df) == 5
    assert case.uns == before
    pd.testing.assert_frame_equal(case.var, var_before)
    bare = _table(case.X, case.layers["hyperst"], target=None)
    hst.tl.evaluate(bare, inplace=False)
    assert "hyperst" not in bare.uns
    hst.tl.evaluate(bare, key_added="other")  # no uns['other'] yet: created
    assert set(bare.uns["other"]) == {"metrics"} and "other_pcc" in bare.var


def test_metrics_survive_h5ad(tmp_path):
    adata, *_ = _two_slides()
    adata.X[:, 0] = 4  # a constant gene: NaN in var, 0 in PCC@k
    hst.tl.evaluate(adata)
    written = adata.uns["hyperst"]["metrics"]
    adata.write_h5ad(tmp_path / "t.h5ad")
    back = ad.read_h5ad(tmp_path / "t.h5ad")
    read = back.uns["hyperst"]["metrics"]
    assert set(read) == set(written)
    for name, entry in written.items():
        assert set(read[name]) == set(entry)
        for key, value in entry.items():
            if isinstance(value, str) or (isinstance(value, list) and isinstance(value[0], str)):
                assert list(read[name][key]) == list(value)
            else:
                np.testing.assert_allclose(np.asarray(read[name][key], dtype=float), np.asarray(value, dtype=float))
    np.testing.assert_allclose(back.var["hyperst_pcc"], adata.var["hyperst_pcc"])
    assert back.uns["hyperst"]["target"] == "log2"


def test_end_to_end_on_a_held_out_synthetic_slide(tmp_path):
    slides = hst.datasets.synthetic(n_slides=3, n_spots=150, n_genes=60, seed=1)
    # a higher learning rate than the default so that 5 epochs are enough on this tiny problem; one view only
    # (squidpy's features barely change under the dihedral views, and 8 would cost 8x the feature extraction)
    model = hst.tl.fit(
        slides[:2],
        genes=20,
        encoder="squidpy",
        max_epochs=5,
        batch_size=64,
        embed_dim=32,
        lr=3e-3,
        views=1,
        random_state=0,
        cache=tmp_path,
    )
    test = slides[2]
    hst.tl.predict(test, model, cache=tmp_path)
    df = hst.tl.evaluate(test)  # the predictions table `tables['hyperst']` is not taken as input
    table = test.tables["table"]
    assert sorted(df.index) == sorted(model.genes)
    assert table.uns["hyperst"]["metrics"]["pcc_mean"]["pooled"] > 0.2
    assert table.uns["hyperst"]["genes"] == model.genes  # provenance kept next to the metrics
    assert table.var["hyperst_pcc"].notna().sum() == len(model.genes)
    with pytest.raises(KeyError, match=r"Expected `table_key` to name table of spots, found `'nope'`"):
        hst.tl.evaluate(test, table_key="nope")


def test_gene_pearson_is_gene_metrics_pearson_to_the_last_bit():
    from hyperst.tl._evaluate import gene_metrics, gene_pearson

    rng = np.random.default_rng(4)
    measured = rng.poisson(2.0, (500, 12)).astype(np.float32)
    predicted = (measured + rng.standard_normal((500, 12))).astype(np.float32)
    measured[:, 3] = 1.0  # a constant gene: NaN in both
    np.testing.assert_array_equal(gene_pearson(measured, predicted), gene_metrics(measured, predicted)["pearson"])


@pytest.mark.parametrize("order", ["C", "F"])
def test_gene_pearson_by_blocks_of_genes_is_the_whole_array_to_the_last_bit(monkeypatch, order):
    from hyperst.tl import _evaluate
    from hyperst.tl._evaluate import column_blocks, gene_metrics, gene_pearson

    rng = np.random.default_rng(5)
    measured = np.asarray(rng.poisson(2.0, (700, 13)), dtype=np.float32, order=order)
    predicted = np.asarray(measured + rng.standard_normal((700, 13)), dtype=np.float32, order=order)
    measured[:, 6] = 2.0
    monkeypatch.setattr(_evaluate, "COLUMN_BLOCK_BYTES", 8 * 700 * 3)  # blocks of 3 genes, the last of 4
    blocks = column_blocks(*measured.shape)
    assert [b.stop - b.start for b in blocks] == [3, 3, 3, 4]
    np.testing.assert_array_equal(gene_pearson(measured, predicted), gene_metrics(measured, predicted)["pearson"])
