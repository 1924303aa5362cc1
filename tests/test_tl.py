"""`hst.tl.fit` / `hst.tl.predict` / `hst.tl.poincare` on synthetic slides (keys, geometry, reproducibility)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import hyperst as hst
from hyperst import lorentz

FIT = {"genes": 30, "encoder": "squidpy", "max_epochs": 12, "batch_size": 64, "embed_dim": 64, "random_state": 0}


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session")
def slides():
    return hst.datasets.synthetic(n_slides=3, n_spots=200, n_genes=80, seed=1)


@pytest.fixture(scope="session")
def model(slides, feature_cache):
    return hst.tl.fit(slides[:2], cache=feature_cache, **FIT)


@pytest.fixture
def test_slide(slides):
    return copy.deepcopy(slides[2])


def _pcc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    with np.errstate(invalid="ignore"):
        return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


def test_fit_returns_a_trained_model(model, slides):
    assert isinstance(model, hst.HyperST)
    assert len(model.genes) == 30
    assert model.config.module.embed_dim == 64
    assert 0.1 <= model.curvature <= 10
    assert len(model.history) >= 1 and "val_loss" in model.history[0] and "train_mse" in model.history[0]
    assert model.training.validation_slides and len(model.training.val_pcc) == 30
    assert model.training.technology == ("visium",)
    assert model.training.microns_per_pixel["synthetic_0"] == pytest.approx(1.0)
    # slides are not modified by fitting
    assert "hyperst_connectivities" not in slides[0].tables["table"].obsp
    assert "hyperst" not in slides[0].tables


def test_predict_writes_every_documented_key(model, test_slide, feature_cache):
    hst.tl.predict(test_slide, model, cache=feature_cache)
    table = test_slide.tables["table"]
    n = table.n_obs
    e = model.config.module.embed_dim
    for key in ("X_hyperst", "X_hyperst_niche", "X_hyperst_gene", "X_hyperst_gene_niche"):
        assert table.obsm[key].shape == (n, e + 1) and table.obsm[key].dtype == np.float32
    assert table.obsm["X_hyperst_poincare"].shape == (n, 2)
    assert (np.linalg.norm(table.obsm["X_hyperst_poincare"], axis=1) < 1).all()
    assert (table.obs["hyperst_radius"] > 0).all()
    assert table.obsp["hyperst_connectivities"].shape == (n, n)
    layer = table.layers["hyperst"]
    assert layer.shape == table.shape
    predicted = table.var["hyperst_predicted"].to_numpy()
    assert predicted.sum() == 30
    assert np.isnan(layer[:, ~predicted]).all() and np.isfinite(layer[:, predicted]).all()
    prov = table.uns["hyperst"]
    assert prov["genes"] == model.genes and prov["curvature"] == pytest.approx(model.curvature)
    assert prov["microns_per_pixel"] == pytest.approx(1.0) and prov["spot_patch_um"] == 112
    pred_table = test_slide.tables["hyperst"]
    assert list(pred_table.var_names) == model.genes
    np.testing.assert_allclose(pred_table.X, layer[:, table.var_names.get_indexer(model.genes)])
    # the prediction table annotates the same spots
    assert pred_table.uns["spatialdata_attrs"]["region"] == "synthetic_2"


def test_embeddings_lie_on_the_hyperboloid(model, test_slide, feature_cache):
    hst.tl.predict(test_slide, model, cache=feature_cache)
    table = test_slide.tables["table"]
    for key in ("X_hyperst", "X_hyperst_niche", "X_hyperst_gene", "X_hyperst_gene_niche"):
        x = torch.from_numpy(table.obsm[key]).double()
        residual = lorentz.hyperboloid_residual(x, model.curvature)
        assert residual.abs().max() < 1e-4 * (1 + x[:, 0].max() ** 2)
    radius = lorentz.dist0(torch.from_numpy(table.obsm["X_hyperst"][:, 1:]).double(), model.curvature)
    np.testing.assert_allclose(table.obs["hyperst_radius"], radius.numpy(), rtol=1e-4)


def test_predictions_follow_the_measured_counts(model, test_slide, feature_cache):
    hst.tl.predict(test_slide, model, cache=feature_cache)
    table = test_slide.tables["table"]
    truth = np.log2(1 + table[:, model.genes].X.toarray())
    pcc = _pcc(test_slide.tables["hyperst"].X, truth)
    assert np.nanmean(pcc) > 0.3


def test_inplace_false_leaves_the_input_untouched(model, test_slide, feature_cache):
    before = test_slide.tables["table"].copy()
    tables_before = set(test_slide.tables)
    result = hst.tl.predict(test_slide, model, inplace=False, cache=feature_cache)
    assert set(test_slide.tables) == tables_before
    after = test_slide.tables["table"]
    assert set(after.obsm) == set(before.obsm) and set(after.layers) == set(before.layers)
    assert set(after.obs.columns) == set(before.obs.columns) and set(after.uns) == set(before.uns)
    assert result.shape == (before.n_obs, 30)
    assert "X_hyperst" in result.obsm and "hyperst_radius" in result.obs


def test_predict_without_counts_and_key_added(model, test_slide):
    table = test_slide.tables["table"]
    table.X = table.X.toarray() * 0.5 + 0.25  # not counts any more: gene embeddings are skipped, images still work
    hst.tl.predict(test_slide, model, key_added="hst2", cache=False)
    assert "X_hst2" in table.obsm and "X_hst2_gene" not in table.obsm
    assert "hst2" in table.layers and "hst2" in test_slide.tables


def test_cpu_fit_is_reproducible(slides, feature_cache, model):
    again = hst.tl.fit(slides[:2], cache=feature_cache, **FIT)
    for (k, a), b in zip(model.module.state_dict().items(), again.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_refit_trains_on_all_slides_for_the_chosen_epochs(slides, feature_cache, model):
    training = model.training
    assert training.refit_epochs == training.best_epoch + 1 == len(training.refit_history)
    assert all("val_loss" not in row for row in training.refit_history)  # nothing held out in the refit
    no_refit = hst.tl.fit(slides[:2], cache=feature_cache, refit=False, **FIT)
    assert no_refit.training.refit_epochs is None and no_refit.training.refit_history is None
    # the held-out run is the same, so the validation scores are too; the weights are not
    assert no_refit.training.val_pcc == training.val_pcc
    assert no_refit.history == model.history
    w, w_no = model.module.decoder[-1].weight, no_refit.module.decoder[-1].weight
    assert not torch.equal(w, w_no)
    # the refit model saw the validation slide's spots: its feature statistics include them
    assert not torch.equal(model.module.feature_shift, no_refit.module.feature_shift)


def test_early_stopping_watches_the_chosen_validation_metric(slides, feature_cache, model):
    def argmin(history, key):
        return int(np.argmin([row[key] for row in history]))

    assert model.training.best_epoch == argmin(model.history, "val_loss")
    by_mse = hst.tl.fit(slides[:2], cache=feature_cache, refit=False, monitor="mse", **FIT)
    assert by_mse.config.monitor == "mse"
    assert by_mse.training.best_epoch == argmin(by_mse.history, "val_mse")
    n = min(len(by_mse.history), len(model.history))  # the same run; only the epoch kept (and the stop) differ
    assert by_mse.history[:n] == model.history[:n]
    with pytest.raises(ValueError, match="Expected `monitor` to be 'loss' or 'mse'"):
        hst.HyperSTConfig.build(None, monitor="pcc")


def test_decoder_norm_switch(slides, feature_cache, model):
    assert isinstance(model.module.decoder[0].output_norm, torch.nn.Identity)
    normed = hst.tl.fit(slides[:2], cache=feature_cache, **{**FIT, "max_epochs": 1}, decoder_norm=True)
    assert isinstance(normed.module.decoder[0].output_norm, torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="decoder_norm"):
        hst.HyperSTConfig.build(None, decoder_norm="yes")


def test_poincare_tool(model, test_slide, feature_cache):
    hst.tl.predict(test_slide, model, cache=feature_cache)
    table = test_slide.tables["table"]
    disk, radius = hst.tl.poincare(test_slide, inplace=False)
    np.testing.assert_allclose(disk, table.obsm["X_hyperst_poincare"], atol=1e-6)
    # the disk radius is a monotone function of the geodesic radius
    order = np.argsort(radius)
    assert np.all(np.diff(np.linalg.norm(disk, axis=1)[order]) >= -1e-6)
    with pytest.raises(KeyError, match=r"Run `hyperst.tl.predict` first"):
        hst.tl.poincare(test_slide, basis="other")


def test_fit_arguments_are_checked(slides):
    with pytest.raises(TypeError, match="Unknown option"):
        hst.tl.fit(slides[:2], encoder="squidpy", max_epoch=3)
    with pytest.raises(ValueError, match="Expected `views` to be an integer from 1 to 8"):
        hst.tl.fit(slides[:2], encoder="squidpy", views=9)
    with pytest.raises(KeyError, match="requested genes are missing"):
        hst.tl.fit(slides[:2], encoder="squidpy", genes=["SYN0001", "NOPE"])
    with pytest.raises(TypeError, match="non-empty list"):
        hst.tl.fit([], encoder="squidpy")


def test_image_only_slide_is_tiled_and_predicted(model, slides):
    """H&E alone: tile the tissue with virtual spots, then predict whole-slide expression maps."""
    sdata = copy.deepcopy(slides[2])
    del sdata.tables["table"]
    del sdata.shapes["synthetic_2"]
    hst.pp.tile(sdata, microns_per_pixel=1.0)
    hst.tl.predict(sdata, model, table_key="hyperst_tiles", cache=False)
    tiles = sdata.tables["hyperst_tiles"]
    pred = sdata.tables["hyperst"]
    assert pred.n_obs == tiles.n_obs > 100
    assert list(pred.var_names) == model.genes and np.isfinite(pred.X).all()
    assert tiles.obsm["X_hyperst"].shape == (tiles.n_obs, model.config.module.embed_dim + 1)
    assert "X_hyperst_gene" not in tiles.obsm  # no counts on an image-only slide
    assert "hyperst" not in tiles.layers  # a table without genes gets no layer; the predictions table has them
    # tissue domains still show: predicted domain genes differ between the slide's domains
    assert pred.X.std(0).mean() > 0.05


@pytest.mark.slow
def test_fit_runs_under_ddp_on_two_cpu_processes(slides, feature_cache):
    """Lightning DDP (forked CPU workers, gloo): training runs and the trained weights come back."""
    ddp = hst.tl.fit(
        slides[:2],
        cache=feature_cache,
        accelerator="cpu",
        devices=2,
        strategy="ddp_notebook",
        **{**FIT, "max_epochs": 3},
    )
    torch.manual_seed(FIT["random_state"])  # fit builds its module right after this seed
    init = type(ddp.module)(ddp.module.n_features, len(ddp.genes), ddp.config.module).state_dict()
    trained = ddp.module.state_dict()
    changed = [k for k in init if "feature_" not in k and not torch.equal(init[k], trained[k])]
    assert len(changed) > len(init) // 2
    pred = hst.tl.predict(slides[2], ddp, inplace=False, cache=feature_cache).X
    assert np.isfinite(pred).all()


def test_interrupted_fit_resumes_from_its_checkpoint(slides, feature_cache, tmp_path, monkeypatch):
    from hyperst import _train

    kw = {**FIT, "max_epochs": 6, "patience": 50, "cache": feature_cache, "checkpoint_dir": tmp_path / "ckpt"}
    original = _train._Recorder.on_train_epoch_end

    def crash_at_epoch_3(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if trainer.current_epoch == 3:
            msg = "simulated crash"
            raise RuntimeError(msg)

    monkeypatch.setattr(_train._Recorder, "on_train_epoch_end", crash_at_epoch_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        hst.tl.fit(slides[:2], **kw)
    monkeypatch.setattr(_train._Recorder, "on_train_epoch_end", original)
    assert (tmp_path / "ckpt" / "select" / "last.ckpt").is_file()
    with pytest.raises(ValueError, match="resume=True"):  # a folder with checkpoints is never silently reused
        hst.tl.fit(slides[:2], **kw)
    with pytest.raises(ValueError, match="other data, genes or settings"):
        hst.tl.fit(slides[:2], **{**kw, "genes": 20}, resume=True)
    resumed = hst.tl.fit(slides[:2], **kw, resume=True)
    # epochs 0-2 were checkpointed before the crash (3 ran but its checkpoint came after the crash), then 3-5 ran
    assert [row["epoch"] for row in resumed.history] == list(range(6))
    uninterrupted = hst.tl.fit(slides[:2], **{**kw, "checkpoint_dir": None})
    for a, b in zip(resumed.history[:3], uninterrupted.history[:3], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert resumed.training.refit_epochs == resumed.training.best_epoch + 1
    # both runs finished: resuming again trains nothing and returns the same model
    again = hst.tl.fit(slides[:2], **kw, resume=True)
    assert again.history == resumed.history
    assert torch.equal(again.module.decoder[-1].weight, resumed.module.decoder[-1].weight)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        hst.tl.fit(slides[:2], **{**kw, "checkpoint_dir": None}, resume=True)


def test_fit_leaves_the_callers_random_generators_as_they_were(slides, feature_cache):
    import os
    import random

    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state())
    hst.tl.fit(slides[:2], cache=feature_cache, **{**FIT, "max_epochs": 1, "random_state": 5})
    after = (random.getstate(), np.random.get_state()[1], torch.random.get_rng_state())
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    assert torch.equal(after[2], before[2])
    assert {k: os.environ.get(k) for k in env} == env
    # and the streams go on as if fit had not run
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
