"""torchvision backbones by name: heads removed, feature widths, local and cached ImageNet weights, model files.

The pretrained tests read torchvision's MobileNetV2 ImageNet weights from ``../shared/weights`` and skip when
that folder is absent.
"""

from __future__ import annotations

import copy
import os
import shutil
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

import hyperst as hst
from conftest import SHARED, random_pixels
from hyperst.nn import ENCODERS, build_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MOBILENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
#: ImageNet class of scikit-image's cat photograph (`skimage.data.chelsea`), per the weights' README.
EGYPTIAN_CAT = 285


@pytest.fixture(scope="module")
def mobilenet_file():
    path = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        pytest.skip(f"pretrained weights not found at {path} (needs ../shared/weights)")
    return path


def _class_layers(module: nn.Module) -> list[str]:
    """Layers that still project onto torchvision's 1,000 ImageNet classes."""
    width = {nn.Linear: "out_features", nn.Conv2d: "out_channels"}
    return [name for name, m in module.named_modules() if getattr(m, width.get(type(m), ""), None) == 1000]


# ---- any torchvision name, random weights ----


@pytest.mark.parametrize(
    ("name", "n_features"),
    [
        ("mobilenet_v2", 1280),  # classifier = [Dropout, Linear]: an identity as a whole
        ("efficientnet_b0", 1280),
        ("convnext_tiny", 768),  # classifier = [LayerNorm2d, Flatten, Linear]: only the Linear goes
        ("regnet_y_400mf", 440),  # fc
        ("swin_t", 768),  # head
        ("squeezenet1_1", 512),  # classifier = [Dropout, Conv2d, ReLU, AdaptiveAvgPool2d]: the 1x1 conv goes
    ],
)
def test_torchvision_names_build_headless_with_the_width_of_a_dry_run(name, n_features):
    torch.manual_seed(0)
    enc = build_encoder(name, weights=None).eval()
    assert (enc.name, enc.spec.weights, enc.n_features, enc.input_size) == (name, None, n_features, 224)
    assert not _class_layers(enc.backbone)
    with torch.no_grad():
        out = enc(random_pixels())
    assert out.shape == (2, n_features)
    assert torch.isfinite(out).all() and out.std() > 0


def test_a_head_with_normalisation_keeps_it():
    enc = build_encoder("convnext_tiny", weights=None)
    head = enc.backbone.classifier
    assert [type(m).__name__ for m in head] == ["LayerNorm2d", "Flatten", "Identity"]


def test_auxiliary_classifiers_are_removed_and_training_mode_gives_features():
    enc = build_encoder("googlenet", weights=None)
    assert enc.backbone.aux1 is None and enc.backbone.aux2 is None
    assert not any(k.startswith("aux") for k in enc.state_dict())
    assert enc.backbone.transform_input  # inputs read as torchvision's ImageNet weights expect
    out = enc.train()(random_pixels(size=64))  # with aux heads, training mode would return a named tuple
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1024)


def test_a_full_checkpoint_loads_without_the_removed_layer(tmp_path):
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.squeezenet1_1().eval()
    torch.save(source.state_dict(), tmp_path / "full.pth")  # with the class projection `classifier.1`
    enc = build_encoder("squeezenet1_1", weights=tmp_path / "full.pth").eval()
    source.classifier[1] = nn.Identity()
    x = random_pixels()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), source((x.float() / 255 - enc.mean) / enc.std))


def test_unknown_names_name_close_matches_and_the_registry():
    with pytest.raises(ValueError, match=r"found `'mobilenetv2'`\. Close matches: \['mobilenet_v2'") as info:
        build_encoder("mobilenetv2", weights=None)
    message = str(info.value)
    assert "torchvision.models.list_models(module=torchvision.models)" in message
    assert all(form in message for form in ("'squidpy'", *ENCODERS[1:]))
    with pytest.raises(ValueError, match=r"Close matches: \['resnet18'"):
        build_encoder("ResNet_18", weights=None)
    with pytest.raises(ValueError, match=r"found `'histology'`\. The torchvision names"):  # nothing close
        build_encoder("histology", weights=None)
    with pytest.raises(TypeError, match="Expected `encoder` to be a registry name or an nn.Module, found `int`"):
        build_encoder(5, weights=None)


def test_a_failed_download_says_how_to_work_offline(monkeypatch, tmp_path):
    import torchvision

    def offline(*args, **kwargs):
        msg = "no network"
        raise urllib.error.URLError(msg)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConnectionError, match=r"IMAGENET1K_V1` weights of `mobilenet_v2`.*no network.*") as info:
        build_encoder("mobilenet_v2", weights="IMAGENET1K_V1")
    assert "pass the path of a local copy as `weights=`" in str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in str(info.value)
    with pytest.raises(ValueError, match=r"Expected `weights` of `mobilenet_v2` to be one of \['IMAGENET1K_V1'"):
        build_encoder("mobilenet_v2", weights="IMAGENET21K")  # checked before any download


# ---- torchvision's ImageNet MobileNetV2 from ../shared/weights ----


def test_local_imagenet_weights_give_torchvisions_features(mobilenet_file):
    import torchvision

    enc = build_encoder("mobilenet_v2", weights=mobilenet_file).freeze()
    assert enc.spec.weights == os.fspath(mobilenet_file) and enc.n_features == 1280
    again = build_encoder("mobilenet_v2", weights=mobilenet_file).freeze()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(mobilenet_file, weights_only=True))
    reference.classifier = nn.Identity()
    x = random_pixels(size=96)
    with torch.no_grad():
        out = enc(x)
        torch.testing.assert_close(out, again(x), rtol=0, atol=0)  # deterministic
        torch.testing.assert_close(out, reference.eval()((x.float() / 255 - enc.mean) / enc.std))


def test_local_imagenet_weights_recognise_a_cat(mobilenet_file):
    data = pytest.importorskip("skimage.data")
    enc = build_encoder("mobilenet_v2", weights=mobilenet_file).freeze()
    state = torch.load(mobilenet_file, weights_only=True)  # the removed head, to read the features as classes
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float()
    cat = nn.functional.interpolate(cat, size=(224, 224), mode="bilinear", antialias=True).round().to(torch.uint8)
    with torch.no_grad():
        logits = enc(cat) @ state["classifier.1.weight"].T + state["classifier.1.bias"]
    probability = torch.softmax(logits, dim=1)[0]
    assert int(probability.argmax()) == EGYPTIAN_CAT and probability.max() > 0.3


def test_a_weights_name_reads_torchvisions_cache_offline(mobilenet_file, tmp_path, monkeypatch):
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"  # the name torchvision downloads to
    cached.parent.mkdir(parents=True)
    cached.symlink_to(mobilenet_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    by_name = build_encoder("mobilenet_v2", weights="IMAGENET1K_V1").freeze()
    by_file = build_encoder("mobilenet_v2", weights=mobilenet_file).freeze()
    assert by_name.spec.weights == "IMAGENET1K_V1"
    x = random_pixels()
    with torch.no_grad():
        torch.testing.assert_close(by_name(x), by_file(x), rtol=0, atol=0)


def test_the_extractor_records_the_weights_file_digest(mobilenet_file):
    from hyperst.tl._encoder import make_extractor

    record = make_extractor("mobilenet_v2", weights=mobilenet_file).record
    assert (record.name, record.weights, record.n_features) == ("mobilenet_v2", os.fspath(mobilenet_file), 1280)
    assert record.weights_sha256 == MOBILENET_SHA256


def test_fit_save_load_predict_with_local_imagenet_weights(mobilenet_file, tmp_path):
    slides = hst.datasets.synthetic(n_slides=2, n_spots=40, n_genes=30, seed=3)
    weights = tmp_path / "copy" / mobilenet_file.name  # deleted before loading: the model must carry the weights
    weights.parent.mkdir()
    shutil.copyfile(mobilenet_file, weights)
    fit = {"genes": 10, "max_epochs": 2, "batch_size": 64, "embed_dim": 16, "views": 1, "patch_px": 64}
    model = hst.tl.fit(slides[0], encoder="mobilenet_v2", weights=weights, cache=False, random_state=0, **fit)
    assert (model.encoder.name, model.encoder.weights) == ("mobilenet_v2", os.fspath(weights))
    assert model.encoder.weights_sha256 == MOBILENET_SHA256 and model.encoder.n_features == 1280
    test = copy.deepcopy(slides[1])
    before = hst.tl.predict(test, model, inplace=False, cache=False)

    path = model.save(tmp_path / "model")
    assert (path / "encoder.safetensors").is_file()
    shutil.rmtree(weights.parent)
    loaded = hst.HyperST.load(path)
    assert loaded.encoder.weights_sha256 == MOBILENET_SHA256 and loaded.encoder.weights == os.fspath(weights)
    after = hst.tl.predict(test, loaded, inplace=False, cache=False)  # features recomputed from pixels
    np.testing.assert_array_equal(np.asarray(after.X), np.asarray(before.X))
    np.testing.assert_array_equal(after.obsm["X_hyperst"], before.obsm["X_hyperst"])
    assert np.isfinite(np.asarray(after.X)).all()
