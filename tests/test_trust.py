"""Trust in predictions: conformal intervals, per-gene predictability and domain-shift warnings."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import get_transformation

import hyperst as hst
from hyperst._data._target import measured_expression
from hyperst.tl._trust import CALIBRATION_LEVELS, calibration, conformal_bounds

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIT = {"genes": 25, "encoder": "squidpy", "max_epochs": 8, "batch_size": 64, "embed_dim": 64, "random_state": 0}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("trust_features")


@pytest.fixture(scope="module")
def slides():
    return hst.datasets.synthetic(n_slides=3, n_spots=150, n_genes=60, seed=3)


@pytest.fixture(scope="module")
def model(slides, cache):
    return hst.tl.fit(slides[:2], cache=cache, **FIT)


def _hyperst_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "unlike the slides" in str(w.message)]


def _restained(sdata: SpatialData, factor: np.ndarray) -> SpatialData:
    """The same slide with its full-resolution image's optical density scaled per channel (a stain change)."""
    key = next(k for k in sdata.images if k.endswith("full_image"))
    image = sdata.images[key]
    arr = np.asarray(image["scale0"]["image"].values, dtype=np.float64)
    od = -np.log10(np.clip(arr, 1, 255) / 255) * factor[:, None, None]
    new = np.clip(255 * 10 ** (-od), 0, 255).astype(np.uint8)
    parsed = Image2DModel.parse(
        new, dims=("c", "y", "x"), scale_factors=[2, 2], transformations=get_transformation(image, get_all=True)
    )
    shapes = next(iter(sdata.shapes))
    return SpatialData(images={key: parsed}, shapes={shapes: sdata.shapes[shapes]}, tables={"table": sdata["table"]})


def test_split_conformal_covers_exchangeable_residuals():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.2, 2.0, 40)  # genes differ in noise
    truth_cal, truth_test = rng.gamma(2, 1, (400, 40)), rng.gamma(2, 1, (4000, 40))
    pred_cal = truth_cal + rng.normal(0, scale, (400, 40))
    pred_test = truth_test + rng.normal(0, scale, (4000, 40))
    cal = calibration(pred_cal, truth_cal, None)
    assert cal["n"] == 400 and np.asarray(cal["plain"]).shape == (40, len(CALIBRATION_LEVELS))
    for coverage in (0.8, 0.9):
        lower, upper, info = conformal_bounds(pred_test, cal, coverage)
        covered = ((truth_test >= lower) & (truth_test <= upper)).mean()
        assert coverage - 0.02 <= covered <= coverage + 0.03, covered
        assert info["coverage"] == coverage and not info["normalised"]
        assert (lower >= 0).all() and (upper >= lower).all()
    # wider for noisier genes
    width = (upper - lower).mean(0)
    assert np.corrcoef(width, scale)[0, 1] > 0.9


def test_normalised_intervals_scale_with_difficulty():
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(1, 3, 600)
    truth = rng.gamma(2, 1, (600, 5))
    pred = truth + rng.normal(0, 1, (600, 5)) * difficulty[:, None]
    cal = calibration(pred[:300], truth[:300], difficulty[:300])
    assert cal["difficulty"] == "radius" and "normalised" in cal
    lower, upper, info = conformal_bounds(pred[300:] * 0 + 5, cal, 0.9, difficulty[300:])
    assert info["normalised"]
    width = (upper - lower)[:, 0]
    assert np.corrcoef(width, difficulty[300:])[0, 1] > 0.9
    lo, up, _ = conformal_bounds(pred[300:], cal, 0.9, difficulty[300:])
    plain_lo, plain_up, _ = conformal_bounds(pred[300:], cal, 0.9)
    covered = ((truth[300:] >= lo) & (truth[300:] <= up)).mean()
    plain_covered = ((truth[300:] >= plain_lo) & (truth[300:] <= plain_up)).mean()
    assert covered >= 0.85 and plain_covered >= 0.85
    assert (up - lo).mean() < (plain_up - plain_lo).mean()  # the difficulty explains the noise: tighter on average


def test_too_few_calibration_spots_warns():
    cal = calibration(np.zeros((5, 2)), np.ones((5, 2)), None)
    with pytest.warns(UserWarning, match="too few for 90%"):
        lower, upper, info = conformal_bounds(np.zeros((3, 2)), cal, 0.9)
    assert info["level"] == 1.0 and np.allclose(upper, 1.0)


def test_fit_stores_calibration_and_reference(model):
    cal, qc = model.training.calibration, model.training.qc
    assert cal["n"] > 0 and np.asarray(cal["plain"]).shape == (25, len(CALIBRATION_LEVELS))
    assert "normalised" in cal and cal["difficulty_median"] > 0
    assert set(qc["stain_od"]) == set(model.training.slides) and len(qc["feature_distance"]) == 3
    assert len(qc["radius"]) == 3 and qc["radius"][0] <= qc["radius"][2]


def test_predict_writes_intervals_and_gene_reliability(model, slides, cache):
    sdata = copy.deepcopy(slides[2])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        hst.tl.predict(sdata, model, cache=cache)
    assert not _hyperst_warnings(record)  # a slide like the training ones: silent
    table = sdata.tables["table"]
    cols = table.var_names.get_indexer(model.genes)
    pred, lower, upper = (table.layers[k][:, cols] for k in ("hyperst", "hyperst_lower", "hyperst_upper"))
    assert (lower <= pred + 1e-6).all() and (pred <= upper + 1e-6).all()
    others = np.setdiff1d(np.arange(table.n_vars), cols)
    assert np.isnan(table.layers["hyperst_lower"][:, others]).all()
    val_pcc = np.array(model.training.val_pcc, dtype=float)
    np.testing.assert_allclose(table.var["hyperst_val_pcc"].to_numpy()[cols], val_pcc)
    assert np.isnan(table.var["hyperst_val_pcc"].to_numpy()[others]).all()
    np.testing.assert_array_equal(table.var["hyperst_reliable"].to_numpy()[cols], val_pcc >= 0.3)
    uns = table.uns["hyperst"]
    assert uns["intervals"]["coverage"] == 0.9 and uns["qc"]["ok"]
    assert set(uns["qc"]["checks"]) == {"microns_per_pixel", "stain_od", "feature_distance", "radius"}
    out = sdata.tables["hyperst"]
    np.testing.assert_allclose(out.layers["hyperst_upper"], upper)
    # coverage on the held-out synthetic slide, measured on the model's target scale
    measured = measured_expression(table, "table", None, model.config.target, cols)
    covered = ((measured >= lower) & (measured <= upper)).mean()
    assert covered > 0.7, covered


def test_predict_options_for_intervals(model, slides, cache):
    out = hst.tl.predict(slides[2], model, inplace=False, cache=cache, coverage=None)
    assert "hyperst_lower" not in out.layers and "intervals" not in out.uns["hyperst"]
    wide = hst.tl.predict(slides[2], model, inplace=False, cache=cache, coverage=0.95, normalised=True)
    narrow = hst.tl.predict(slides[2], model, inplace=False, cache=cache, coverage=0.5, normalised=True)
    assert wide.uns["hyperst"]["intervals"]["normalised"]
    assert (wide.layers["hyperst_upper"] - wide.X).mean() > (narrow.layers["hyperst_upper"] - narrow.X).mean()
    for bad in (1.5, 0, "0.9"):
        with pytest.raises(ValueError, match="coverage"):
            hst.tl.predict(slides[2], model, inplace=False, cache=cache, coverage=bad)


def test_domain_shift_warnings_name_what_differs(model, slides, cache):
    with pytest.warns(UserWarning, match="unlike the slides") as record:
        out = hst.tl.predict(slides[2], model, inplace=False, cache=cache, microns_per_pixel=2.5)
    assert "pixel size 2.500" in str(record[0].message)
    assert not out.uns["hyperst"]["qc"]["checks"]["microns_per_pixel"]["ok"]

    darker = _restained(slides[2], np.array([1.8, 1.8, 1.1]))
    with pytest.warns(UserWarning, match="stain colour differs") as record:
        out = hst.tl.predict(darker, model, inplace=False, cache=cache)
    assert len(_hyperst_warnings(record)) == 1  # once, naming every failed check
    qc = out.uns["hyperst"]["qc"]
    assert not qc["ok"] and qc["checks"]["stain_od"]["relative_difference"] > 0.25


def test_calibration_by_blocks_of_genes_equals_one_block(monkeypatch):
    from hyperst.tl import _evaluate

    rng = np.random.default_rng(6)
    truth = rng.poisson(3.0, (400, 9)).astype(np.float32)
    pred = (truth + rng.standard_normal((400, 9))).astype(np.float32)
    difficulty = rng.gamma(2.0, 1.0, 400)
    whole = calibration(pred, truth, difficulty)
    monkeypatch.setattr(_evaluate, "COLUMN_BLOCK_BYTES", 8 * 400 * 2)  # blocks of 2 genes, the last of 3
    assert calibration(pred, truth, difficulty) == whole
    assert len(whole["plain"]) == len(whole["normalised"]) == 9
