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
