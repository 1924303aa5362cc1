"""Faults during work: a diverging or broken fit stops with its likely cause; files go only where the user says."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch

import hyperst as hst

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIT = {"genes": 20, "encoder": "squidpy", "max_epochs": 3, "embed_dim": 16, "random_state": 0}


@pytest.fixture(scope="module")
def slides():
    return hst.datasets.synthetic(n_slides=2, n_spots=120, n_genes=40, seed=3)


class _NaNEncoder(torch.nn.Module):
    """A custom encoder whose features are NaN for the first image of every batch."""

    n_features = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.mean((2, 3)).repeat(1, 3)[:, : self.n_features].clone()
        out[0] = float("nan")
        return out


def test_a_diverging_fit_stops_naming_the_likely_cause(slides):
    with pytest.raises(FloatingPointError, match=r"loss became .* at epoch 0\. Likely causes: a learning rate"):
        hst.tl.fit(slides, **(FIT | {"lr": 1e6}), cache=False)


def test_non_finite_encoder_features_are_refused_and_not_cached(slides, tmp_path):
    with pytest.raises(ValueError, match=r"encoder `custom:_NaNEncoder` gave non-finite features for \d+ of 120"):
        hst.tl.fit(slides, **(FIT | {"encoder": _NaNEncoder()}), cache=tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_files_go_only_to_the_folders_named(slides, tmp_path, monkeypatch):
    """Feature caches under `settings.cache_dir`, the model where `save` is told; nothing in cwd, HOME or /tmp."""
    places = {name: tmp_path / name for name in ("cwd", "home", "tmp", "cache")}
    for p in places.values():
        p.mkdir()
    monkeypatch.chdir(places["cwd"])
    monkeypatch.setenv("HOME", str(places["home"]))
    monkeypatch.setattr(tempfile, "tempdir", str(places["tmp"]))
    monkeypatch.setattr(hst.settings, "cache_dir", places["cache"])
    train, test = slides
    model = hst.tl.fit([train], **FIT)  # cache=True: under settings.cache_dir
    hst.tl.predict(test, model)
    model.save(tmp_path / "model")
    for name in ("cwd", "home", "tmp"):
        assert not list(places[name].rglob("*")), f"{name}: {list(places[name].rglob('*'))}"
    assert any(p.is_file() for p in places["cache"].rglob("*"))
    assert (tmp_path / "model" / "config.json").is_file()


def test_same_random_state_gives_identical_cpu_predictions(slides, tmp_path):
    train, test = slides
    runs = []
    for _ in range(2):
        model = hst.tl.fit([train], **FIT, cache=tmp_path)
        runs.append(hst.tl.predict(test, model, inplace=False, cache=tmp_path))
    np.testing.assert_array_equal(runs[0].X, runs[1].X)
    np.testing.assert_array_equal(runs[0].obsm["X_hyperst"], runs[1].obsm["X_hyperst"])
    other = hst.tl.predict(test, hst.tl.fit([train], **(FIT | {"random_state": 1}), cache=tmp_path), inplace=False)
    assert not np.array_equal(runs[0].X, other.X)
