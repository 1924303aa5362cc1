"""Real HER2ST sections from ../shared/data (skipped cleanly when that folder is absent)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from hyperst._data import PatchReader, as_spatialdata, slide_layout


def _non_white(patches: np.ndarray) -> np.ndarray:
    """Fraction of pixels per patch that are not background (any channel well below white)."""
    return (patches.min(axis=1) < 200).mean(axis=(1, 2))


def test_her2st_layout_matches_the_published_scale(her2st_dir, her2st_c3):
    slides = pd.read_csv(her2st_dir / "slides.csv").set_index("slide")
    layout = slide_layout(her2st_c3)
    assert layout.technology == "st"
    assert layout.grid.n_neighbors == 4
    # µm/px from the 100 µm spot diameter agrees with the fit on the 200 µm pitch within 1 %
    assert layout.microns_per_pixel == pytest.approx(float(slides.loc["C3", "microns_per_pixel"]), rel=0.01)
    table = her2st_c3.tables["table"]
    np.testing.assert_allclose(layout.centres_px, table.obsm["spatial"])


def test_her2st_patches_contain_tissue(her2st_c3):
    layout = slide_layout(her2st_c3)
    reader = PatchReader(her2st_c3, layout)
    spot_side, niche_side = reader.sides
    assert spot_side * layout.microns_per_pixel == pytest.approx(112)
    assert niche_side * layout.microns_per_pixel == pytest.approx(2 * (200 + 50), rel=0.02)
    idx = np.linspace(0, len(reader) - 1, 24).astype(int)
    spot, niche = reader.read(idx)
    assert spot.shape == niche.shape == (24, 3, 224, 224)
    assert np.median(_non_white(spot)) > 0.5
    # H&E: red channel above green on average (pink/purple stain), unlike grey background
    assert spot[:, 0].mean() > spot[:, 1].mean() + 10
    # the glass in the slide's corner, far from every spot, is background
    image = her2st_c3.images["C3_he"]["scale0"]["image"]
    glass = np.asarray(image[:, 100:300, 100:300])
    assert _non_white(glass[None])[0] < _non_white(spot).min()


def test_her2st_legacy_anndata_is_accepted(her2st_dir):
    adata = ad.read_h5ad(her2st_dir / "C3.h5ad")
    sdata = as_spatialdata(adata)
    layout = slide_layout(sdata)
    scalef = adata.uns["spatial"]["C3"]["scalefactors"]["tissue_lowres_scalef"]
    np.testing.assert_allclose(layout.centres_px, adata.obsm["spatial"] * scalef, rtol=1e-6)
    assert layout.technology == "st"
    assert layout.microns_per_pixel == pytest.approx(0.688 / scalef, rel=0.02)


@pytest.mark.parametrize("section", ["B4", "C2", "C3", "C4", "C5", "C6"])
def test_every_her2st_section_is_detected_as_legacy_st(her2st_dir, section):
    from hyperst._data import detect_grid

    adata = ad.read_h5ad(her2st_dir / f"{section}.h5ad")
    grid = detect_grid(np.asarray(adata.obsm["spatial"], dtype=float))
    assert (grid.kind, grid.n_neighbors) == ("square", 4)
    # the jittered spot positions still give the 200 µm pitch at about 0.688 µm/px (±5 %)
    assert grid.pitch * 0.688 == pytest.approx(200, rel=0.05)


@pytest.fixture(scope="module")
def her2st_sections(her2st_dir):
    from conftest import her2st_slide

    return {s: her2st_slide(s, her2st_dir) for s in ["B4", "C2", "C4", "C5", "C6", "C3"]}


def _shuffled(sdata, seed: int):
    """The same slide with its count rows permuted across spots: images no longer match expression."""
    from spatialdata import SpatialData

    table = sdata.tables["table"].copy()
    table.X = table.X[np.random.default_rng(seed).permutation(table.n_obs)]
    return SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": table})


def _mean_pcc(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred - pred.mean(0), truth - truth.mean(0)
    with np.errstate(invalid="ignore"):
        return float(np.nanmean((p * t).sum(0) / np.sqrt((p**2).sum(0) * (t**2).sum(0))))


def test_her2st_held_out_section_beats_a_shuffled_control(her2st_sections, tmp_path_factory):
    """Fit on five sections, predict the sixth: far better than a model fitted on spot-shuffled counts."""
    import hyperst as hst

    cache = tmp_path_factory.mktemp("her2st_features")
    train = [her2st_sections[s] for s in ["B4", "C2", "C4", "C5", "C6"]]
    kw = {"encoder": "squidpy", "max_epochs": 40, "batch_size": 64, "cache": cache, "random_state": 0}
    model = hst.tl.fit(train, genes=50, **kw)
    control = hst.tl.fit([_shuffled(s, i) for i, s in enumerate(train)], genes=model.genes, **kw)
    test = her2st_sections["C3"]
    truth = np.log2(1 + test.tables["table"][:, model.genes].X.toarray())
    real = _mean_pcc(hst.tl.predict(test, model, inplace=False, cache=cache).X, truth)
    shuffled = _mean_pcc(hst.tl.predict(test, control, inplace=False, cache=cache).X, truth)
    print(f"held-out C3 mean PCC: {real:.3f} (shuffled-count control {shuffled:.3f})")
    assert real > 0.3
    assert real > shuffled + 0.2
