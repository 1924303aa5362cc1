"""``readout="blend"``: the ridge read-out fitted inside ``tl.fit`` and mixed with the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hyperst as hst
from hyperst.nn import HyperSTModule, ModuleConfig
from hyperst.tl._readout import ALPHAS, ridge_gcv

FIT = {"genes": 30, "encoder": "squidpy", "max_epochs": 6, "batch_size": 64, "embed_dim": 64, "random_state": 0}


@pytest.fixture(scope="module")
def slides():
    return hst.datasets.synthetic(n_slides=3, n_spots=200, n_genes=80, seed=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("readout_features")


@pytest.fixture(scope="module")
def blended(slides, cache):
    return hst.tl.fit(slides[:2], cache=cache, readout="blend", **FIT)


def test_ridge_from_chunks_matches_scikit_learn_ridgecv():
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 30))
    y = x @ rng.normal(size=(30, 5)) + 3 * rng.normal(size=(400, 5)) + 2.0
    fit = ridge_gcv([(x[:150], y[:150]), (x[150:], y[150:])])
    ref = RidgeCV(alphas=ALPHAS).fit(x, y)
    assert fit.alpha == pytest.approx(ref.alpha_)
    np.testing.assert_allclose(fit.weight, ref.coef_.T, atol=1e-8)
    np.testing.assert_allclose(fit.bias, ref.intercept_, atol=1e-8)


def test_blend_module_mixes_decoder_and_ridge():
    torch.manual_seed(0)
    module = HyperSTModule(8, 3, ModuleConfig(embed_dim=16, readout="blend")).eval()
    spot, niche = torch.randn(5, 8), torch.randn(5, 8)
    decoder = module._decode(*module._image_features(spot, niche))
    torch.testing.assert_close(module.predict(spot, niche), decoder)  # mix 1 until set
    weight, bias = torch.randn(16, 3), torch.randn(3)
    module.set_readout(weight, bias, 0.25)
    ridge = torch.cat([spot, niche], dim=1) @ weight + bias  # identity standardisation
    torch.testing.assert_close(module.predict(spot, niche), 0.25 * decoder + 0.75 * ridge)
    with pytest.raises(ValueError, match="weight"):
        module.set_readout(torch.zeros(8, 3), bias, 0.5)
    with pytest.raises(ValueError, match="mix"):
        module.set_readout(weight, bias, 1.5)
    with pytest.raises(ValueError, match="readout='blend'"):
        HyperSTModule(8, 3, ModuleConfig(embed_dim=16)).set_readout(weight, bias, 0.5)
    with pytest.raises(ValueError, match="readout"):
        ModuleConfig(readout="ridge")


def test_fit_with_blend_chooses_the_mix_on_validation_and_never_worsens_it(blended, slides, cache):
    plain = hst.tl.fit(slides[:2], cache=cache, **FIT)
    mix = float(blended.module.readout_mix)
    assert 0.0 <= mix <= 1.0
    assert blended.training.best_epoch == plain.training.best_epoch  # training itself is unchanged
    assert blended.module.readout_weight.abs().sum() > 0
    # the validation record is the blend's; mix 1 (the decoder alone) was a candidate, so it is no worse
    assert blended.training.val_mean_pcc is not None
    test = slides[2]
    a = hst.tl.predict(test, plain, inplace=False, cache=cache).X
    b = hst.tl.predict(test, blended, inplace=False, cache=cache).X
    assert np.isfinite(b).all()
    if mix < 1.0:
        assert not np.allclose(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_blend_model_file_round_trip(blended, slides, cache, tmp_path):
    path = blended.save(tmp_path / "model")
    loaded = hst.HyperST.load(path)
    assert loaded.config.module.readout == "blend"
    assert float(loaded.module.readout_mix) == float(blended.module.readout_mix)
    before = hst.tl.predict(slides[2], blended, inplace=False, cache=cache).X
    after = hst.tl.predict(slides[2], loaded, inplace=False, cache=cache).X
    np.testing.assert_array_equal(before, after)


def test_mix_is_the_grid_point_of_lowest_validation_error():
    from hyperst.tl._readout import MIXES, _choose_mix

    rng = np.random.default_rng(1)
    target = rng.normal(size=(50, 4))
    decoder, ridge = target + rng.normal(size=(50, 4)), target + 0.5 * rng.normal(size=(50, 4))
    mix = _choose_mix(decoder, ridge, target)
    errors = {m: np.mean((m * decoder + (1 - m) * ridge - target) ** 2) for m in MIXES}
    assert errors[mix] == min(errors.values())
    assert 0.0 < mix < 0.5  # the less noisy ridge gets the larger share
    assert _choose_mix(target, ridge, target) == 1.0  # a perfect decoder is kept alone


def test_the_refit_trains_without_the_validation_arrays(slides, cache, monkeypatch):
    import gc
    import weakref

    from hyperst.tl import _training

    held, seen = [], []
    validate, train_run = _training._validate, _training.train_run

    def keeping(*args, **kwargs):
        out = validate(*args, **kwargs)
        held.extend(weakref.ref(a) for a in (out.pred, out.target))
        return out

    def watching(train_part, val_part, *args, **kwargs):
        if not val_part:  # the refit: what the held-out run validated on is summarised and gone
            gc.collect()
            seen.append([r() is None for r in held])
        return train_run(train_part, val_part, *args, **kwargs)

    monkeypatch.setattr(_training, "_validate", keeping)
    monkeypatch.setattr(_training, "train_run", watching)
    model = hst.tl.fit(slides[:2], cache=cache, readout="blend", **FIT)
    assert seen == [[True, True]]
    assert model.training.calibration["n"] > 0 and model.training.val_mean_pcc is not None
