"""`hst.tl.fit(..., finetune="lora")`: LoRA adapters trained on patches read on the fly, stored, and rebuilt."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import hyperst as hst
from hyperst._data import dihedral
from hyperst._data._dataset import PatchDataset
from hyperst._train import _LitFinetune
from hyperst.nn import apply_lora, build_encoder
from hyperst.tl._fit_setup import split_slides as _split
from hyperst.tl._prepare import geometry_from, load_slide

# A random-weight resnet18 (8 blocks, so `lora_blocks` must be lowered from UNI's 11) on tiny slides: seconds.
FIT = {
    "genes": 10,
    "encoder": "resnet18",
    "weights": None,
    "finetune": "lora",
    "lora_blocks": 2,
    "patch_px": 64,
    "max_epochs": 2,
    "embed_dim": 16,
    "batch_size": 32,
    "random_state": 0,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def slides():
    return hst.datasets.synthetic(n_slides=2, n_spots=60, n_genes=40, seed=0)


@pytest.fixture(scope="module")
def fitted(slides):
    """The fine-tuned model, and the train/eval modes of the encoder's layers seen in each training step."""
    modes = []
    features = _LitFinetune._features

    def spy(self, batch):
        if self.training:
            layers = dict(self.encoder.backbone.named_modules())
            modes.append(
                {
                    "batch_norm": {m.training for m in layers.values() if isinstance(m, torch.nn.BatchNorm2d)},
                    "lora_dropout": {m.training for n, m in layers.items() if n.endswith("lora_dropout.default")},
                }
            )
        return features(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_LitFinetune, "_features", spy)
        model = hst.tl.fit(slides[0], **FIT)
    return model, modes


@pytest.fixture(scope="module")
def lora_model(fitted):
    return fitted[0]


def _initial_encoder() -> hst.nn.ImageEncoder:
    """The encoder `fit` starts from: same seed, same random backbone, same adapter initialisation."""
    torch.manual_seed(FIT["random_state"])
    return apply_lora(build_encoder("resnet18", weights=None), last_n_blocks=2, r=8, alpha=16, dropout=0.1)


def _outputs(result) -> dict[str, np.ndarray]:
    out = {"X": np.asarray(result.X)}
    out.update({f"obsm/{k}": np.asarray(v) for k, v in result.obsm.items()})
    return out


def test_fit_trains_only_the_adapters(lora_model):
    assert len(lora_model.history) == 2 and "val_loss" in lora_model.history[0]
    assert lora_model.config.lora_blocks == 2
    lora = lora_model.encoder.lora
    assert lora["last_n_blocks"] == 2 and lora["r"] == 8 and lora["alpha"] == 16
    assert lora["target_modules"][0] == "layer4.0.conv1"
    record = lora_model.encoder.to_dict()
    assert json.loads(json.dumps(record)) == record  # stored in config.json
    init, state = _initial_encoder().state_dict(), lora_model.encoder.state
    assert sorted(state) == sorted(init)
    adapters = [k for k in init if "lora_" in k]
    assert adapters and all(k.startswith("backbone.layer4.") for k in adapters)
    # every adapter moved (B starts at zero), every other weight and batch-norm statistic is untouched
    assert all(not torch.equal(state[k], init[k]) for k in adapters)
    assert all(state[k].abs().sum() > 0 for k in adapters if "lora_B" in k)
    for k in init:
        if "lora_" not in k:
            assert torch.equal(state[k], init[k]), k


def test_encoder_modes_during_training(fitted):
    _, modes = fitted
    assert modes  # every training step: frozen batch norm, adapters (their dropout) in training mode
    assert all(m["batch_norm"] == {False} and m["lora_dropout"] == {True} for m in modes)


def test_lora_model_predicts_every_spot(lora_model, slides):
    result = hst.tl.predict(copy.deepcopy(slides[1]), lora_model, inplace=False, cache=False)
    assert result.shape == (slides[1].tables["table"].n_obs, 10)
    assert np.isfinite(result.X).all() and np.isfinite(result.obsm["X_hyperst"]).all()
    assert result.uns["hyperst"]["encoder"]["lora"]["last_n_blocks"] == 2


def test_rebuilt_encoder_reproduces_the_validation_of_the_fit(lora_model, slides):
    # `fit` scored its held-out spots with the trained encoder in memory; `predict` rebuilds it from the
    # stored state: the same per-gene correlations show that the adapters (of the best epoch) were stored
    slide = load_slide(slides[0], table_key=None, image_key=None, shapes_key=None, microns_per_pixel=None)
    counts = slide.table[:, lora_model.genes].X
    truth = np.log2(1 + np.asarray(counts.todense() if hasattr(counts, "todense") else counts, dtype=np.float32))
    keep = np.flatnonzero(truth.sum(1) > 0)
    (_, val_rows), *_ = _split([slide], [keep], lora_model.config)[1]
    pred = hst.tl.predict(copy.deepcopy(slides[0]), lora_model, inplace=False, cache=False).X[val_rows]
    p, t = pred - pred.mean(0), truth[val_rows] - truth[val_rows].mean(0)
    pcc = (p * t).sum(0) / np.sqrt((p**2).sum(0) * (t**2).sum(0))
    expected = np.array([np.nan if v is None else v for v in lora_model.training.val_pcc])
    np.testing.assert_allclose(pcc, expected, atol=1e-4)


def test_save_load_predicts_identically(lora_model, slides, tmp_path):
    before = hst.tl.predict(copy.deepcopy(slides[1]), lora_model, inplace=False, cache=False)
    path = lora_model.save(tmp_path / "model")
    assert (path / "encoder.safetensors").is_file()
    loaded = hst.HyperST.load(path)
    assert loaded.encoder == lora_model.encoder and loaded.config == lora_model.config
    assert sorted(loaded.encoder.state) == sorted(lora_model.encoder.state)
    # features recomputed from pixels (no cache) by the encoder rebuilt with its adapters
    after = hst.tl.predict(copy.deepcopy(slides[1]), loaded, inplace=False, cache=False)
    a, b = _outputs(before), _outputs(after)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_best_epoch_snapshot_holds_the_adapters():
    from hyperst.nn import HyperSTModule, ModuleConfig

    encoder = _initial_encoder()
    lit = _LitFinetune(HyperSTModule(512, 4, ModuleConfig(embed_dim=16)), hst.HyperSTConfig(), encoder)
    best = lit.snapshot()
    adapters = {k.removeprefix("encoder.") for k in best if k.startswith("encoder.")}
    assert adapters == {n for n, p in encoder.named_parameters() if p.requires_grad} and adapters
    with torch.no_grad():
        for p in lit.parameters():
            if p.requires_grad:
                p.add_(1.0)
    lit.restore(best)
    for k, v in lit.snapshot().items():
        assert torch.equal(v, best[k]), k


def test_patch_dataset_gives_the_same_view_to_spot_and_niche(slides):
    cfg = hst.HyperSTConfig(patch_px=32, views=8, random_state=3)
    slide = load_slide(slides[0], table_key=None, image_key=None, shapes_key=None, microns_per_pixel=None)
    rows = np.array([5, 0, 17, 40])
    genes = {slide.name: tuple(np.arange(60 * 3, dtype=np.float32).reshape(60, 3) + k for k in range(3))}
    geometry = geometry_from(cfg)
    train_ds = PatchDataset([(slide, rows)], genes, geometry, n_views=cfg.views, seed=cfg.random_state)
    val_ds = PatchDataset([(slide, rows)], genes, geometry, n_views=1, seed=cfg.random_state)
    spot, niche = train_ds.readers[0].read(rows)
    train_ds.set_epoch(0)
    views = train_ds.views.copy()
    val_ds.set_epoch(0)
    assert not val_ds.views.any()  # validation: always the identity
    assert len(train_ds) == 4 and train_ds[2][0].dtype == torch.uint8 and train_ds[2][0].shape == (3, 32, 32)
    for i, item in enumerate(train_ds.__getitems__([0, 1, 2, 3])):
        np.testing.assert_array_equal(item[0].numpy(), dihedral(spot[i], int(views[i])))
        np.testing.assert_array_equal(item[1].numpy(), dihedral(niche[i], int(views[i])))
        np.testing.assert_array_equal(item[4].numpy(), genes[slide.name][2][rows[i]])
        np.testing.assert_array_equal(val_ds[i][0].numpy(), spot[i])
    drawn = set()
    for epoch in range(6):
        train_ds.set_epoch(epoch)
        drawn |= set(train_ds.views.tolist())
    assert len(drawn) > 2  # views are redrawn every epoch
    train_ds.set_epoch(0)
    np.testing.assert_array_equal(train_ds.views, views)  # reproducibly


def test_user_encoder_module_is_not_modified(slides):
    encoder = build_encoder("resnet18", weights=None)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = hst.tl.fit(slides[0], **{**FIT, "encoder": encoder, "max_epochs": 1})
    assert model.encoder.lora["last_n_blocks"] == 2
    assert any("lora_B" in k for k in model.encoder.state)
    result = hst.tl.predict(copy.deepcopy(slides[1]), model, inplace=False, cache=False)  # rebuilt on a copy
    assert np.isfinite(result.X).all()
    assert encoder.lora_config is None and sorted(encoder.state_dict()) == sorted(before)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_bad_finetune_options_are_refused(slides):
    with pytest.raises(ValueError, match=r"Expected `finetune` to be None or 'lora', found `'full'`"):
        hst.tl.fit(slides[0], encoder="resnet18", weights=None, finetune="full")
    with pytest.raises(
        ValueError, match=r"Expected `encoder` to be a neural network with `finetune=.lora.`.*, found `.squidpy.`"
    ):
        hst.tl.fit(slides[0], encoder="squidpy", finetune="lora")
    with pytest.raises(ValueError, match=r"Expected `lora_blocks` to be at most 8, the number of blocks of `resnet18`"):
        hst.tl.fit(slides[0], encoder="resnet18", weights=None, finetune="lora")  # the default 11 is UNI's
    with pytest.raises(ValueError, match=r"Expected `lora_blocks` to be an integer >= 0"):
        hst.tl.fit(slides[0], encoder="resnet18", weights=None, finetune="lora", lora_blocks=-1)
    with pytest.raises(ValueError, match=r"Expected `lora_dropout` to be a number in \[0, 1\)"):
        hst.HyperSTConfig(lora_dropout=1.0)


def test_lora_statistics_and_validation_stream_by_batch(slides, monkeypatch):
    """LoRA's input statistics and validation hold one batch of features at a time, never the cohort's."""
    from hyperst.tl import _training

    cfg = hst.HyperSTConfig(patch_px=32, random_state=0)
    slide = load_slide(slides[0], table_key=None, image_key=None, shapes_key=None, microns_per_pixel=None)
    rows = np.arange(60)
    genes = {slide.name: tuple(np.arange(60 * 3, dtype=np.float32).reshape(60, 3) + k for k in range(3))}
    plain = PatchDataset([(slide, rows)], genes, geometry_from(cfg), n_views=1, seed=0)
    encoder = _initial_encoder()
    batches = list(_training._encoded(encoder, plain, batch_size=16, device="cpu"))
    assert [len(s) for s, _ in batches] == [16, 16, 16, 12]
    feats = np.concatenate([s for s, _ in batches] + [n for _, n in batches])
    seen = []
    encoded = _training._encoded

    def spy(*args, **kwargs):
        for spot, niche in encoded(*args, **kwargs):
            seen.append(len(spot))
            yield spot, niche

    monkeypatch.setattr(_training, "_encoded", spy)
    mean, std, target = _training._patch_stats(plain, encoder, batch_size=16, device="cpu")
    assert seen == [16, 16, 16, 12]
    np.testing.assert_allclose(mean, feats.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, feats.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(target, genes[slide.name][2].mean(0))
    module = _training._new_module((mean, std, target), encoder.n_features, 3, cfg).eval()
    seen.clear()
    val = _training._validate(module, plain, encoder, batch_size=16, device="cpu")
    assert seen == [16, 16, 16, 12] and val.pred.shape == (60, 3)
    with torch.inference_mode():
        whole = module.predict(torch.from_numpy(feats[:60]), torch.from_numpy(feats[60:])).numpy()
    np.testing.assert_allclose(val.pred, whole, rtol=1e-5, atol=1e-6)
