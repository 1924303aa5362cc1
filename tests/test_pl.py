"""`hst.pl.*` on a tiny real fit: what is drawn (axes, artists, labels), never pixels; the data stay untouched."""

from __future__ import annotations

import dataclasses
import warnings

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PatchCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Circle

import hyperst as hst
from hyperst.tl._poincare import poincare_coordinates

matplotlib.use("Agg")  # no display: draw off-screen

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIT = {"genes": 12, "encoder": "squidpy", "max_epochs": 3, "batch_size": 32, "embed_dim": 16, "random_state": 0}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A model fitted on one tiny synthetic slide, and a second slide with predictions, projections, scores."""
    train, test = hst.datasets.synthetic(n_slides=2, n_spots=80, n_genes=20, seed=0)
    cache = tmp_path_factory.mktemp("features")
    model = hst.tl.fit([train], cache=cache, **FIT)
    hst.tl.predict(test, model, cache=cache)
    hst.tl.poincare(test, streams=True)
    hst.tl.evaluate(test)
    return model, test


@pytest.fixture
def model(fitted):
    return fitted[0]


@pytest.fixture
def sdata(fitted):
    return fitted[1]


@pytest.fixture
def table(sdata):
    return sdata.tables["table"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _snapshot(sdata) -> dict:
    """What a plot must leave as it found it: elements, and each table's columns, dtypes and slots."""
    snap = {"elements": {k: sorted(getattr(sdata, k)) for k in ("images", "shapes", "tables")}}
    for key, t in sdata.tables.items():
        snap[key] = (
            t.obs.dtypes.to_dict(),
            t.var.dtypes.to_dict(),
            sorted(t.uns),
            {k: sorted(v) if isinstance(v, dict) else None for k, v in t.uns.items()},
            sorted(t.obsm),
            sorted(t.layers),
        )
    for key, s in sdata.shapes.items():
        snap[f"shapes:{key}"] = list(s.columns)
    return snap


def _predicted_genes(table) -> list[str]:
    return list(table.var_names[table.var["hyperst_predicted"].to_numpy()])


# ---------------------------------------------------------------- tl.poincare(streams=True), read by pl.poincare
def test_poincare_streams_share_one_projection(table):
    keys = [
        "X_hyperst_poincare",
        "X_hyperst_niche_poincare",
        "X_hyperst_gene_poincare",
        "X_hyperst_gene_niche_poincare",
    ]
    streams = table.uns["hyperst"]["poincare_streams"]
    assert list(streams.values()) == keys
    lorentz = [table.obsm[k] for k in ("X_hyperst", "X_hyperst_niche", "X_hyperst_gene", "X_hyperst_gene_niche")]
    disk, radius = poincare_coordinates(np.concatenate(lorentz), table.uns["hyperst"]["curvature"])
    n = table.n_obs
    for i, key in enumerate(keys):
        np.testing.assert_allclose(table.obsm[key], disk[i * n : (i + 1) * n], atol=1e-6)
    np.testing.assert_allclose(table.obs["hyperst_radius"], radius[:n], rtol=1e-6)
    # without writing, the same arrays come back and nothing changes
    before = {k: table.obsm[k].copy() for k in keys}
    out = hst.tl.poincare(table.copy(), streams=True, inplace=False)
    assert sorted(out) == sorted([*keys, "hyperst_radius"])
    for k in keys:
        np.testing.assert_allclose(out[k], before[k])


def test_poincare_without_streams_drops_the_stale_stream_projections(table):
    adata = table.copy()
    hst.tl.poincare(adata)
    assert "poincare_streams" not in adata.uns["hyperst"]
    assert "X_hyperst_niche_poincare" not in adata.obsm and "X_hyperst_poincare" in adata.obsm
    assert "metrics" in adata.uns["hyperst"]  # the rest of the provenance stays
    with pytest.raises(KeyError, match=r"poincare_streams.*Run `hyperst.tl.poincare\(sdata, basis='hyperst', streams"):
        hst.pl.poincare(adata, hierarchy=True, show=False)


# ---------------------------------------------------------------- pl.poincare
def test_poincare_draws_the_disk(sdata, table):
    before = _snapshot(sdata)
    ax = hst.pl.poincare(sdata, color="hyperst_radius", show=False)
    assert isinstance(ax, Axes)
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    assert len(circles) == 1 and circles[0].get_radius() == 1.0 and tuple(circles[0].center) == (0.0, 0.0)
    assert ax.get_xlim() == (-1.05, 1.05) and ax.get_ylim() == (-1.05, 1.05)
    assert ax.get_aspect() == 1.0
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 1
    drawn = np.asarray(points[0].get_offsets())
    expected = table.obsm["X_hyperst_poincare"]
    np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(expected, axis=0), atol=1e-6)  # scanpy reorders
    assert len(np.unique(points[0].get_array())) > 1  # coloured by the radius
    assert len(ax.figure.axes) == 2  # the disk and its colorbar
    assert _snapshot(sdata) == before


def test_poincare_hierarchy_overlay(sdata, table):
    before = _snapshot(sdata)
    ax = hst.pl.poincare(sdata, color="domain", hierarchy=True, n_lines=10, show=False)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["spot image", "niche image", "spot gene", "niche gene", "image ⊒ gene", "spot ⊒ niche"]
    domains = [a for a in ax.artists if isinstance(a, Legend)]  # scanpy's categorical legend is kept
    assert len(domains) == 1
    assert {t.get_text() for t in domains[0].get_texts()} == set(table.obs["domain"].astype(str))
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [len(c.get_segments()) for c in lines] == [20, 20]  # two parent-child pairs x 10 spots, per relation
    overlay = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label() in labels]
    assert [len(c.get_offsets()) for c in overlay] == [10, 10, 10, 10]
    assert len({tuple(c.get_facecolor()[0]) for c in overlay}) == 4
    # each segment of the first relation joins a spot's image embedding to its gene embedding
    first = np.asarray(lines[0].get_segments())[:10]
    for end, key in ((first[:, 0], "X_hyperst_poincare"), (first[:, 1], "X_hyperst_gene_poincare")):
        dist = np.linalg.norm(end[:, None] - table.obsm[key][None], axis=-1)
        assert dist.min(1).max() < 1e-6
        if key == "X_hyperst_poincare":
            spots = dist.argmin(1)
        else:
            np.testing.assert_array_equal(dist.argmin(1), spots)  # the same spot at both ends
    assert _snapshot(sdata) == before
    assert table.obs["domain"].dtype == before["table"][0]["domain"]


def test_poincare_on_anndata_into_given_axes(table):
    fig, given = plt.subplots()
    ax = hst.pl.poincare(table, ax=given)  # show=None with an Axes given: nothing shown, the Axes returned
    assert ax is given
    axes = hst.pl.poincare(table, color=["hyperst_radius", "domain"], show=False)
    assert isinstance(axes, list) and len(axes) == 2
    assert all(any(isinstance(p, Circle) for p in a.patches) for a in axes)


def test_poincare_errors(sdata, table):
    with pytest.raises(KeyError, match=r"'X_other_poincare'.*Run `hyperst.tl.poincare\(sdata, basis='other'\)` first"):
        hst.pl.poincare(sdata, basis="other", show=False)
    with pytest.raises(TypeError, match=r"takes no \['save'\] argument"):
        hst.pl.poincare(sdata, save="disk.png")
    with pytest.raises(ValueError, match=r"Expected `n_lines` to be a positive integer, found `0`"):
        hst.pl.poincare(sdata, hierarchy=True, n_lines=0)
    with pytest.raises(KeyError, match=r"Expected `table_key` to name|not found in `sdata.tables`"):
        hst.pl.poincare(sdata, table_key="nope")


# ---------------------------------------------------------------- pl.spatial
def test_spatial_measured_beside_predicted(sdata, table):
    genes = _predicted_genes(table)[:2]
    before = _snapshot(sdata)
    fig = hst.pl.spatial(sdata, genes, show=False)
    assert isinstance(fig, Figure)
    panels, colorbars = fig.axes[:4], fig.axes[4:]
    assert [a.get_title() for a in panels] == [f"{g}: {k}" for g in genes for k in ("measured", "predicted")]
    for a in panels:
        assert len(a.images) == 1  # the H&E
        spots = [c for c in a.collections if isinstance(c, PatchCollection)]
        assert len(spots) == 1 and len(spots[0].get_paths()) == table.n_obs
    assert [c.get_ylabel() for c in colorbars] == ["log2(1 + counts)"] * 2
    for row in (panels[:2], panels[2:]):  # one colour scale per gene
        norms = [next(c for c in a.collections if isinstance(c, PatchCollection)).norm for a in row]
        assert norms[0].vmin == norms[1].vmin and norms[0].vmax == norms[1].vmax
    # the predicted panel shows the predictions, on that scale
    g = table.var_names.get_loc(genes[0])
    pred = table.layers["hyperst"][:, g]
    norm = norms[0]
    assert norm.vmin <= pred.min() and pred.max() <= norm.vmax
    assert _snapshot(sdata) == before


def test_spatial_without_counts_shows_predictions_only(sdata, table):
    from spatialdata import SpatialData

    no_counts = table.copy()
    no_counts.X = None
    slide = SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": no_counts})
    genes = _predicted_genes(table)[:2]
    fig = hst.pl.spatial(slide, genes, show=False)
    assert [a.get_title() for a in fig.axes[:2]] == [f"{g}: predicted" for g in genes]
    assert len(fig.axes) == 4  # two panels, two colorbars


def test_spatial_image_only_slide_reads_the_prediction_table(sdata, table):
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    spots = ad.AnnData(obs=table.obs[["region", "spot_id"]].copy())
    spots = TableModel.parse(
        spots, region=table.uns["spatialdata_attrs"]["region"], region_key="region", instance_key="spot_id"
    )
    tables = {"table": spots, "hyperst": sdata.tables["hyperst"]}
    slide = SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables=tables)
    gene = _predicted_genes(table)[0]
    fig, given = plt.subplots(1, 1)
    out = hst.pl.spatial(slide, gene, ax=given, show=False)
    assert out is fig and given.get_title() == f"{gene}: predicted"


def test_spatial_errors(sdata, table):
    unpredicted = table.var_names[~table.var["hyperst_predicted"].to_numpy()][0]
    with pytest.raises(KeyError, match=rf"No predictions for genes \['{unpredicted}'\].*Run `hyperst.tl.predict"):
        hst.pl.spatial(sdata, [unpredicted], show=False)
    with pytest.raises(ValueError, match="Expected `genes` to name at least one gene"):
        hst.pl.spatial(sdata, [], show=False)
    _, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match=r"Expected `ax` to be 2 Axes \(1 genes x 2 panels\), found `3`"):
        hst.pl.spatial(sdata, _predicted_genes(table)[0], ax=axes, show=False)


# ---------------------------------------------------------------- pl.history
def test_history_losses_and_curvature(model):
    fig = hst.pl.history(model, show=False)
    loss_ax, curv_ax = fig.axes
    labels = [line.get_label() for line in loss_ax.lines]
    assert "loss (train)" in labels and "mse (train)" in labels and "hca (validation)" in labels
    curve = next(line for line in curv_ax.lines if line.get_label() == "curvature")
    np.testing.assert_allclose(curve.get_ydata(), [row["train_curv"] for row in model.history])
    best = model.training.best_epoch
    assert any(line.get_label() == "best epoch" and line.get_xdata()[0] == best for line in curv_ax.lines)
    assert loss_ax.get_legend() is not None


def test_history_without_curvature_and_given_axes(model):
    rows = [{k: v for k, v in row.items() if not k.endswith("_curv")} for row in model.history]
    flat = dataclasses.replace(model, history=rows)
    fig, ax = plt.subplots()
    assert hst.pl.history(flat, terms=["mse"], ax=ax) is fig
    assert {line.get_label() for line in ax.lines} == {"mse (train)", "mse (validation)", "best epoch"}


def test_history_errors(model):
    with pytest.raises(KeyError, match=r"Loss terms \['nope'\] were not logged.*Available terms"):
        hst.pl.history(model, terms=["nope"], show=False)
    with pytest.raises(ValueError, match=r"Expected `ax` to be two Axes \(losses, curvature\), found `'1 Axes'`"):
        hst.pl.history(model, ax=plt.subplots()[1])
    with pytest.raises(ValueError, match=r"no training history"):
        hst.pl.history(dataclasses.replace(model, history=[]), show=False)
    with pytest.raises(TypeError, match="Expected `model` to be a hyperst.HyperST"):
        hst.pl.history("model.pt")


# ---------------------------------------------------------------- pl.gene_scores
def test_gene_scores_names_best_and_worst(sdata, table):
    before = _snapshot(sdata)
    ax = hst.pl.gene_scores(sdata, n_top=3, show=False)
    ranked = table.var["hyperst_pcc"].dropna().sort_values(ascending=False)
    assert [t.get_text() for t in ax.texts] == [*ranked.index[:3], *ranked.index[-3:]]
    curve = next(line for line in ax.lines if line.get_label() == "hyperst_pcc")
    np.testing.assert_allclose(curve.get_ydata(), ranked.to_numpy())
    assert any(np.allclose(line.get_ydata(), 0.0) for line in ax.lines if line.get_label().startswith("_"))
    assert _snapshot(sdata) == before


def test_gene_scores_shows_validation_scores(table):
    adata = table.copy()
    adata.var["hyperst_val_pcc"] = adata.var["hyperst_pcc"] - 0.1
    _, given = plt.subplots()
    ax = hst.pl.gene_scores(adata, n_top=100, ax=given)
    assert ax is given
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["hyperst_pcc", "hyperst_val_pcc"]
    assert len(ax.texts) == adata.var["hyperst_pcc"].notna().sum()  # every gene named once


def test_gene_scores_errors(sdata, table):
    with pytest.raises(KeyError, match=r"'hyperst_pcc'.*not found in `adata.var`.*Run `hyperst.tl.evaluate"):
        hst.pl.gene_scores(ad.AnnData(var=table.var[["hyperst_predicted"]].copy()))
    with pytest.raises(ValueError, match=r"Expected `n_top` to be a non-negative integer, found `-1`"):
        hst.pl.gene_scores(sdata, n_top=-1)


def test_show_true_shows_and_returns_none(sdata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Agg cannot show
        assert hst.pl.gene_scores(sdata, show=True) is None


def test_poincare_colours_genes_on_the_models_target_scale(sdata, table):
    from hyperst._data._target import measured_expression

    gene = table.var_names[int(np.flatnonzero(table.var["hyperst_predicted"])[0])]
    before = _snapshot(sdata)
    ax = hst.pl.poincare(sdata, color=gene, show=False)
    points = next(c for c in ax.collections if isinstance(c, PathCollection))
    col = table.var_names.get_indexer([gene])
    expected = measured_expression(table, "t", None, "log2", col)[:, 0]
    np.testing.assert_allclose(np.sort(points.get_array()), np.sort(expected), rtol=1e-6)  # not raw counts
    assert points.colorbar.ax.get_ylabel() == "measured log2(1 + counts) (X)"
    predicted = hst.pl.poincare(sdata, color=gene, layer="hyperst", show=False)
    bar = next(c for c in predicted.collections if isinstance(c, PathCollection)).colorbar
    assert bar.ax.get_ylabel() == "sdata.tables['table'].layers['hyperst']"
    assert _snapshot(sdata) == before


def test_spatial_draws_a_block_averaged_copy_of_a_large_image_in_place():
    import dask.array as da
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, get_transformation
    from xarray import DataArray

    from hyperst.pl._spatial import DISPLAY_SIDE, _display_image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 2100, 2500), dtype=np.uint8)
    lazy = DataArray(da.from_array(pixels, chunks=(3, 512, 512)), dims=("c", "y", "x"))
    image = Image2DModel.parse(lazy, transformations={"s": Scale([0.5, 0.5], axes=("x", "y"))})
    small = _display_image(image, "s")
    assert DISPLAY_SIDE <= max(small.sizes["y"], small.sizes["x"]) < 2 * DISPLAY_SIDE
    step = 2500 // DISPLAY_SIDE  # 2
    np.testing.assert_allclose(
        np.asarray(small)[:, 3, 5], pixels[:, 6:8, 10:12].mean((1, 2)).astype(np.uint8), atol=1
    )  # a block mean
    # a point keeps its place in the coordinate system: small pixel (x, y) is full-resolution (step x, step y)
    affine = get_transformation(small, "s").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    np.testing.assert_allclose(affine @ [10, 20, 1], [0.5 * step * 10, 0.5 * step * 20, 1])
    tiny = Image2DModel.parse(DataArray(pixels[:, :300, :400], dims=("c", "y", "x")))
    assert _display_image(tiny, "global") is tiny  # small images are drawn as they are
