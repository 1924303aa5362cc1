"""Tests of ``hyperst.datasets.synthetic``: spatialdata-io layout, geometry, signals, determinism, I/O."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import spatialdata
from anndata import AnnData
from scipy import sparse
from scipy.spatial import cKDTree
from skimage.io import imsave
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation, get_transformation_between_coordinate_systems

from conftest import write_cellranger_h5
from hyperst.datasets import synthetic

ROLES = {"domain", "subdomain", "morphology", "niche", "noise"}


# ---------------------------------------------------------------- helpers (independent of the implementation)


@pytest.fixture(scope="module")
def slides() -> list[SpatialData]:
    return synthetic()


def _full(sdata: SpatialData, i: int = 0) -> np.ndarray:
    return np.asarray(sdata.images[f"synthetic_{i}_full_image"]["scale0"]["image"].values)


def _disc_fraction(mask: np.ndarray, xy: np.ndarray, radius: float) -> np.ndarray:
    """Fraction of ``mask`` pixels whose centres lie in each disc (centre ``(x, y)`` in pixels)."""
    out = np.empty(len(xy))
    r = int(np.ceil(radius)) + 1
    for k, (x, y) in enumerate(xy):
        y0, x0 = max(int(y) - r, 0), max(int(x) - r, 0)
        window = mask[y0 : int(y) + r + 1, x0 : int(x) + r + 1]
        yy, xx = np.mgrid[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
        inside = (yy + 0.5 - y) ** 2 + (xx + 0.5 - x) ** 2 <= radius**2
        out[k] = window[inside].mean()
    return out


def _r2(y: np.ndarray, groups: np.ndarray) -> float:
    """Share of the variance of ``y`` explained by group means."""
    total = ((y - y.mean()) ** 2).sum()
    within = sum(((y[groups == g] - y[groups == g].mean()) ** 2).sum() for g in np.unique(groups))
    return float(1 - within / total) if total > 0 else 0.0


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0


def _other_domain_fraction(obs: pd.DataFrame, *, hexagonal: bool = True) -> np.ndarray:
    """``(N, n_domains)`` fraction of each spot's grid neighbours lying in each domain other than its own."""
    steps = [(0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)] if hexagonal else [(0, -1), (0, 1), (-1, 0), (1, 0)]
    where = {(r, c): i for i, (r, c) in enumerate(zip(obs["array_row"], obs["array_col"], strict=True))}
    codes = obs["domain"].cat.codes.to_numpy()
    n_domains = len(obs["domain"].cat.categories)
    out = np.zeros((len(obs), n_domains))
    for i, (r, c) in enumerate(zip(obs["array_row"], obs["array_col"], strict=True)):
        found = [where[(r + dr, c + dc)] for dr, dc in steps if (r + dr, c + dc) in where]
        for j in found:
            if codes[j] != codes[i]:
                out[i, codes[j]] += 1 / len(found)
    return out


def _write_visium(sdata: SpatialData, path, dataset_id: str) -> None:
    """Write a slide as a Space Ranger output folder (counts h5, positions, scale factors, images)."""
    table = sdata.tables["table"]
    (path / "spatial").mkdir(parents=True)
    write_cellranger_h5(table, path / "filtered_feature_bc_matrix.h5")
    xy = table.obsm["spatial"]
    pd.DataFrame(
        {
            "barcode": table.obs_names,
            "in_tissue": table.obs["in_tissue"].to_numpy(),
            "array_row": table.obs["array_row"].to_numpy(),
            "array_col": table.obs["array_col"].to_numpy(),
            "pxl_row_in_fullres": xy[:, 1],
            "pxl_col_in_fullres": xy[:, 0],
        }
    ).to_csv(path / "spatial" / "tissue_positions.csv", index=False, float_format="%.17g")
    circles = sdata.shapes[dataset_id]
    scales = {}
    for res in ("hires", "lowres"):
        affine = get_transformation(circles, f"{dataset_id}_downscaled_{res}").to_affine_matrix(("x", "y"), ("x", "y"))
        scales[f"tissue_{res}_scalef"] = float(affine[0, 0])
        image = np.asarray(sdata.images[f"{dataset_id}_{res}_image"].values)
        imsave(path / "spatial" / f"tissue_{res}_image.png", image.transpose(1, 2, 0), check_contrast=False)
    scales["spot_diameter_fullres"] = float(2 * circles["radius"].iloc[0])
    (path / "spatial" / "scalefactors_json.json").write_text(json.dumps(scales))
    imsave(path / "image.tif", _full(sdata).transpose(1, 2, 0), check_contrast=False)


def _affine(sdata: SpatialData, source, target) -> np.ndarray:
    t = get_transformation_between_coordinate_systems(sdata, source, target)
    return t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))


# ---------------------------------------------------------------- layout


def test_layout_equals_spatialdata_io_reader(tmp_path) -> None:
    spatialdata_io = pytest.importorskip("spatialdata_io")
    ours = synthetic(n_slides=1, n_spots=40, n_genes=12, seed=5)[0]
    _write_visium(ours, tmp_path, "synthetic_0")
    ref = spatialdata_io.visium(tmp_path, dataset_id="synthetic_0", fullres_image_file="image.tif")

    assert set(ours.images) == set(ref.images)
    assert set(ours.shapes) == set(ref.shapes) == {"synthetic_0"}
    assert set(ours.tables) == set(ref.tables) == {"table"}
    assert set(ours.coordinate_systems) == set(ref.coordinate_systems)
    for name, element in [*ours.images.items(), *ours.shapes.items()]:
        mine = get_transformation(element, get_all=True)
        theirs = get_transformation(ref[name], get_all=True)
        assert set(mine) == set(theirs), name
        for cs in mine:
            np.testing.assert_allclose(
                mine[cs].to_affine_matrix(("x", "y"), ("x", "y")),
                theirs[cs].to_affine_matrix(("x", "y"), ("x", "y")),
                err_msg=f"{name} -> {cs}",
            )
    np.testing.assert_array_equal(_full(ours), np.asarray(ref["synthetic_0_full_image"]["scale0"]["image"]))
    for res in ("hires", "lowres"):
        key = f"synthetic_0_{res}_image"
        np.testing.assert_array_equal(ours.images[key].values, ref.images[key].values)

    mine, theirs = ours.shapes["synthetic_0"], ref.shapes["synthetic_0"]
    assert list(mine.columns) == list(theirs.columns)
    np.testing.assert_array_equal(mine.index, theirs.index)
    np.testing.assert_allclose(mine["radius"], theirs["radius"])
    np.testing.assert_allclose(np.c_[mine.geometry.x, mine.geometry.y], np.c_[theirs.geometry.x, theirs.geometry.y])

    mine, theirs = ours.tables["table"], ref.tables["table"]
    assert mine.uns["spatialdata_attrs"] == theirs.uns["spatialdata_attrs"]
    assert [c for c in mine.obs.columns if c not in ("domain", "subdomain")] == list(theirs.obs.columns)
    for column in theirs.obs.columns:
        assert mine.obs[column].dtype == theirs.obs[column].dtype, column
        np.testing.assert_array_equal(mine.obs[column].astype(str), theirs.obs[column].astype(str))
    assert [c for c in mine.var.columns if c != "synthetic_role"] == list(theirs.var.columns)
    pd.testing.assert_frame_equal(mine.var[theirs.var.columns], theirs.var)
    np.testing.assert_array_equal(mine.obs_names, theirs.obs_names)
    np.testing.assert_allclose(mine.obsm["spatial"], theirs.obsm["spatial"])
    assert sparse.issparse(mine.X) and mine.X.format == theirs.X.format == "csr"
    assert mine.X.dtype == theirs.X.dtype == np.float32
    np.testing.assert_array_equal(mine.X.toarray(), theirs.X.toarray())


def test_slides_are_named_and_annotated(slides) -> None:
    assert len(slides) == 3
    for i, sdata in enumerate(slides):
        sid = f"synthetic_{i}"
        assert set(sdata.images) == {f"{sid}_full_image", f"{sid}_hires_image", f"{sid}_lowres_image"}
        assert set(sdata.coordinate_systems) == {sid, f"{sid}_downscaled_hires", f"{sid}_downscaled_lowres"}
        assert list(sdata.images[f"{sid}_full_image"]) == ["scale0", "scale1", "scale2"]
        full = _full(sdata, i)
        assert full.dtype == np.uint8 and full.ndim == 3 and full.shape[0] == 3
        table = sdata.tables["table"]
        attrs = table.uns["spatialdata_attrs"]
        assert attrs == {"region": sid, "region_key": "region", "instance_key": "spot_id"}
        circles = sdata.shapes[sid]
        assert "radius" in circles.columns
        np.testing.assert_array_equal(table.obs["spot_id"], np.arange(table.n_obs))
        centres = np.c_[circles.geometry.x, circles.geometry.y]
        np.testing.assert_allclose(table.obsm["spatial"], centres[circles.index.get_indexer(table.obs["spot_id"])])
        assert table.n_obs == 1000
        assert (table.obs["region"] == sid).all()


def test_hires_and_lowres_map_onto_the_full_image(slides) -> None:
    sdata = slides[1]
    full = _full(sdata, 1).astype(float)
    for res in ("hires", "lowres"):
        small = sdata.images[f"synthetic_1_{res}_image"]
        affine = _affine(sdata, small, sdata.images["synthetic_1_full_image"])
        factor = affine[0, 0]
        assert factor > 1 and float(factor).is_integer()
        np.testing.assert_allclose(affine, np.diag([factor, factor, 1.0]))
        f = int(factor)
        values = np.asarray(small.values).astype(float)
        rng = np.random.default_rng(0)
        for i, j in zip(rng.integers(0, values.shape[1], 50), rng.integers(0, values.shape[2], 50), strict=True):
            block = full[:, i * f : (i + 1) * f, j * f : (j + 1) * f].mean(axis=(1, 2))
            np.testing.assert_allclose(values[:, i, j], block, atol=1.0)
        # spots land on the same place in the downscaled coordinate system
        circles = sdata.shapes["synthetic_1"]
        to_small = _affine(sdata, circles, f"synthetic_1_downscaled_{res}")  # the small image's pixels
        xy = sdata.tables["table"].obsm["spatial"]
        np.testing.assert_allclose((to_small @ np.c_[xy, np.ones(len(xy))].T).T[:, :2], xy / factor)
    assert max(sdata.images["synthetic_1_lowres_image"].shape[1:]) in range(400, 800)


@pytest.mark.parametrize(("technology", "microns_per_pixel"), [("visium", 1.0), ("visium", 0.5), ("st", 2.0)])
def test_grid_geometry(technology: str, microns_per_pixel: float) -> None:
    pitch_um, diameter_um, k = {"visium": (100.0, 55.0, 6), "st": (200.0, 100.0, 4)}[technology]
    sdata = synthetic(1, 120, 20, technology=technology, microns_per_pixel=microns_per_pixel, seed=2)[0]
    table = sdata.tables["table"]
    xy = table.obsm["spatial"]
    pitch = pitch_um / microns_per_pixel
    np.testing.assert_allclose(sdata.shapes["synthetic_0"]["radius"], diameter_um / 2 / microns_per_pixel)
    row, col = table.obs["array_row"].to_numpy(), table.obs["array_col"].to_numpy()
    if technology == "visium":
        assert (row % 2 == col % 2).all()
    tree = cKDTree(xy)
    dist, _ = tree.query(xy, k=2)
    np.testing.assert_allclose(dist[:, 1], pitch, rtol=1e-6)  # nearest neighbours exactly one pitch away
    counts = np.array([len(n) - 1 for n in tree.query_ball_point(xy, r=pitch * 1.01)])
    assert counts.max() == k
    assert (counts == k).sum() >= 20
    # neighbours in pixel space are grid neighbours in array space
    for i, j in tree.query_pairs(r=pitch * 1.01):
        step = (abs(row[i] - row[j]), abs(col[i] - col[j]))
        assert step in ({(0, 2), (1, 1)} if technology == "visium" else {(0, 1), (1, 0)})
    # positions are a linear function of the array indices
    scale = (pitch / 2, pitch * np.sqrt(3) / 2) if technology == "visium" else (pitch, pitch)
    np.testing.assert_allclose(xy[:, 0] - col * scale[0], (xy[:, 0] - col * scale[0])[0])
    np.testing.assert_allclose(xy[:, 1] - row * scale[1], (xy[:, 1] - row * scale[1])[0])
    # a background margin of a few hundred µm surrounds the spots
    height, width = _full(sdata).shape[1:]
    margin_um = np.array([xy[:, 0].min(), xy[:, 1].min(), width - xy[:, 0].max(), height - xy[:, 1].max()])
    assert (margin_um * microns_per_pixel > 200).all() and (margin_um * microns_per_pixel < 800).all()


# ---------------------------------------------------------------- table content


def test_counts_and_annotations(slides) -> None:
    for sdata in slides:
        table = sdata.tables["table"]
        x = table.X
        assert sparse.isspmatrix_csr(x) and x.dtype == np.float32
        assert (x.data >= 0).all() and np.array_equal(x.data, np.round(x.data)) and x.nnz > 0
        assert table.obs_names.is_unique and all(re.fullmatch(r"[ACGT]{16}-1", b) for b in table.obs_names)
        assert list(table.obs_names) == sorted(table.obs_names)
        assert (table.obs["in_tissue"] == 1).all()
        assert table.var_names.is_unique and table.var_names[0] == "SYN0001"
        assert set(table.var["synthetic_role"]) == ROLES
        assert (table.var["feature_types"] == "Gene Expression").all() and table.var["gene_ids"].is_unique
        assert isinstance(table.obs["domain"].dtype, pd.CategoricalDtype)
        assert isinstance(table.obs["subdomain"].dtype, pd.CategoricalDtype)
        parents = table.obs.groupby("subdomain", observed=True)["domain"].nunique()
        assert (parents == 1).all()  # nested: each sub-domain lies in one domain
        assert table.obs["domain"].nunique() == 3 and table.obs["subdomain"].nunique() >= 6
        assert table.obs.groupby("domain", observed=True)["subdomain"].nunique().between(2, 3).all()


def test_seed_determinism_and_slides_differ() -> None:
    a = synthetic(2, 40, 15, seed=7)
    b = synthetic(2, 40, 15, seed=7)
    c = synthetic(1, 40, 15, seed=8)
    for i, (sa, sb) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_array_equal(_full(sa, i), _full(sb, i))
        ta, tb = sa.tables["table"], sb.tables["table"]
        np.testing.assert_array_equal(ta.X.toarray(), tb.X.toarray())
        pd.testing.assert_frame_equal(ta.obs, tb.obs)
        np.testing.assert_array_equal(ta.obsm["spatial"], tb.obsm["spatial"])
    t0, t1, tc = a[0].tables["table"], a[1].tables["table"], c[0].tables["table"]
    assert not np.array_equal(_full(a[0]), _full(a[1], 1))
    assert not np.array_equal(t0.X.toarray(), t1.X.toarray())
    assert not np.array_equal(t0.X.toarray(), tc.X.toarray())
    assert list(t0.var["synthetic_role"]) == list(t1.var["synthetic_role"])  # programs shared by slides


# ---------------------------------------------------------------- the signals are real


def _pooled(slides: list[SpatialData]) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    tables = [s.tables["table"] for s in slides]
    y = np.log1p(np.vstack([t.X.toarray() for t in tables]))
    obs = pd.concat([t.obs[["domain", "subdomain"]] for t in tables], ignore_index=True)
    return y, obs, tables[0].var["synthetic_role"].to_numpy()


def test_domain_and_subdomain_explain_their_genes(slides) -> None:
    y, obs, role = _pooled(slides)
    domain, subdomain = obs["domain"].to_numpy(), obs["subdomain"].to_numpy()
    r2_domain = {r: np.mean([_r2(y[:, g], domain) for g in np.flatnonzero(role == r)]) for r in ROLES}
    assert r2_domain["domain"] > 0.5
    assert r2_domain["noise"] < 0.02
    assert r2_domain["domain"] > 2 * r2_domain["subdomain"] > 10 * r2_domain["noise"]

    def within(g: int) -> float:  # best share of variance that sub-domains explain inside one domain
        return max(_r2(y[domain == d, g], subdomain[domain == d]) for d in np.unique(domain))

    sub = np.mean([within(g) for g in np.flatnonzero(role == "subdomain")])
    noise = np.mean([within(g) for g in np.flatnonzero(role == "noise")])
    dom = np.mean([within(g) for g in np.flatnonzero(role == "domain")])
    assert sub > 0.25
    assert sub > 5 * noise and sub > 3 * dom


def test_morphology_genes_follow_the_pixels_under_the_spot(slides) -> None:
    corr_all, corr_within, corr_noise = [], [], []
    for i, sdata in enumerate(slides):
        table = sdata.tables["table"]
        image = _full(sdata, i).astype(np.int16)
        dark = _disc_fraction(
            image.mean(axis=0) < 150, table.obsm["spatial"], sdata.shapes[f"synthetic_{i}"]["radius"].iloc[0]
        )
        y = np.log1p(table.X.toarray())
        role = table.var["synthetic_role"].to_numpy()
        domain = table.obs["domain"].to_numpy()
        for g in np.flatnonzero(role == "morphology"):
            corr_all.append(_corr(y[:, g], dark))
            corr_within.append(np.mean([_corr(y[domain == d, g], dark[domain == d]) for d in np.unique(domain)]))
        for g in np.flatnonzero(role == "noise"):
            corr_noise.append(np.mean([_corr(y[domain == d, g], dark[domain == d]) for d in np.unique(domain)]))
    assert np.mean(corr_all) > 0.5
    assert np.mean(corr_within) > 0.3  # spot-scale morphology, not only the domain
    assert abs(np.mean(corr_noise)) < 0.05


def test_niche_genes_follow_the_neighbour_composition(slides) -> None:
    best = {"niche": [], "noise": [], "domain": []}
    for sdata in slides:
        table = sdata.tables["table"]
        other = _other_domain_fraction(table.obs)
        assert 0.05 < (other.sum(axis=1) > 0).mean() < 0.6  # a real share of the spots sit on an interface
        y = np.log1p(table.X.toarray())
        role = table.var["synthetic_role"].to_numpy()
        for r, values in best.items():
            values.extend(
                max(_corr(y[:, g], other[:, d]) for d in range(other.shape[1])) for g in np.flatnonzero(role == r)
            )
    assert np.mean(best["niche"]) > 0.3
    assert np.mean(best["niche"]) > 5 * np.mean(best["noise"])
    # domain genes only touch the niche through the spot's own label
    assert np.mean(best["niche"]) > 2 * np.mean(best["domain"])


def test_image_looks_like_he(slides) -> None:
    sdata = slides[0]
    image = _full(sdata).astype(float)
    table = sdata.tables["table"]
    xy, radius = table.obsm["spatial"], sdata.shapes["synthetic_0"]["radius"].iloc[0]
    frame = np.concatenate([image[:, :40].reshape(3, -1), image[:, -40:].reshape(3, -1)], axis=1)
    assert (frame.mean(axis=1) > 235).all() and np.percentile(frame, 1) > 215  # white glass around the tissue

    def pixels_under(domain: str) -> np.ndarray:
        mask = np.zeros(image.shape[1:], dtype=bool)
        for x, y in xy[table.obs["domain"].to_numpy() == domain]:
            mask[int(y - radius / 2) : int(y + radius / 2), int(x - radius / 2) : int(x + radius / 2)] = True
        return image[:, mask]

    gray = pixels_under("stroma")
    stroma = gray[:, (gray.mean(axis=0) > 150) & (gray.mean(axis=0) < 225)].mean(axis=1)
    r, g, b = stroma
    assert 190 < r < 250 and 110 < g < 190 and 150 < b < 240 and r > b > g  # pink eosin
    pix = pixels_under("immune")
    nuclei = pix[:, pix.mean(axis=0) < 140].mean(axis=1)
    r, g, b = nuclei
    assert b > r + 20 and b > g + 30 and nuclei.mean() < 140  # purple-blue haematoxylin
    dark = {d: (pixels_under(d).mean(axis=0) < 150).mean() for d in ("tumour", "stroma", "immune")}
    assert dark["immune"] > 2 * dark["stroma"] and dark["tumour"] > 2 * dark["stroma"]


# ---------------------------------------------------------------- I/O and validation


def test_write_read_zarr_round_trip(tmp_path) -> None:
    sdata = synthetic(1, 30, 12, seed=1)[0]
    sdata.write(tmp_path / "slide.zarr")
    back = spatialdata.read_zarr(tmp_path / "slide.zarr")
    assert set(back.images) == set(sdata.images) and set(back.shapes) == set(sdata.shapes)
    assert set(back.coordinate_systems) == set(sdata.coordinate_systems)
    np.testing.assert_array_equal(_full(back), _full(sdata))
    t0, t1 = sdata.tables["table"], back.tables["table"]
    assert isinstance(t1, AnnData)
    np.testing.assert_array_equal(t0.X.toarray(), t1.X.toarray())
    pd.testing.assert_frame_equal(t0.obs, t1.obs)
    pd.testing.assert_frame_equal(t0.var, t1.var)
    np.testing.assert_allclose(t0.obsm["spatial"], t1.obsm["spatial"])
    assert t1.uns["spatialdata_attrs"] == t0.uns["spatialdata_attrs"]
    for res in ("hires", "lowres"):
        np.testing.assert_allclose(
            _affine(back, back.images[f"synthetic_0_{res}_image"], "synthetic_0"),
            _affine(sdata, sdata.images[f"synthetic_0_{res}_image"], "synthetic_0"),
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_slides": 0}, r"Expected `n_slides` to be an integer >= 1, found `0`"),
        ({"n_spots": 5}, r"Expected `n_spots` to be an integer >= 10, found `5`"),
        ({"n_spots": 100.0}, r"Expected `n_spots` to be an integer >= 10, found `100.0`"),
        ({"n_genes": 3}, r"Expected `n_genes` to be an integer >= 10, found `3`"),
        ({"seed": -1}, r"Expected `seed` to be an integer >= 0, found `-1`"),
        ({"seed": True}, r"Expected `seed` to be an integer >= 0, found `True`"),
        (
            {"technology": "slide-seq"},
            r"Expected `technology` to be one of \['st', 'visium'\], found `'slide-seq'`",
        ),
        (
            {"microns_per_pixel": 0},
            r"Expected `microns_per_pixel` to be a number in \[0.2, 10.0\], found `0`",
        ),
        (
            {"microns_per_pixel": "1"},
            r"Expected `microns_per_pixel` to be a number in \[0.2, 10.0\], found `'1'`",
        ),
        ({"microns_per_pixel": float("nan")}, r"Expected `microns_per_pixel` to be a number .*found `nan`"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synthetic(**kwargs)


def test_every_subdomain_has_a_texture():
    from hyperst.datasets._synthetic_image import TEXTURES
    from hyperst.datasets._synthetic_tissue import SUBDOMAINS

    assert all(v.size == len(SUBDOMAINS) for v in TEXTURES.values())
