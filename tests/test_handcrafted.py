"""Hand-crafted features: bit for bit what squidpy's ImageContainer computes, faster, with any thread count."""

from __future__ import annotations

import numpy as np
import pytest

from hyperst import settings
from hyperst._data._handcrafted import HANDCRAFTED_N_FEATURES, _resize, handcrafted_features

_QUANTILES = (0.9, 0.5, 0.1)
_PROPS = ("contrast", "dissimilarity", "homogeneity", "correlation", "ASM")
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def _through_squidpy(patches: np.ndarray, size: int = 64) -> np.ndarray:
    """The features as hyperst computed them before (through one ImageContainer per batch): the reference."""
    import squidpy as sq

    n = len(patches)
    rgb = _resize(patches, size)
    grey = np.clip(np.rint(np.einsum("bchw,c->bhw", rgb, np.array([0.299, 0.587, 0.114]))), 0, 255).astype(np.uint8)
    stack = np.concatenate([grey[:, None], rgb], axis=1).transpose(2, 3, 0, 1)  # (y, x, z, channels)
    lids = [str(i) for i in range(n)]
    ic = sq.im.ImageContainer(stack, layer="image", dims=("y", "x", "z", "channels"), library_id=lids)
    n_pixels = float(size * size)
    out = np.empty((n, HANDCRAFTED_N_FEATURES))
    for i, lid in enumerate(lids):
        summary = ic.features_summary("image", library_id=lid, channels=[1, 2, 3], quantiles=_QUANTILES)
        hist = ic.features_histogram("image", library_id=lid, channels=[1, 2, 3], bins=10, v_range=(0, 255))
        texture = ic.features_texture("image", library_id=lid, channels=0, props=_PROPS, angles=_ANGLES)
        row = []
        for c in (1, 2, 3):
            stats = [f"quantile-{q}" for q in _QUANTILES] + ["mean", "std"]
            row += [summary[f"summary_ch-{c}_{s}"] / 255.0 for s in stats]
        row += [hist[f"histogram_ch-{c}_bin-{b}"] / n_pixels for c in (1, 2, 3) for b in range(10)]
        for p in _PROPS:
            a = [texture[f"texture_ch-0_{p}_dist-1_angle-{x:.2f}"] for x in _ANGLES]
            row += [(a[0] + a[2]) / 2, (a[1] + a[3]) / 2]
        out[i] = row
    return out.astype(np.float32)


def _patches(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (12, 3, 96, 96), dtype=np.uint8)
    x[1] = 200  # flat: zero variance, correlation 1 by convention
    x[2, :, :, :48] = 0  # two flat halves
    x[3] = np.clip(rng.normal(180, 6, (3, 96, 96)), 0, 255).astype(np.uint8)  # pale, narrow range
    x[4] = np.linspace(0, 255, 96, dtype=np.uint8)[None, None, :]  # a ramp
    x[5, 0] = 0  # one empty channel
    return x


@pytest.mark.parametrize("workers", [1, 3])
def test_features_are_squidpys_bit_for_bit(monkeypatch, workers):
    monkeypatch.setattr(settings, "read_workers", workers)
    patches = _patches()
    np.testing.assert_array_equal(handcrafted_features(patches), _through_squidpy(patches))
    np.testing.assert_array_equal(handcrafted_features(patches, size=32), _through_squidpy(patches, size=32))


def test_features_of_real_patches_are_squidpys_bit_for_bit(her2st_c3):
    from hyperst._data import PatchReader, slide_layout

    reader = PatchReader(her2st_c3, slide_layout(her2st_c3))
    spot, niche = reader.read(np.arange(0, 180, 9))
    for patches in (spot, niche):
        np.testing.assert_array_equal(handcrafted_features(patches), _through_squidpy(patches))
