"""Model files (`HyperST.save` / `HyperST.load`) and the SpatialData zarr round trip of `hst.tl.predict` outputs."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import hyperst as hst
from hyperst._data import slide_layout
from hyperst._model_files import write_manifest
from hyperst._records import EncoderRecord, TrainingRecord
from hyperst.nn import HyperSTModule, ModuleConfig

# Small on purpose: these tests check files and keys, not accuracy (tests/test_tl.py checks the fit itself).
FIT = {"genes": 20, "max_epochs": 2, "batch_size": 64, "embed_dim": 16, "views": 1, "patch_px": 64, "random_state": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def io_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("io_features")


@pytest.fixture(scope="module")
def io_slides():
    return hst.datasets.synthetic(n_slides=2, n_spots=80, n_genes=40, seed=1)


@pytest.fixture(scope="module")
def squidpy_model(io_slides, io_cache):
    return hst.tl.fit(io_slides[0], encoder="squidpy", cache=io_cache, **FIT)


@pytest.fixture(scope="module")
def resnet_slides():
    return hst.datasets.synthetic(n_slides=2, n_spots=40, n_genes=40, seed=2)  # a CNN on CPU: few spots


@pytest.fixture(scope="module")
def resnet_model(resnet_slides):
    # random weights cannot be rebuilt from the encoder's name: they must travel in `encoder.safetensors`
    return hst.tl.fit(resnet_slides[0], encoder="resnet18", weights=None, cache=False, **FIT)


@pytest.fixture
def new_slide(io_slides):
    return copy.deepcopy(io_slides[1])


def _tiny(seed: int = 0, *, n_features: int = 12, genes: tuple[str, ...] = ("GA", "GB", "GC")) -> hst.HyperST:
    """A HyperST built by hand (instant): enough for everything that does not need a trained model."""
    torch.manual_seed(seed)
    mcfg = ModuleConfig(embed_dim=16)
    return hst.HyperST(
        module=HyperSTModule(n_features, len(genes), mcfg),
        config=hst.HyperSTConfig(module=mcfg, embed_dim_auto=False, patch_px=64, views=1),
        genes=list(genes),
        encoder=EncoderRecord(name="squidpy", n_features=n_features),
        training=TrainingRecord(slides=("s0",), microns_per_pixel={"s0": 1.0}),
        history=[{"epoch": 0, "train_loss": 1.25, "val_loss": float("nan")}],
    )


def _same_state(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _assert_same_model(a: hst.HyperST, b: hst.HyperST) -> None:
    _same_state(a.module, b.module)
    assert b.genes == a.genes
    assert b.config == a.config
    assert b.encoder == a.encoder
    assert b.training == a.training
    assert json.dumps(b.history) == json.dumps(a.history)  # NaN-safe equality
    assert b.fingerprint() == a.fingerprint()
    assert not b.module.training


def _outputs(result) -> dict[str, np.ndarray]:
    out = {"X": np.asarray(result.X)}
    out.update({f"obsm/{k}": np.asarray(v) for k, v in result.obsm.items()})
    out["obs/hyperst_radius"] = result.obs["hyperst_radius"].to_numpy()
    return out


def _edit_config(folder, **changes) -> None:
    file = folder / "config.json"
    meta = json.loads(file.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    file.write_text(json.dumps(meta))
    write_manifest(folder)  # a consistent folder, as if saved so: the checks behind the manifest are reached


# ------------------------------------------------------------------ round trips
def test_squidpy_model_round_trip_predicts_identically(squidpy_model, new_slide, io_cache, tmp_path):
    before = hst.tl.predict(new_slide, squidpy_model, inplace=False, cache=io_cache)
    path = squidpy_model.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "manifest.json", "weights.safetensors"]
    loaded = hst.HyperST.load(path)
    _assert_same_model(squidpy_model, loaded)
    assert loaded.encoder.state is None
    after = hst.tl.predict(new_slide, loaded, inplace=False, cache=io_cache)
    a, b = _outputs(before), _outputs(after)
    assert {"obsm/X_hyperst", "obsm/X_hyperst_niche", "obsm/X_hyperst_gene", "obsm/X_hyperst_gene_niche"} <= set(a)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert after.uns["hyperst"]["model_hash"] == before.uns["hyperst"]["model_hash"]
    assert after.uns["hyperst"]["curvature"] == before.uns["hyperst"]["curvature"]


def test_random_weight_encoder_travels_with_the_model(resnet_model, resnet_slides, tmp_path):
    assert resnet_model.encoder.name == "resnet18" and resnet_model.encoder.weights is None
    new_slide = copy.deepcopy(resnet_slides[1])
    before = hst.tl.predict(new_slide, resnet_model, inplace=False, cache=False)
    path = resnet_model.save(tmp_path / "model")
    assert (path / "encoder.safetensors").is_file()
    loaded = hst.HyperST.load(path)
    _assert_same_model(resnet_model, loaded)
    _same_state(resnet_model.encoder.state, loaded.encoder.state)
    # features recomputed from pixels (no cache): only the stored encoder weights can reproduce them
    after = hst.tl.predict(new_slide, loaded, inplace=False, cache=False)
    a, b = _outputs(before), _outputs(after)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # without its encoder file the model cannot be used: refuse instead of drawing new random weights
    (path / "encoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"`encoder\.safetensors` not found"):
        hst.HyperST.load(path)


class _TinyBackbone(torch.nn.Module):
    """A user's own feature extractor: ``(B, 3, H, W)`` -> ``(B, 6)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_custom_encoder_needs_its_module_and_keeps_its_weights(new_slide, tmp_path):
    from hyperst.nn import ImageEncoder

    torch.manual_seed(3)
    backbone = _TinyBackbone()
    wrapped = ImageEncoder(backbone, input_size=64)
    model = _tiny(n_features=wrapped.n_features)
    state = {k: v.detach().clone() for k, v in wrapped.state_dict().items()}
    model.encoder = EncoderRecord.from_dict(wrapped.spec.to_dict(), state=state, module=backbone)
    before = hst.tl.predict(new_slide, model, inplace=False, cache=False)
    path = model.save(tmp_path / "m")

    with pytest.raises(ValueError, match=r"custom encoder module \(`custom:_TinyBackbone`\).*encoder=\.\.\."):
        hst.tl.predict(new_slide, hst.HyperST.load(path), cache=False)
    # a freshly initialised module of the same class gets the stored weights
    loaded = hst.HyperST.load(path, encoder=_TinyBackbone())
    after = hst.tl.predict(new_slide, loaded, inplace=False, cache=False)
    np.testing.assert_array_equal(before.X, after.X)
    np.testing.assert_array_equal(before.obsm["X_hyperst"], after.obsm["X_hyperst"])


def test_predict_refuses_random_encoder_weights_that_were_not_stored(new_slide):
    model = _tiny(n_features=512)
    model.encoder = EncoderRecord(name="resnet18", weights=None, n_features=512)
    with pytest.raises(ValueError, match=r"`resnet18` encoder had random weights that are not stored"):
        hst.tl.predict(new_slide, model, cache=False)


def test_tiny_model_round_trip(tmp_path):
    model = _tiny()
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    model.encoder = EncoderRecord(name="squidpy", n_features=12, state=state)
    loaded = hst.HyperST.load(model.save(tmp_path / "m"))
    _assert_same_model(model, loaded)
    _same_state(model.encoder.state, loaded.encoder.state)
    assert loaded.device == torch.device("cpu")


# ------------------------------------------------------------------ atomic save
def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


_DISK_FULL = "disk full"


@pytest.mark.parametrize("crash", ["weights", "config", "move"])
def test_crash_mid_save_keeps_the_previous_model(tmp_path, monkeypatch, crash):
    import safetensors.torch

    from hyperst import _model

    first, second = _tiny(0), _tiny(1)
    path = first.save(tmp_path / "m")

    if crash == "weights":
        real = safetensors.torch.save_file

        def boom(*args, **kwargs):
            real(*args, **kwargs)  # half the job done, then the crash
            raise OSError(_DISK_FULL)

        monkeypatch.setattr(safetensors.torch, "save_file", boom)
    elif crash == "config":

        def boom(*args, **kwargs):
            raise OSError(_DISK_FULL)

        monkeypatch.setattr(_model.json, "dumps", boom)
    else:  # crash between moving the old folder aside and moving the new one in
        real_replace = os.replace

        def boom(src, dst, *args, **kwargs):
            if ".tmp-" in os.fspath(src):
                raise OSError(_DISK_FULL)
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(_model.os, "replace", boom)

    with pytest.raises(OSError, match="disk full"):
        second.save(path)
    monkeypatch.undo()

    assert _leftovers(tmp_path) == []
    loaded = hst.HyperST.load(path)
    _same_state(first.module, loaded.module)
    with pytest.raises(AssertionError):
        _same_state(second.module, loaded.module)  # the failed save really had different weights


def test_save_overwrites_only_models(tmp_path):
    first, second = _tiny(0), _tiny(1)
    path = first.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match=r"exists\. Pass `overwrite=True`"):
        second.save(path, overwrite=False)
    _same_state(first.module, hst.HyperST.load(path).module)
    second.save(path)  # overwrite=True (default) replaces a model folder
    _same_state(second.module, hst.HyperST.load(path).module)
    assert _leftovers(tmp_path) == []
    # a folder that is not a model is never deleted, even with overwrite=True
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a hyperst model folder"):
        first.save(other)
    assert (other / "notes.txt").read_text() == "keep me"
    # an empty folder is fine
    (tmp_path / "empty").mkdir()
    hst.HyperST.load(first.save(tmp_path / "empty"))


# ------------------------------------------------------------------ refusals
@pytest.fixture
def saved(tmp_path):
    return _tiny().save(tmp_path / "m")


def test_load_refuses_a_missing_model(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match=r"No hyperst model at `.*nope`: the folder does not exist"):
        hst.HyperST.load(tmp_path / "nope")
    (saved / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"`config\.json` not found"):
        hst.HyperST.load(saved)


def test_load_refuses_a_config_that_is_not_json(saved):
    (saved / "config.json").write_bytes(b"\x80PK\x03\x04 not json")
    with pytest.raises(ValueError, match=r"`config\.json` in .* does not match its sha256 in `manifest\.json`"):
        hst.HyperST.load(saved)
    write_manifest(saved)
    with pytest.raises(ValueError, match="is not valid JSON"):
        hst.HyperST.load(saved)
    (saved / "config.json").write_text('{"format": "hyperst-model", ')
    write_manifest(saved)
    with pytest.raises(ValueError, match="is not valid JSON"):
        hst.HyperST.load(saved)


@pytest.mark.parametrize("content", ['{"model_type": "bert", "hidden_size": 768}', "[1, 2, 3]", '"hyperst-model"'])
def test_load_refuses_foreign_json(saved, content):
    (saved / "config.json").write_text(content)
    write_manifest(saved)
    with pytest.raises(ValueError, match=r"is not a hyperst model file \(no `format: 'hyperst-model'`\)"):
        hst.HyperST.load(saved)


def test_load_refuses_a_format_from_the_future(saved):
    _edit_config(saved, format_version=99, hyperst_version="99.1.0")
    msg = rf"written by hyperst 99\.1\.0 in format version 99; this is hyperst {re.escape(hst.__version__)},"
    with pytest.raises(ValueError, match=msg):
        hst.HyperST.load(saved)


def test_load_refuses_truncated_weights(saved):
    file = saved / "weights.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"`weights\.safetensors` in .* does not match its sha256 in `manifest"):
        hst.HyperST.load(saved)
    # behind a manifest that vouches for the truncated file, the checksum in config.json still refuses it
    write_manifest(saved)
    with pytest.raises(ValueError, match="does not match the checksum in `config.json`"):
        hst.HyperST.load(saved)
    # without the checksum, safetensors itself refuses the file
    _edit_config(saved, weights_sha256=None)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        hst.HyperST.load(saved)


def test_load_refuses_modified_weights(saved):
    file = saved / "weights.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="was modified or damaged after the model was saved"):
        hst.HyperST.load(saved)


def test_load_refuses_weights_of_another_architecture(saved, tmp_path):
    other = _tiny(n_features=20).save(tmp_path / "other")
    shutil.copy(other / "weights.safetensors", saved / "weights.safetensors")
    _edit_config(saved, weights_sha256=None)
    with pytest.raises(ValueError, match="do not fit the architecture described in `config.json`"):
        hst.HyperST.load(saved)


class _Payload:
    """Pickles to a call of ``os.system``: what a malicious ``weights.pt`` would carry."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_never_reads_a_pickled_weights_file(saved, tmp_path):
    # only safetensors are read: a pickle beside them, even one that runs code when unpickled, is never opened
    marker = tmp_path / "pwned"
    state = {k: v.clone() for k, v in _tiny().module.state_dict().items()}
    torch.save({**state, "payload": _Payload(marker)}, saved / "weights.pt")
    (saved / "weights.safetensors").unlink()
    _edit_config(saved, weights_sha256=None)
    with pytest.raises(FileNotFoundError, match=r"`weights\.safetensors` not found"):
        hst.HyperST.load(saved)
    assert not marker.exists()


# ------------------------------------------------------------------ SpatialData round trip
def _assert_equal_values(a, b, what: str) -> None:
    import scipy.sparse as sp

    if sp.issparse(a) or sp.issparse(b):
        assert sp.issparse(a) and sp.issparse(b), what
        a, b = a.toarray(), b.toarray()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


def _assert_same_uns(a, b, what: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), what
        for k in a:
            _assert_same_uns(a[k], b[k], f"{what}/{k}")
    elif isinstance(a, list | tuple | np.ndarray):
        assert list(np.asarray(a).ravel()) == list(np.asarray(b).ravel()), what
    else:
        assert a == b, what


def test_spatialdata_write_read_keeps_hyperst_outputs(squidpy_model, new_slide, io_cache, tmp_path):
    from spatialdata import read_zarr

    hst.tl.predict(new_slide, squidpy_model, cache=io_cache)
    new_slide.write(tmp_path / "s.zarr")
    back = read_zarr(tmp_path / "s.zarr")

    src, dst = new_slide.tables["table"], back.tables["table"]
    for key in ("X_hyperst", "X_hyperst_niche", "X_hyperst_gene", "X_hyperst_gene_niche", "X_hyperst_poincare"):
        assert dst.obsm[key].dtype == src.obsm[key].dtype, key
        _assert_equal_values(src.obsm[key], dst.obsm[key], key)
    _assert_equal_values(src.obs["hyperst_radius"], dst.obs["hyperst_radius"], "radius")
    for key in ("hyperst_connectivities", "hyperst_distances"):
        _assert_equal_values(src.obsp[key], dst.obsp[key], key)
    layer = dst.layers["hyperst"]
    assert np.isnan(layer).any()
    _assert_equal_values(src.layers["hyperst"], layer, "layer")  # NaNs compare equal here
    _assert_equal_values(src.var["hyperst_predicted"], dst.var["hyperst_predicted"], "predicted")
    assert dst.var["hyperst_predicted"].dtype == bool
    prov = dst.uns["hyperst"]
    _assert_same_uns(src.uns["hyperst"], prov, "uns")
    assert list(prov["genes"]) == squidpy_model.genes
    assert float(prov["curvature"]) == pytest.approx(squidpy_model.curvature)

    out_src, out_dst = new_slide.tables["hyperst"], back.tables["hyperst"]
    assert bool(out_dst.uns["hyperst_output_table"]) is True
    assert list(out_dst.var_names) == squidpy_model.genes
    _assert_equal_values(out_src.X, out_dst.X, "output X")
    for key in out_src.obsm:
        _assert_equal_values(out_src.obsm[key], out_dst.obsm[key], f"output {key}")

    # the input table is still the one element inference picks, and predicting again works
    assert slide_layout(back).elements.table_key == "table"
    hst.tl.predict(back, squidpy_model, cache=io_cache)
    np.testing.assert_array_equal(back.tables["hyperst"].X, out_src.X)
    assert set(back.tables) == {"table", "hyperst"}


# ------------------------------------------------------------------ repr
def test_repr_and_curvature(squidpy_model):
    text = repr(squidpy_model)
    assert "20 genes" in text and "encoder='squidpy'" in text and "curv=" in text
    # the held-out run and the refit are both named: their epoch counts differ
    training = squidpy_model.training
    assert f"epochs={len(squidpy_model.history)}, best_epoch={training.best_epoch}" in text
    assert training.refit_epochs is not None and f"refit_epochs={training.refit_epochs}" in text
    assert 0.1 <= squidpy_model.curvature <= 10
    tiny = _tiny()
    assert repr(tiny).startswith("HyperST(3 genes, encoder='squidpy'") and "curv=1" in repr(tiny)
    euclid = hst.HyperST(
        module=HyperSTModule(12, 3, ModuleConfig(embed_dim=16, geometry="euclidean")),
        config=hst.HyperSTConfig(module=ModuleConfig(embed_dim=16, geometry="euclidean")),
        genes=["a", "b", "c"],
        encoder=EncoderRecord(name="squidpy", n_features=12),
    )
    assert euclid.curvature is None and "curv=" not in repr(euclid)


# ------------------------------------------------------------------ files of format version 1
V1 = Path(__file__).parent / "data"


def test_a_format_1_model_file_loads_and_predicts_the_same_numbers():
    # `tests/data/model_v1` was saved by hyperst before the typed records (commit c618bce, format version 1),
    # with the predictions that code made on the third of `synthetic(n_slides=3, n_spots=120, seed=3)`
    meta = json.loads((V1 / "model_v1" / "config.json").read_text())
    assert meta["format_version"] == 1 and isinstance(meta["training"], dict)
    model = hst.HyperST.load(V1 / "model_v1")
    assert isinstance(model.encoder, EncoderRecord) and model.encoder.name == "squidpy"
    assert model.encoder.fingerprint is None  # version 1 did not record one
    assert isinstance(model.training, TrainingRecord) and model.training.slides == tuple(meta["training"]["slides"])
    assert model.training.calibration == meta["training"]["calibration"]
    slide = hst.datasets.synthetic(n_slides=3, n_spots=120, seed=3)[2]
    hst.tl.predict(slide, model, cache=False)
    expected = np.load(V1 / "model_v1_predictions.npz")
    table = slide.tables["table"]
    # the same numbers up to float32 rounding: the file's were computed with an older torch, whose CPU kernels may
    # round a matmul differently in the last bit (with torch 2.14, 165 of 960 values differ by 1 ulp); a wrong
    # weight, gene order or standardisation moves them by far more
    same = {"rtol": 1e-6, "atol": 1e-6}
    np.testing.assert_allclose(np.asarray(slide.tables["hyperst"].X), expected["pred"], **same)
    np.testing.assert_allclose(table.obsm["X_hyperst"], expected["emb"], **same)
    np.testing.assert_allclose(table.layers["hyperst_lower"], expected["lower"], **same)  # NaN: genes not predicted


def test_saving_a_format_1_model_writes_the_current_format(tmp_path):
    from hyperst._model import FORMAT_VERSION

    model = hst.HyperST.load(V1 / "model_v1")
    path = model.save(tmp_path / "again")
    assert json.loads((path / "config.json").read_text())["format_version"] == FORMAT_VERSION
    _assert_same_model(model, hst.HyperST.load(path))


@pytest.mark.parametrize(
    ("encoder", "expected"),
    [
        ({"name": "squidpy", "weights": None, "n_features": 55}, {"input_size": None, "lora": None}),
        (
            {
                "name": "resnet18",
                "weights": None,
                "n_features": 512,
                "input_size": 224,
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
                "lora": {"last_n_blocks": 2, "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["layer4.1.conv1"]},
            },
            {
                "input_size": 224,
                "mean": (0.5, 0.5, 0.5),
                "lora": {"last_n_blocks": 2, "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["layer4.1.conv1"]},
            },
        ),
    ],
)
def test_format_1_encoder_specs_read_as_records(encoder, expected):
    from hyperst._model import _from_v1

    meta = _from_v1({"format_version": 1, "encoder": encoder, "training": {"best_epoch": 3}})
    record = EncoderRecord.from_dict(meta["encoder"])
    assert record.name == encoder["name"] and record.n_features == encoder["n_features"]
    for key, value in expected.items():
        assert getattr(record, key) == value, key
    assert TrainingRecord.from_dict(meta["training"]).best_epoch == 3


# ------------------------------------------------------------------ the manifest covers every file
def test_manifest_lists_every_file_of_the_folder(saved, tmp_path):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["config.json", "weights.safetensors"]
    model = _tiny()
    model.encoder = EncoderRecord(name="squidpy", n_features=12, state={"w": torch.ones(2)})
    with_encoder = model.save(tmp_path / "enc")
    assert sorted(json.loads((with_encoder / "manifest.json").read_text())["files"]) == [
        "config.json",
        "encoder.safetensors",
        "weights.safetensors",
    ]


def test_a_changed_config_is_refused_naming_the_file(saved):
    # one character of config.json changed in place, as a bit flip would: the training pixel size 1.0 -> 1.5
    text = (saved / "config.json").read_text()
    assert text.count('"s0": 1.0') == 1
    (saved / "config.json").write_text(text.replace('"s0": 1.0', '"s0": 1.5'))
    with pytest.raises(ValueError, match=r"`config\.json` in .* does not match its sha256 in `manifest\.json`"):
        hst.HyperST.load(saved)


def test_a_reversed_gene_list_is_refused(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["genes"] = meta["genes"][::-1]  # same length: the architecture still fits, the names would be wrong
    (saved / "config.json").write_text(json.dumps(meta, indent=1))
    with pytest.raises(ValueError, match=r"`config\.json` .* was modified or damaged"):
        hst.HyperST.load(saved)


def test_a_changed_manifest_is_refused(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["config.json"] = "0" * 64
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"`.*manifest\.json` is damaged or was modified"):
        hst.HyperST.load(saved)
    (saved / "manifest.json").write_text("not json")
    with pytest.raises(ValueError, match=r"`.*manifest\.json` is damaged or was modified"):
        hst.HyperST.load(saved)


def test_a_missing_listed_file_is_refused_naming_it(saved):
    (saved / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"`weights\.safetensors` not found in .*`manifest\.json` lists it"):
        hst.HyperST.load(saved)


def test_a_current_folder_without_its_manifest_is_refused(saved):
    (saved / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"`.*manifest\.json` not found: the model folder is incomplete"):
        hst.HyperST.load(saved)


def test_extra_files_are_not_read_and_are_named(saved, caplog):
    (saved / "notes.txt").write_text("trained on run 7")
    (saved / "weights.pt").write_bytes(b"never opened")
    with caplog.at_level("WARNING", logger="hyperst"):
        model = hst.HyperST.load(saved)
    _assert_same_model(_tiny(), model)
    assert "['notes.txt', 'weights.pt'], which are not part of the model and are not read" in caplog.text


def test_symlinked_files_are_read_when_their_content_matches(saved, tmp_path):
    # git-annex and DVC leave files as links into a store: the content is what the manifest checks
    store = tmp_path / "store"
    store.mkdir()
    for name in ("config.json", "weights.safetensors"):
        (saved / name).rename(store / name)
        (saved / name).symlink_to(store / name)
    _assert_same_model(_tiny(), hst.HyperST.load(saved))
    other = _tiny(5).save(tmp_path / "other")
    (saved / "weights.safetensors").unlink()
    (saved / "weights.safetensors").symlink_to(other / "weights.safetensors")  # a link to other weights
    with pytest.raises(ValueError, match=r"`weights\.safetensors` in .* does not match its sha256"):
        hst.HyperST.load(saved)


def test_a_format_1_folder_loads_with_a_note_that_config_is_unchecked(caplog):
    with caplog.at_level("WARNING", logger="hyperst"):
        hst.HyperST.load(V1 / "model_v1")
    assert "without a manifest: changes to `config.json` cannot be detected" in caplog.text
    assert "HyperST.load(path).save(path)" in caplog.text
