"""Bad input through the public API: refused with a message naming the element, the key and the fix, or handled.

Every case corrupts a copy of one small Visium-like slide (or writes a damaged model folder), calls `tl.fit`,
`tl.predict`, `tl.evaluate`, `pp.niche_graph`, `pp.tile` or `HyperST.load`, and checks the error type, the
message, and that the slide it was given is exactly as it was before the call (see `fingerprint`). The CLI
cases check the exit status, a one-line error, and that the store on disk is untouched. Cases that are better
handled than refused (all-zero spots, a single spot, genes missing at predict time, another pixel size, an
image smaller than a patch) have their own tests below.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import hyperst as hst
from conftest import hex_centres, make_slide
from hyperst._cli import main
from hyperst._model_files import write_manifest
from test_io import _edit_config, _tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE, SHAPES, TABLE = "sample_1_full_image", "sample_1", "table"
# Tiny on purpose: every refusal happens before training; the handled fits run one epoch on 25 spots.
FIT = {"genes": ["G0", "G1"], "encoder": "squidpy", "max_epochs": 1, "cache": False}
FIT_SMALL = {"embed_dim": 16, "patch_px": 32, "views": 1, "batch_size": 16}


def _n_features() -> int:
    from hyperst._data._handcrafted import handcrafted_feature_names

    return len(handcrafted_feature_names())


def _visium(n_rows: int = 5, n_cols: int = 5, mpp: float = 1.0, seed: int = 0):
    """A Visium-like slide (100 µm pitch, 55 µm spots, at ``mpp`` µm/px) over a textured RGB image."""
    pitch = 100 / mpp
    centres = hex_centres(n_rows, n_cols, pitch, origin=(250 / mpp, 250 / mpp))
    h, w = int(centres[:, 1].max() + 250 / mpp), int(centres[:, 0].max() + 250 / mpp)
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 250, size=(3, h, w), dtype=np.uint8)
    return make_slide(image, centres, radius=27.5 / mpp, seed=seed)


@pytest.fixture(scope="module")
def base_slide():
    return _visium()


@pytest.fixture
def sdata(base_slide):
    return copy.deepcopy(base_slide)


@pytest.fixture(scope="module")
def model():
    """An untrained model that reads squidpy features (instant): predictions run, their values do not matter."""
    return _tiny(n_features=_n_features(), genes=("G0", "G1", "G2"))


# ------------------------------------------------------------------ fingerprint of a SpatialData
def _digest(a) -> str:
    import scipy.sparse as sp

    if a is None:
        return "None"
    h = hashlib.sha256()
    if sp.issparse(a):
        a = sp.csr_matrix(a)
        parts = [a.data, a.indices, a.indptr, np.asarray(a.shape)]
    else:
        a = np.asarray(a)
        parts = [a, np.asarray(a.shape)]
    h.update(str(a.dtype).encode())
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()


def _frame(df) -> dict:
    import pandas as pd

    return {
        "index": list(map(str, df.index)),
        "columns": list(map(str, df.columns)),
        "dtypes": [str(t) for t in df.dtypes],
        "categories": {str(c): list(map(str, df[c].cat.categories)) for c in df.columns if df[c].dtype == "category"},
        "values": _digest(pd.util.hash_pandas_object(df, index=True).to_numpy()) if len(df.columns) else "",
    }


def _transformations(element) -> dict:
    from spatialdata.transformations import get_transformation

    out = {}
    for cs, t in get_transformation(element, get_all=True).items():
        out[cs] = np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))).round(12).tolist()
    return out


def fingerprint(sdata) -> dict:
    """What a SpatialData holds, in comparable form: elements, tables, shapes, transformations, image pixels."""
    from hyperst._data._elements import image_levels

    out: dict = {kind: sorted(getattr(sdata, kind)) for kind in ("images", "labels", "points", "shapes", "tables")}
    for name, image in sdata.images.items():
        levels = image_levels(image)
        out[f"images/{name}"] = {
            "levels": [(tuple(lv.dims), tuple(lv.shape), str(lv.dtype)) for lv in levels],
            "pixels": _digest(np.asarray(levels[0].data)),
            "transformations": _transformations(image),
        }
    for name, gdf in sdata.shapes.items():
        out[f"shapes/{name}"] = {
            "geometry": _digest(np.asarray(gdf.geometry.to_wkb().tolist(), dtype=object).astype(bytes)),
            "frame": _frame(gdf.drop(columns="geometry")),
            "transformations": _transformations(gdf),
        }
    for name, table in sdata.tables.items():
        out[f"tables/{name}"] = {
            "shape": table.shape,
            "X": _digest(table.X),
            "obs": _frame(table.obs),
            "var": _frame(table.var),
            "obsm": {k: _digest(v) for k, v in table.obsm.items()},
            "obsp": {k: _digest(v) for k, v in table.obsp.items()},
            "layers": {k: _digest(v) for k, v in table.layers.items()},
            "uns": json.dumps(table.uns, sort_keys=True, default=repr),
        }
    return out


def test_fingerprint_sees_every_kind_of_change(base_slide):
    from spatialdata.transformations import Scale, set_transformation

    reference = fingerprint(base_slide)
    assert fingerprint(copy.deepcopy(base_slide)) == reference

    def changed(edit: Callable) -> bool:
        s = copy.deepcopy(base_slide)
        edit(s)
        return fingerprint(s) != reference

    assert changed(lambda s: s.tables[TABLE].obsm.__setitem__("X_new", np.zeros((s.tables[TABLE].n_obs, 2))))
    assert changed(lambda s: s.tables[TABLE].layers.__setitem__("new", s.tables[TABLE].X.copy()))
    assert changed(lambda s: s.tables[TABLE].uns.__setitem__("new", 1))
    assert changed(lambda s: s.tables[TABLE].obs.__setitem__("new", 1))
    assert changed(lambda s: s.tables[TABLE].X.__setitem__((0, 0), 99))
    assert changed(lambda s: s.shapes[SHAPES].__setitem__("radius", 1.0))
    assert changed(lambda s: set_transformation(s.shapes[SHAPES], Scale([2.0, 2.0], axes=("x", "y")), SHAPES))
    assert changed(lambda s: s.tables.__setitem__("other", s.tables[TABLE].copy()))


# ------------------------------------------------------------------ corruptions
def _image(arr: np.ndarray, cs: str = SHAPES):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    return Image2DModel.parse(DataArray(arr, dims=("c", "y", "x")), transformations={cs: Identity()})


def _pixels(s) -> np.ndarray:
    return np.asarray(s.images[IMAGE].data)


def _swap_image(s, arr: np.ndarray) -> None:
    del s.images[IMAGE]
    s.images["he"] = _image(arr)


def _reparse(s, table, **attrs) -> None:
    """Replace the table by ``table`` annotating ``attrs`` (region, region_key, instance_key)."""
    from spatialdata.models import TableModel

    table = table.copy()
    table.uns.pop(TableModel.ATTRS_KEY, None)
    del s.tables[TABLE]
    s.tables[TABLE] = TableModel.parse(
        table, **{"region": SHAPES, "region_key": "region", "instance_key": "spot_id", **attrs}
    )


def _move_circle(s, xy: tuple[float, float]) -> None:
    from shapely.geometry import Point

    gdf = s.shapes[SHAPES]
    gdf.loc[gdf.index[0], "geometry"] = Point(*xy)


def _affine(s, matrix: list[list[float]]) -> None:
    from spatialdata.transformations import Affine, set_transformation

    set_transformation(
        s.shapes[SHAPES], Affine(np.asarray(matrix), input_axes=("x", "y"), output_axes=("x", "y")), SHAPES
    )


def _saved(model, tmp_path: Path) -> Path:
    return model.save(tmp_path / "model")


class _Payload:
    """Pickles to a call of ``os.system``: what a malicious ``weights.pt`` would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _predict(s, model, **kw) -> Callable[[], object]:
    return lambda: hst.tl.predict(s, model, cache=False, **kw)


def _fit(s, **kw) -> Callable[[], object]:
    return lambda: hst.tl.fit(s, **{**FIT, **FIT_SMALL, **kw})


def _load_and_predict(s, folder: Path) -> Callable[[], object]:
    return lambda: hst.tl.predict(s, hst.HyperST.load(folder), cache=False)


# ------------------------------------------------------------------ the table of cases
CASES: list = []


def case(error: type[Exception], match: str) -> Callable:
    """Register ``fn(sdata, model, tmp_path) -> call``: it corrupts the slide copy and returns the API call."""

    def register(fn: Callable) -> Callable:
        CASES.append(pytest.param(fn, error, match, id=fn.__name__.removeprefix("_").replace("_", "-")))
        return fn

    return register


# --- elements
@case(ValueError, r"Found no image aligned with the spots `'sample_1'`.*Image2DModel\.parse")
def _no_image(s, model, tmp_path):
    del s.images[IMAGE]
    return _fit(s)


@case(ValueError, r"Found no table of spots in `sdata.tables`\. Add the spots' table .*TableModel\.parse")
def _no_table(s, model, tmp_path):
    del s.tables[TABLE]
    return _predict(s, model)


@case(ValueError, r"Found no table of spots in `sdata.tables`\. Add the spots' table")
def _no_table_evaluate(s, model, tmp_path):
    del s.tables[TABLE]
    return lambda: hst.tl.evaluate(s)


@case(
    ValueError, r"Table `'table'` annotates \['sample_1'\], but none .*`sdata.shapes` \(\[\]\)\. .*ShapesModel\.parse"
)
def _no_shapes(s, model, tmp_path):
    del s.shapes[SHAPES]
    return _predict(s, model)


@case(ValueError, r"annotates \['sample_1_full_image'\], but none of these is a shapes element .*ShapesModel\.parse")
def _table_annotating_the_image(s, model, tmp_path):
    table = s.tables[TABLE].copy()
    table.obs["region"] = IMAGE
    _reparse(s, table, region=IMAGE)
    return _predict(s, model)


@case(ValueError, r"annotates \['sample_1'\], but none of these is a shapes element of spot circles .*ShapesModel")
def _table_annotating_polygons(s, model, tmp_path):
    from spatialdata.models import ShapesModel

    polygons = s.shapes[SHAPES].copy()
    polygons["geometry"] = polygons.buffer(20.0)
    del s.shapes[SHAPES]
    s.shapes[SHAPES] = ShapesModel.parse(polygons.drop(columns="radius"))
    return _fit(s)


@case(ValueError, r"Table `'table'` does not annotate any element .*TableModel\.parse\(adata, region=")
def _table_without_spatialdata_attrs(s, model, tmp_path):
    del s.tables[TABLE].uns["spatialdata_attrs"]
    return lambda: hst.pp.niche_graph(s)


@case(ValueError, r"several candidates .*image.*\['other', 'sample_1_full_image'\]\. Pass `image_key=`")
def _several_images_and_no_image_key(s, model, tmp_path):
    s.images["other"] = _image(_pixels(s).copy())
    return _predict(s, model)


@case(KeyError, r"Expected `image_key` to name image, found `'nope'`\. Candidates in `sdata.images`: \['sample_1")
def _unknown_image_key(s, model, tmp_path):
    return _predict(s, model, image_key="nope")


@case(ValueError, r"several candidates for the table of spots .*\['table', 'table2'\]\. Pass `table_key=`")
def _several_tables_and_no_table_key(s, model, tmp_path):
    s.tables["table2"] = s.tables[TABLE].copy()
    return _fit(s)


@case(KeyError, r"Expected `table_key` to name table of spots, found `'nope'`\. Candidates in `sdata.tables`")
def _unknown_table_key(s, model, tmp_path):
    return lambda: hst.pp.niche_graph(s, table_key="nope")


@case(ValueError, r"annotates other regions besides `'sample_1'` \(\['sample_2'\]\)\. Subset it to one slide")
def _table_annotating_two_slides(s, model, tmp_path):
    from spatialdata.models import ShapesModel

    s.shapes["sample_2"] = ShapesModel.parse(s.shapes[SHAPES].copy())  # the copy keeps its transformations
    table = s.tables[TABLE].copy()
    table.obs["region"] = ["sample_2" if i % 2 else SHAPES for i in range(table.n_obs)]
    _reparse(s, table, region=[SHAPES, "sample_2"])
    return _predict(s, model, shapes_key=SHAPES)


# --- images
@case(ValueError, r"Expected `images\['he'\]` to be RGB with 3 channels along `c`, found .*'c': 1.*np\.repeat")
def _grayscale_image(s, model, tmp_path):
    _swap_image(s, _pixels(s)[:1])
    return _predict(s, model)


@case(ValueError, r"Expected `images\['he'\]` to be RGB with 3 channels .*'c': 4.*isel\(c=\[0, 1, 2\]\)")
def _four_channel_image(s, model, tmp_path):
    px = _pixels(s)
    _swap_image(s, np.concatenate([px, np.full_like(px[:1], 255)]))
    return _predict(s, model)


@case(ValueError, r"Expected `images\['he'\]` to hold uint8 RGB values \(0-255\), found dtype `float32`\. Convert")
def _float_image(s, model, tmp_path):
    _swap_image(s, _pixels(s).astype(np.float32) / 255)
    return _fit(s)


@case(ValueError, r"Expected `images\['he'\]` to be an RGB image \(3 channels\), found `1`\. Pass `image_key=`")
def _grayscale_image_tile(s, model, tmp_path):
    _swap_image(s, _pixels(s)[:1])
    return lambda: hst.pp.tile(s)


@case(ValueError, r"Found no H&E image in `sdata.images`\. Add the H&E image with .*Image2DModel\.parse")
def _no_image_tile(s, model, tmp_path):
    del s.images[IMAGE]
    return lambda: hst.pp.tile(s)


@case(ValueError, r"Cannot tell the pixel size of image `'he'`: no spot circles .* Pass `microns_per_pixel=`")
def _image_only_without_scale_tile(s, model, tmp_path):
    from spatialdata import SpatialData

    only = SpatialData(images={"he": _image(_pixels(s))})
    return lambda: hst.pp.tile(only)


# --- geometry
@case(ValueError, r"1 of 25 spots of `'sample_1'` lie outside image `'sample_1_full_image'` .*spot 100 at pixel")
def _spot_outside_the_image(s, model, tmp_path):
    _move_circle(s, (-500.0, -500.0))
    return _predict(s, model)


@case(ValueError, r"1 of 25 circles of shapes `'sample_1'` have no finite centre .*circle 100\)\. Drop them")
def _spot_with_nan_centre(s, model, tmp_path):
    _move_circle(s, (np.nan, np.nan))
    return lambda: hst.pp.niche_graph(s)


@case(ValueError, r"spots `'sample_1'` to image `'sample_1_full_image'` rotates or shears .*without rotation")
def _rotated_transformation(s, model, tmp_path):
    _affine(s, [[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    return _predict(s, model)


@case(ValueError, r"rotates or shears \(linear part \[\[1\.0, 0\.3\], \[0\.0, 1\.0\]\]\)")
def _sheared_transformation(s, model, tmp_path):
    _affine(s, [[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return _fit(s)


@case(ValueError, r"positive spot radii in `sdata.shapes\['sample_1'\]\['radius'\]`, found .*`0` px.*Set each circle")
def _zero_spot_radius(s, model, tmp_path):
    s.shapes[SHAPES]["radius"] = 0.0
    return _predict(s, model, microns_per_pixel=1.0)


@case(ValueError, r"lie on neither a hexagonal \(Visium\) nor a square .*Pass `microns_per_pixel=`")
def _irregular_spots_without_scale(s, model, tmp_path):
    from shapely.geometry import Point

    gdf = s.shapes[SHAPES]
    rng = np.random.default_rng(0)
    xy = rng.uniform(300, 600, size=(len(gdf), 2))
    gdf["geometry"] = [Point(x, y) for x, y in xy]
    return _predict(s, model)


# --- table rows
@case(ValueError, r"1 of 25 rows of table `'table'` repeat a spot name .*\.obs_names_make_unique\(\)")
def _duplicate_spot_names(s, model, tmp_path):
    table = s.tables[TABLE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata warns about the duplicate, as it should
        table.obs_names = ["spot100", *table.obs_names[1:-1], "spot100"]
    return _predict(s, model)


@case(ValueError, r"rows of table `'table'` name a spot already named by another row .*\['spot_id'\].*duplicated")
def _duplicate_instance_ids(s, model, tmp_path):
    obs = s.tables[TABLE].obs
    obs["spot_id"] = [100, *obs["spot_id"].iloc[1:]]
    obs.iloc[1, obs.columns.get_loc("spot_id")] = 100
    return lambda: hst.pp.niche_graph(s)


@case(ValueError, r"The index of shapes `'sample_1'` repeats 1 circle ids \(e\.g\. 100\).*own id")
def _duplicate_circle_ids(s, model, tmp_path):
    gdf = s.shapes[SHAPES]
    gdf.index = [100, *gdf.index[1:-1], 100]
    return _predict(s, model)


@case(
    ValueError,
    r"25 of 25 rows of table `'table'` name spots missing from shapes `'sample_1'` \(e\.g\. \[1100, 1101, 1102\]\)",
)
def _rows_naming_missing_circles(s, model, tmp_path):
    obs = s.tables[TABLE].obs
    obs["spot_id"] = obs["spot_id"].to_numpy() + 1000
    return _fit(s)


@case(KeyError, r"Column `'spot_id'` \(the table's `instance_key`\) not found .*Available columns: \['region'\]")
def _instance_key_column_missing(s, model, tmp_path):
    s.tables[TABLE].obs = s.tables[TABLE].obs.drop(columns="spot_id")
    return _predict(s, model)


@case(ValueError, r"Table `'table'` has no rows: no spot of `'sample_1'` to use\. Check the filter")
def _empty_table(s, model, tmp_path):
    s.tables[TABLE]._inplace_subset_obs(np.array([], dtype=int))  # spatialdata refuses to add an empty table
    return _predict(s, model)


@case(ValueError, r"Table `'table'` has no rows")
def _empty_table_fit(s, model, tmp_path):
    s.tables[TABLE]._inplace_subset_obs(np.array([], dtype=int))
    return _fit(s)


@case(ValueError, r"Table `sdata.tables\['table'\]` has no spots to evaluate\. Pass `table_key=`")
def _empty_table_evaluate(s, model, tmp_path):
    table = s.tables[TABLE]
    table.layers["hyperst"] = np.zeros(table.shape, dtype=np.float32)
    table._inplace_subset_obs(np.array([], dtype=int))
    return lambda: hst.tl.evaluate(s)


# --- counts
@case(ValueError, r"raw counts in `sdata.tables\['table'\].X`, found negative values .*`layer='counts'`")
def _negative_counts(s, model, tmp_path):
    s.tables[TABLE].X[0, 0] = -1
    return _fit(s)


@case(ValueError, r"raw counts in `sdata.tables\['table'\].X`, found NaN or infinite values\. Fill them")
def _nan_counts(s, model, tmp_path):
    s.tables[TABLE].X[0, 0] = np.nan
    return _fit(s)


@case(ValueError, r"raw \(integer\) counts in `sdata.tables\['table'\].X`, found non-integer .*`layer='counts'`")
def _non_integer_counts(s, model, tmp_path):
    s.tables[TABLE].X[0, 0] = 0.5
    return _fit(s)


@case(ValueError, r"raw counts in `sdata.tables\['table'\].X`, found none \(`X` is None\)\. Pass `layer=`")
def _no_counts_matrix(s, model, tmp_path):
    s.tables[TABLE].X = None
    return _fit(s)


@case(KeyError, r"Key `'counts'` not found in `sdata.tables\['table'\].layers`\. .*Pass `layer=None` to read `X`")
def _counts_layer_missing(s, model, tmp_path):
    return _fit(s, layer="counts")


@case(ValueError, r"Table `'table'` of slide `sample_1` holds only zero counts in `X`\. Pass `layer=`")
def _all_spots_zero(s, model, tmp_path):
    s.tables[TABLE].X[:] = 0
    return _fit(s)


@case(ValueError, r"Table `'table'` of slide `sample_1` holds no genes \(`n_vars == 0`\).*Pass `table_key=`")
def _table_without_genes(s, model, tmp_path):
    table = s.tables[TABLE]
    table._inplace_subset_var(np.array([], dtype=int))
    return _fit(s, genes=2)


@case(ValueError, r"needs at least 2 spots with counts of the model genes, found 1 .*Train on more spots")
def _single_spot_fit(s, model, tmp_path):
    s.tables[TABLE]._inplace_subset_obs(np.array([0]))
    return _fit(s)


@case(KeyError, r"1 requested genes are missing from the table of slide `sample_1` .*\['NOPE'\].*measured on every")
def _genes_missing_at_fit(s, model, tmp_path):
    return _fit(s, genes=["G0", "NOPE"])


@case(ValueError, r"Only 5 candidate genes .* for `genes=50`\. Ask for fewer genes or pass a list")
def _more_genes_than_the_table_has(s, model, tmp_path):
    return _fit(s, genes=50)


# --- wrong objects
@case(TypeError, r"Expected `model` to be a hyperst\.HyperST, found `str`\. .*HyperST\.load\(path\)")
def _model_path_instead_of_model(s, model, tmp_path):
    return _predict(s, str(tmp_path / "model"))


@case(TypeError, r"SpatialData or AnnData object, found `dict`\. Read the slide with `spatialdata\.read_zarr\(path\)`")
def _not_a_spatialdata(s, model, tmp_path):
    return lambda: hst.tl.predict({"images": s.images}, model)


@case(ValueError, r"encoder gives \d+ features but the model reads 12.*HyperST\.load\(path, encoder=\.\.\.\)")
def _model_of_another_encoder(s, model, tmp_path):
    return _predict(s, _tiny(n_features=12))


@case(KeyError, r"Key `'hyperst'` not found in `sdata.tables\['table'\].layers`\. .*Run `hyperst.tl.predict` first")
def _evaluate_before_predict(s, model, tmp_path):
    return lambda: hst.tl.evaluate(s)


@case(ValueError, r"found negative values .*[Pp]ass the raw counts \(e\.g\. `counts_layer='counts'`\)")
def _evaluate_negative_counts(s, model, tmp_path):
    table = s.tables[TABLE]
    table.layers["hyperst"] = np.zeros(table.shape, dtype=np.float32)
    table.X[0, 0] = -3
    return lambda: hst.tl.evaluate(s)


# --- model files
@case(ValueError, r"`weights\.safetensors` in .* does not match its sha256 in `manifest\.json`.*Copy the model folder")
def _truncated_weights(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    file = folder / "weights.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return _load_and_predict(s, folder)


@case(ValueError, r"is not a readable safetensors file .*Copy the model folder again")
def _corrupted_weights_without_checksum(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    (folder / "weights.safetensors").write_bytes(b"\x00" * 64)
    _edit_config(folder, weights_sha256=None)
    return _load_and_predict(s, folder)


@case(ValueError, r"`config\.json` in .* does not match its sha256 in `manifest\.json`.*Copy the model folder")
def _truncated_config(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    return _load_and_predict(s, folder)


@case(ValueError, r"config\.json` is not valid JSON .*the model folder is corrupt\. Copy the model folder again")
def _truncated_config_behind_a_new_manifest(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    write_manifest(folder)
    return _load_and_predict(s, folder)


@case(ValueError, r"config\.json` does not describe a valid model \(KeyError: 'genes'\)\. Copy the model folder")
def _config_without_genes(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    _edit_config(folder, genes=None)
    return _load_and_predict(s, folder)


@case(ValueError, r"is not a hyperst model file \(no `format: 'hyperst-model'`\)\. Pass the folder written by")
def _foreign_model_file(s, model, tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 768}')
    return _load_and_predict(s, folder)


@case(FileNotFoundError, r"No weights in .*`weights\.safetensors` not found\. Copy the model folder again")
def _pickle_payload(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    torch.save({**state, "payload": _Payload(tmp_path / "pwned")}, folder / "weights.pt")
    (folder / "weights.safetensors").unlink()
    _edit_config(folder, weights_sha256=None)

    def call():
        try:
            return _load_and_predict(s, folder)()
        finally:
            assert not (tmp_path / "pwned").exists()  # the payload never ran

    return call


@case(
    ValueError,
    rf"written by hyperst 9\.0\.0 in format version 3; this is hyperst {re.escape(hst.__version__)}, which reads "
    r"format versions 1, 2\. Load it with the hyperst version that wrote it",
)
def _model_from_an_incompatible_version(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    _edit_config(folder, format_version=3, hyperst_version="9.0.0")
    return _load_and_predict(s, folder)


@case(ValueError, r"weights in `.*model` do not fit the architecture described in `config\.json` \(.*size mismatch")
def _weights_of_another_architecture(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    other = _tiny(n_features=20).save(tmp_path / "other")
    (folder / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    _edit_config(folder, weights_sha256=None)
    return _load_and_predict(s, folder)


@case(FileNotFoundError, r"No hyperst model at `.*weights\.safetensors`: it is a file, not a model folder\. Pass")
def _model_file_instead_of_folder(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    return _load_and_predict(s, folder / "weights.safetensors")


@case(FileNotFoundError, r"No hyperst model at `.*nowhere`: the folder does not exist\. Pass the folder written")
def _model_folder_missing(s, model, tmp_path):
    return _load_and_predict(s, tmp_path / "nowhere")


# --- model folders: the manifest (issue: a model file is exactly what was saved)
def _edited_config(folder: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta, indent=1))  # not re-signed


@case(ValueError, r"`config\.json` in `.*model` does not match its sha256 in `manifest\.json`.*Copy the model")
def _config_digit_changed(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    _edited_config(folder, lambda meta: meta["training"]["microns_per_pixel"].update(s0=1.5))
    return _load_and_predict(s, folder)


@case(ValueError, r"`config\.json` in `.*model` does not match its sha256 in `manifest\.json`")
def _gene_list_reversed(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    _edited_config(folder, lambda meta: meta.update(genes=meta["genes"][::-1]))
    return _load_and_predict(s, folder)


@case(FileNotFoundError, r"`.*manifest\.json` not found: the model folder is incomplete\. Copy the model folder")
def _manifest_missing(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    (folder / "manifest.json").unlink()
    return _load_and_predict(s, folder)


@case(ValueError, r"`.*manifest\.json` is damaged or was modified \(its digest does not match its list of files\)")
def _manifest_edited(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return _load_and_predict(s, folder)


@case(FileNotFoundError, r"`weights\.safetensors` not found in `.*model`, but `manifest\.json` lists it")
def _listed_weights_missing(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    (folder / "weights.safetensors").unlink()
    return _load_and_predict(s, folder)


@case(ValueError, r"`weights\.safetensors` in `.*model` does not match its sha256 in `manifest\.json`")
def _weights_linked_to_another_model(s, model, tmp_path):
    folder = _saved(model, tmp_path)
    other = _tiny(7, n_features=_n_features(), genes=("G0", "G1", "G2")).save(tmp_path / "other")
    (folder / "weights.safetensors").unlink()
    (folder / "weights.safetensors").symlink_to(other / "weights.safetensors")
    return _load_and_predict(s, folder)


# --- plot arguments
@case(ValueError, r"Expected `n_lines` to be a positive integer, found `0`")
def _poincare_n_lines_zero(s, model, tmp_path):
    hst.tl.predict(s, model, cache=False)
    return lambda: hst.pl.poincare(s, hierarchy=True, n_lines=0, show=False)


@case(TypeError, r"`hyperst\.pl\.poincare` takes no \['save'\] argument: it returns the Axes")
def _poincare_save_argument(s, model, tmp_path):
    hst.tl.predict(s, model, cache=False)
    return lambda: hst.pl.poincare(s, save="plot.png", show=False)


@case(KeyError, r"Key `'X_hyperst_poincare'` not found in `sdata\.tables\['table'\]\.obsm`\. .*Run `hyperst\.tl\.poinc")
def _poincare_before_predict(s, model, tmp_path):
    return lambda: hst.pl.poincare(s, show=False)


@case(KeyError, r"No predictions for genes \['NOPE'\] in `sdata\.tables\['table'\]\.layers\['hyperst'\]`.*Run `hyperst")
def _spatial_unknown_gene(s, model, tmp_path):
    hst.tl.predict(s, model, cache=False)
    return lambda: hst.pl.spatial(s, ["NOPE"], show=False)


@case(ValueError, r"Expected `genes` to name at least one gene, found an empty list")
def _spatial_no_genes(s, model, tmp_path):
    hst.tl.predict(s, model, cache=False)
    return lambda: hst.pl.spatial(s, [], show=False)


@case(ValueError, r"Expected `ax` to be 2 Axes \(1 genes x 2 panels\), found `1`")
def _spatial_wrong_number_of_axes(s, model, tmp_path):
    import matplotlib.pyplot as plt

    hst.tl.predict(s, model, cache=False)
    _, ax = plt.subplots()
    return lambda: hst.pl.spatial(s, ["G0"], ax=[ax], show=False)


@case(KeyError, r"Key `'hyperst_pcc'` not found in `sdata\.tables\['table'\]\.var`.*Run `hyperst\.tl\.evaluate")
def _gene_scores_before_evaluate(s, model, tmp_path):
    hst.tl.predict(s, model, cache=False)
    return lambda: hst.pl.gene_scores(s, show=False)


# --- settings
@case(TypeError, r"Expected `hyperst\.settings\.progress_bar` to be True or False, found `str`")
def _setting_progress_bar_not_a_bool(s, model, tmp_path):
    return lambda: setattr(hst.settings, "progress_bar", "yes")


@case(ValueError, r"Expected `hyperst\.settings\.num_workers` to be an integer >= 0, found `-1`")
def _setting_negative_workers(s, model, tmp_path):
    return lambda: setattr(hst.settings, "num_workers", -1)


@case(
    AttributeError,
    r"`hyperst\.settings` has no setting `seed`; the settings are \[.cache_dir., .feature_cache_mb., .num_workers.",
)
def _setting_that_does_not_exist(s, model, tmp_path):
    return lambda: setattr(hst.settings, "seed", 1)


def test_the_table_is_large():
    assert len(CASES) >= 25


@pytest.mark.parametrize(("corrupt", "error", "match"), CASES)
def test_bad_input_is_refused_and_leaves_the_slide_as_it_was(corrupt, error, match, sdata, model, tmp_path):
    call = corrupt(sdata, model, tmp_path)
    before = fingerprint(sdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(error, match=match) as info:
            call()
    assert type(info.value) is error  # not a subclass raised from deep inside (an IndexError is a LookupError)
    assert fingerprint(sdata) == before


# ------------------------------------------------------------------ the command line
def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _digest(np.frombuffer(p.read_bytes(), np.uint8))
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def stores(base_slide, tmp_path_factory):
    """A store of the slide, one without its table, a folder that is no store, and a truncated model folder."""
    root = tmp_path_factory.mktemp("cli")
    base_slide.write(root / "slide.zarr")
    no_table = copy.deepcopy(base_slide)
    del no_table.tables[TABLE]
    no_table.write(root / "no_table.zarr")
    (root / "not_a_store").mkdir()
    (root / "not_a_store" / "notes.txt").write_text("hello")
    _tiny(n_features=_n_features(), genes=("G0", "G1", "G2")).save(root / "model")
    broken = _tiny(n_features=_n_features(), genes=("G0", "G1", "G2")).save(root / "broken")
    file = broken / "weights.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    return root


CLI_CASES = [
    pytest.param(
        ["predict", "{root}/not_a_store", "--model", "{root}/model"], "not a readable SpatialData", id="no-store"
    ),
    pytest.param(
        ["predict", "{root}/slide.zarr", "--model", "{root}/broken"], "was modified or damaged", id="broken-model"
    ),
    pytest.param(["predict", "{root}/slide.zarr", "--model", "{root}/nowhere"], "No hyperst model at", id="no-model"),
    pytest.param(
        ["predict", "{root}/no_table.zarr", "--model", "{root}/model"], "Found no table of spots", id="no-table"
    ),
    pytest.param(["fit", "{root}/no_table.zarr", "--out", "{root}/out"], "Found no table of spots", id="fit-no-table"),
    pytest.param(
        ["fit", "{root}/slide.zarr", "--out", "{root}/out", "--encoder", "squidpy", "--genes", "50"],
        "Ask for fewer genes",
        id="fit-too-many-genes",
    ),
    pytest.param(["evaluate", "{root}/slide.zarr"], "run `hyperst predict` on it first", id="evaluate-unpredicted"),
    pytest.param(["evaluate", "{root}/nowhere.zarr"], "No SpatialData store at", id="evaluate-no-store"),
]


@pytest.mark.parametrize(("argv", "needle"), CLI_CASES)
def test_cli_refuses_bad_input_in_one_line_and_leaves_the_store(argv, needle, stores, capsys):
    argv = [a.format(root=stores) for a in argv]
    before = {name: _tree(stores / name) for name in ("slide.zarr", "no_table.zarr", "model")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith(f"hyperst {argv[0]}: error:") and needle in err, err
    assert len(err.splitlines()) == 1, err
    assert {name: _tree(stores / name) for name in before} == before
    assert not (stores / "out").exists()


# ------------------------------------------------------------------ handled, not refused
def test_all_zero_spots_are_left_out_of_training_and_predicted(sdata, model):
    table = sdata.tables[TABLE]
    table.X[:4] = 0  # e.g. spots over glass that QC kept
    before = fingerprint(sdata)
    fitted = hst.tl.fit(sdata, **FIT, **FIT_SMALL)
    assert fingerprint(sdata) == before
    assert fitted.training.n_spots == {"sample_1": table.n_obs - 4}
    result = hst.tl.predict(sdata, fitted, inplace=False, cache=False)
    assert fingerprint(sdata) == before
    assert result.n_obs == table.n_obs and np.isfinite(result.X).all()


def test_a_single_spot_is_predicted_and_is_its_own_niche(sdata, model):
    sdata.tables[TABLE]._inplace_subset_obs(np.array([7]))
    before = fingerprint(sdata)
    conn, dist = hst.pp.niche_graph(sdata, inplace=False)
    assert conn.shape == dist.shape == (1, 1) and conn.nnz == 0
    result = hst.tl.predict(sdata, model, inplace=False, cache=False)
    assert fingerprint(sdata) == before
    assert result.shape == (1, 3) and np.isfinite(result.X).all()
    assert list(result.obs["spot_id"]) == [107]
    hst.pp.niche_graph(sdata)  # in place: an empty graph and its parameters
    table = sdata.tables[TABLE]
    assert table.obsp["hyperst_connectivities"].nnz == 0
    assert table.uns["hyperst_neighbors"]["params"]["grid"] == "none"


def test_genes_missing_at_predict_time_are_still_predicted(sdata, model, caplog):
    table = sdata.tables[TABLE]
    table._inplace_subset_var(np.array([1, 3, 4]))  # keeps G1 of the model's G0, G1, G2
    before = fingerprint(sdata)
    result = hst.tl.predict(sdata, model, inplace=False, cache=False)
    assert fingerprint(sdata) == before
    assert list(result.var_names) == ["G0", "G1", "G2"] and np.isfinite(result.X).all()
    assert "X_hyperst_gene" not in result.obsm  # the gene side needs every model gene
    with caplog.at_level("INFO", logger="hyperst"):
        hst.tl.predict(sdata, model, cache=False)
    assert "No gene embeddings" in caplog.text and "2 of the 3 model genes are missing" in caplog.text
    assert list(table.var_names[table.var["hyperst_predicted"]]) == ["G1"]
    layer = table.layers["hyperst"]
    assert np.isfinite(layer[:, 0]).all() and np.isnan(layer[:, 1:]).all()


def test_a_slide_at_another_pixel_size_is_predicted_with_a_warning(model):
    sdata = _visium(mpp=0.5)  # the model was trained at 1 µm/px: patches stay 112 µm, so this is a 224 px crop
    before = fingerprint(sdata)
    msg = (
        r"pixel size 0\.500 µm/px, outside the accepted 0\.667-2\.000 µm/px \(the training slides. 1\.000-1\.000 µm/px"
    )
    with pytest.warns(UserWarning, match=msg):
        result = hst.tl.predict(sdata, model, inplace=False, cache=False)
    assert fingerprint(sdata) == before
    prov = result.uns["hyperst"]
    assert prov["microns_per_pixel"] == pytest.approx(0.5) and prov["spot_patch_um"] == 112
    assert prov["qc"]["checks"]["microns_per_pixel"]["ok"] is False


def test_an_image_smaller_than_one_patch_is_padded(model):
    rng = np.random.default_rng(3)
    image = rng.integers(60, 250, size=(3, 48, 48), dtype=np.uint8)  # 48 µm across, patches are 112 µm
    small = make_slide(image, np.array([[12.0, 12.0], [30.0, 20.0], [24.0, 36.0]]), radius=5.0)
    before = fingerprint(small)
    result = hst.tl.predict(small, model, inplace=False, cache=False, microns_per_pixel=1.0)
    assert fingerprint(small) == before
    assert result.shape == (3, 3) and np.isfinite(result.X).all()


def test_tile_reads_rgba_and_float_images_by_their_rgb_channels(sdata):
    from spatialdata import SpatialData

    px = _pixels(sdata)
    counts = []
    for arr in (px, np.concatenate([px, np.full_like(px[:1], 255)]), px.astype(np.float32) / 255):
        only = SpatialData(images={"he": _image(arr)})
        before = fingerprint(only)
        circles, table = hst.pp.tile(only, microns_per_pixel=1.0, inplace=False)
        assert fingerprint(only) == before
        counts.append(table.n_obs)
        assert len(circles) == table.n_obs
    assert counts[0] > 0 and counts[1] == counts[0] and counts[2] == counts[0]  # saturation ignores the scale


# ------------------------------------------------------------------ a "pass X=" hint works as written
def _counts_moved_to_a_layer(s, *, x_none: bool) -> None:
    table = s.tables[TABLE]
    table.layers["counts"] = table.X.copy()
    if x_none:
        table.X = None
    else:
        table.X[:] = 0


def _irregular(s) -> None:
    from shapely.geometry import Point

    gdf = s.shapes[SHAPES]
    xy = np.random.default_rng(0).uniform(300, 600, size=(len(gdf), 2))
    gdf["geometry"] = [Point(x, y) for x, y in xy]


HINTS = [  # (prepare the slide, call, the option the message suggests, its value)
    pytest.param(
        lambda s: s.images.__setitem__("other", _image(_pixels(s).copy())),
        "predict",
        "image_key",
        "sample_1_full_image",
        id="image_key",
    ),
    pytest.param(
        lambda s: s.tables.__setitem__("table2", s.tables[TABLE].copy()), "fit", "table_key", TABLE, id="table_key"
    ),
    pytest.param(lambda s: _counts_moved_to_a_layer(s, x_none=True), "fit", "layer", "counts", id="layer-X-none"),
    pytest.param(lambda s: _counts_moved_to_a_layer(s, x_none=False), "fit", "layer", "counts", id="layer-zeros"),
    pytest.param(lambda s: None, "fit-layer-counts", "layer", None, id="layer-None"),
    pytest.param(_irregular, "predict", "microns_per_pixel", 1.0, id="microns_per_pixel"),
]


@pytest.mark.parametrize(("prepare", "call", "option", "value"), HINTS)
def test_the_option_a_message_suggests_works(prepare, call, option, value, sdata, model):
    prepare(sdata)
    run = {
        "predict": lambda **kw: hst.tl.predict(sdata, model, cache=False, **kw),
        "fit": lambda **kw: hst.tl.fit(sdata, **{**FIT, **FIT_SMALL, **kw}),
        "fit-layer-counts": lambda **kw: hst.tl.fit(sdata, **{**FIT, **FIT_SMALL, "layer": "counts", **kw}),
    }[call]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises((ValueError, KeyError), match=rf"[Pp]ass `{option}="):
            run()
        run(**{option: value})  # the suggested call, as the message words it, goes through


def test_overwrite_hint_works(tmp_path):
    path = _tiny().save(tmp_path / "m")
    with pytest.raises(FileExistsError, match=r"Pass `overwrite=True`"):
        _tiny(1).save(path, overwrite=False)
    _tiny(1).save(path, overwrite=True)
    assert hst.HyperST.load(path).fingerprint() == _tiny(1).fingerprint()
