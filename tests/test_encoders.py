"""Tests of the image encoders (registry, checkpoints, freezing, LoRA) and of the hand-crafted features."""

from __future__ import annotations

import json
import sys
import time
import types

import numpy as np
import pytest
import torch
from torch import nn

from conftest import random_pixels
from hyperst._data import dihedral
from hyperst._data._handcrafted import HANDCRAFTED_N_FEATURES, handcrafted_feature_names, handcrafted_features
from hyperst.nn import EncoderSpec, ImageEncoder, apply_lora, build_encoder
from hyperst.nn._lora import lora_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _resnet18(seed: int = 0) -> ImageEncoder:
    torch.manual_seed(seed)
    return build_encoder("resnet18", weights=None).eval()


class _Pool(nn.Module):
    """A minimal backbone: per-channel mean, so the output is the normalised input's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _TinyViT(nn.Module):
    """A timm-like vision transformer: ``blocks.{i}.attn.qkv`` linears, ``num_features``, ``pretrained_cfg``."""

    def __init__(self, dim: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, stride=16)
        self.blocks = nn.Sequential(*[nn.Module() for _ in range(depth)])
        for block in self.blocks:
            block.attn = nn.Module()
            block.attn.qkv = nn.Linear(dim, 3 * dim)
            block.attn.proj = nn.Linear(dim, dim)
        self.head = nn.Identity()
        self.num_features = dim
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            q, k, v = block.attn.qkv(x).chunk(3, dim=-1)
            x = x + block.attn.proj(torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v)
        return self.head(x.mean(dim=1))


@pytest.fixture
def peft():
    """peft, imported before `fake_timm` replaces timm (transformers, which peft imports, inspects timm)."""
    return pytest.importorskip("peft")


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        torch.manual_seed(0)
        return _TinyViT()

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    return calls


# ---- registry ----


@pytest.mark.parametrize(
    ("name", "n_features", "size"),
    [("resnet18", 512, 64), ("resnet50", 2048, 64), ("densenet121", 1024, 64), ("vit_b_16", 768, 224)],
)
def test_torchvision_backbones_give_pooled_features(name, n_features, size):
    enc = build_encoder(name, weights=None).eval()
    assert (enc.name, enc.n_features, enc.input_size) == (name, n_features, 224)
    with torch.no_grad():
        out = enc(random_pixels(size=size))
    assert out.shape == (2, n_features)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_uint8_and_float_inputs_agree():
    enc, x = _resnet18(), random_pixels()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc(x.float() / 255))


def test_normalisation_uses_the_backbone_statistics():
    enc = ImageEncoder(_Pool(), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    assert enc.n_features == 3  # found by the dry run
    out = enc(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.tensor([[1.0, 3.0, 1.0]]))
    default = ImageEncoder(_Pool())(torch.zeros(1, 3, 4, 4))
    torch.testing.assert_close(default, -torch.tensor([[0.485 / 0.229, 0.456 / 0.224, 0.406 / 0.225]]))


def test_forward_refuses_bad_inputs():
    enc = ImageEncoder(_Pool())
    with pytest.raises(ValueError, match=r"Expected `x` to be a \(B, 3, H, W\) tensor"):
        enc(torch.zeros(2, 4, 8, 8))
    with pytest.raises(TypeError, match="Expected `x` to be uint8 or floating point"):
        enc(torch.zeros(2, 3, 8, 8, dtype=torch.int64))


def test_unknown_names_and_weights_are_refused():
    with pytest.raises(ValueError, match=r"Expected `encoder` to be a torchvision classification model, one of"):
        build_encoder("resnet_101", weights=None)  # close matches: tests/test_encoders_torchvision.py
    with pytest.raises(ValueError, match="Expected `encoder`"):
        build_encoder("timm:", weights=None)
    with pytest.raises(ValueError, match=r"Expected `weights` of `resnet18` to be one of \['IMAGENET1K_V1'"):
        build_encoder("resnet18", weights="IMAGENET21K")  # refused before any download
    with pytest.raises(TypeError, match="Expected `weights` to be a string, a path or None"):
        build_encoder("resnet18", weights=1)


def test_any_module_is_wrapped_and_must_return_2d():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    enc = build_encoder(body)
    assert enc.n_features == 5
    assert enc.name == "custom:Sequential"
    assert enc.spec.weights is None
    assert enc(random_pixels()).shape == (2, 5)
    assert build_encoder(enc) is enc
    assert build_encoder(body.eval()).backbone.training is False  # the dry run leaves the mode as it was
    with pytest.raises(
        ValueError, match=r"Expected `backbone` to return a \(B, F\) tensor, found `\(1, 5, 222, 222\)`"
    ):
        build_encoder(nn.Conv2d(3, 5, 3))


def test_spec_round_trips_through_json_into_the_models_record():
    from hyperst._records import EncoderRecord

    spec = _resnet18().spec
    back = EncoderRecord.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert (back.name, back.weights, back.n_features, back.input_size) == (spec.name, None, 512, spec.input_size)
    assert (back.mean, back.std) == (spec.mean, spec.std)
    assert spec.to_dict() == {
        "name": "resnet18",
        "weights": None,
        "n_features": 512,
        "input_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }


def test_freeze_stops_gradients_and_keeps_eval_mode():
    enc = build_encoder("resnet18", weights=None)
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    assert enc.freeze() is enc
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()  # e.g. Lightning switching the whole model to training
    assert enc.training and not any(m.training for m in enc.backbone.modules())


# ---- local checkpoints ----


@pytest.mark.parametrize("kind", ["full.pt", "headless.pth", "encoder.pt", "full.safetensors"])
def test_checkpoint_round_trip(tmp_path, kind):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = torchvision.models.resnet18().eval()
    state = source.state_dict()
    source.fc = nn.Identity()
    if kind == "headless.pth":
        state = source.state_dict()
    elif kind == "encoder.pt":  # an ImageEncoder's own state dict: keys prefixed with "backbone."
        state = ImageEncoder(source, n_features=512).state_dict()
    path = tmp_path / kind
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)

    enc = build_encoder("resnet18", weights=path).eval()
    assert enc.spec.weights == str(path)
    x = random_pixels()
    with torch.no_grad():
        expected = source((x.float() / 255 - enc.mean) / enc.std)
        torch.testing.assert_close(enc(x), expected)


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    wrong = {k.replace("layer4", "stage4"): v for k, v in state.items()}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(
        ValueError,
        match=r"does not fit `resnet18`: missing keys \['layer4.0.bn1.bias'.*\(\+\d+ more\), unexpected keys \['stage4",
    ):
        build_encoder("resnet18", weights=tmp_path / "wrong.pt")
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="does not fit `resnet18`: .*size mismatch for conv1.weight"):
        build_encoder("resnet18", weights=tmp_path / "shape.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="Expected `weights` to hold a state dict of tensors, found `list`"):
        build_encoder("resnet18", weights=tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="Expected `weights` to be an existing checkpoint file"):
        build_encoder("resnet18", weights=tmp_path / "absent.pt")


def test_checkpoint_into_a_module(tmp_path):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.save(body.state_dict(), tmp_path / "body.pt")
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    enc = build_encoder(other, weights=tmp_path / "body.pt")
    torch.testing.assert_close(enc.backbone[0].weight, body[0].weight)
    with pytest.raises(ValueError, match="Expected `weights` to be a checkpoint path, .DEFAULT. or None for a module"):
        build_encoder(other, weights="IMAGENET1K_V1")


# ---- timm (a stand-in module where timm is absent) ----


def test_timm_without_timm_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r"Install the `timm` extra with `pip install 'hyperst\[timm\]'`\."):
        build_encoder("hf-hub:MahmoodLab/UNI", weights=None)


def test_uni_is_built_offline_with_its_kwargs(fake_timm):
    enc = build_encoder("hf-hub:MahmoodLab/UNI", weights=None)
    kwargs = {"init_values": 1e-5, "dynamic_img_size": True, "num_classes": 0}
    assert fake_timm == [("vit_large_patch16_224", False, kwargs)]
    assert enc.spec == EncoderSpec("hf-hub:MahmoodLab/UNI", None, 8, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert enc(random_pixels(size=32)).shape == (2, 8)
    build_encoder("hf-hub:MahmoodLab/UNI")  # the default weights come from the hub
    assert fake_timm[-1] == ("hf-hub:MahmoodLab/UNI", True, kwargs)
    build_encoder("timm:vit_small_patch16_224", weights="augreg_in21k")
    assert fake_timm[-1] == ("vit_small_patch16_224.augreg_in21k", True, {"num_classes": 0})


def test_timm_model_from_a_local_checkpoint(fake_timm, tmp_path):
    torch.manual_seed(3)
    source = _TinyViT()
    torch.save(source.state_dict(), tmp_path / "vit.bin")
    enc = build_encoder("timm:tiny_vit", weights=tmp_path / "vit.bin")
    torch.testing.assert_close(enc.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_real_timm_model():
    pytest.importorskip("timm")
    enc = build_encoder("timm:vit_tiny_patch16_224", weights=None).eval()
    with torch.no_grad():
        assert enc(random_pixels(size=224)).shape == (2, enc.n_features)


# ---- LoRA ----


def test_lora_targets_follow_the_architecture(fake_timm):
    resnet = _resnet18()
    assert lora_targets(resnet, last_n_blocks=1) == ["layer4.1.conv1", "layer4.1.conv2"]
    assert lora_targets(resnet, last_n_blocks=2)[:3] == ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0"]
    vit = build_encoder("hf-hub:MahmoodLab/UNI", weights=None)
    assert lora_targets(vit, last_n_blocks=2) == ["blocks.1.attn.qkv", "blocks.2.attn.qkv"]
    with pytest.raises(ValueError, match=r"Expected `last_n_blocks` to be an integer in \[0, 8\], found `11`"):
        lora_targets(resnet)
    with pytest.raises(TypeError, match="Expected `encoder` to wrap a timm vision transformer"):
        lora_targets(ImageEncoder(_Pool()), last_n_blocks=1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("densenet121", ["features.denseblock4.denselayer16.conv1", "features.denseblock4.denselayer16.conv2"]),
        ("vit_b_16", ["encoder.layers.encoder_layer_11.mlp.0", "encoder.layers.encoder_layer_11.mlp.3"]),
    ],
)
def test_lora_targets_of_other_torchvision_backbones(name, expected):
    assert lora_targets(build_encoder(name, weights=None), last_n_blocks=1) == expected


def test_lora_without_peft_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"Install the `lora` extra with `pip install 'hyperst\[lora\]'`\."):
        apply_lora(_resnet18(), last_n_blocks=1)


def test_lora_settings_are_checked():
    with pytest.raises(ValueError, match="Expected `r` to be a positive integer, found `0`"):
        apply_lora(_resnet18(), last_n_blocks=1, r=0)
    with pytest.raises(ValueError, match=r"Expected `dropout` to be in \[0, 1\), found `1.0`"):
        apply_lora(_resnet18(), last_n_blocks=1, dropout=1.0)
    enc = apply_lora(_resnet18(), last_n_blocks=0)  # no adapter: the encoder is only frozen
    assert enc.frozen and not any(p.requires_grad for p in enc.parameters())


def _lora_size(module: nn.Module, r: int) -> int:
    if isinstance(module, nn.Linear):
        return r * (module.in_features + module.out_features)
    k = module.kernel_size[0] * module.kernel_size[1]
    return r * (module.in_channels * k + module.out_channels)


@pytest.mark.parametrize("arch", ["resnet18", "timm"])
def test_lora_trains_only_the_adapters_and_starts_as_the_original(arch, peft, fake_timm):
    enc = _resnet18() if arch == "resnet18" else build_encoder("hf-hub:MahmoodLab/UNI", weights=None).eval()
    size = 64 if arch == "resnet18" else 32
    x = random_pixels(size=size)
    with torch.no_grad():
        before = enc(x)
    targets = lora_targets(enc, last_n_blocks=2)
    expected = sum(_lora_size(enc.backbone.get_submodule(t), r=4) for t in targets)
    apply_lora(enc, last_n_blocks=2, r=4, alpha=8, dropout=0.1)
    trainable = {n: p.numel() for n, p in enc.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert sum(trainable.values()) == expected
    assert enc.lora_config["target_modules"] == targets
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), before)  # B starts at zero
    enc.train()
    enc(x).square().mean().backward()
    assert all(p.grad is None for n, p in enc.named_parameters() if "lora_" not in n)
    with pytest.raises(ValueError, match="Expected `encoder` to have no LoRA adapters yet"):
        apply_lora(enc, last_n_blocks=1)


# ---- hand-crafted features ----


def _tissue(kind: str, n: int = 2, size: int = 96, seed: int = 0) -> np.ndarray:
    """Pink stroma (smooth eosin) or purple nuclei (dark haematoxylin blobs on pink), ``(n, 3, size, size)``."""
    rng = np.random.default_rng(seed)
    img = np.empty((n, size, size, 3))
    img[:] = (232, 170, 200)
    img += rng.normal(0, 6, img.shape)
    if kind == "nuclei":
        yy, xx = np.mgrid[:size, :size]
        for i in range(n):
            for cy, cx in rng.uniform(0, size, (40, 2)):
                img[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = (90, 50, 140)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


def test_handcrafted_features_shape_and_determinism():
    patches = np.concatenate([_tissue("stroma"), np.full((1, 3, 96, 96), 255, dtype=np.uint8)])
    feats = handcrafted_features(patches)
    assert feats.shape == (3, HANDCRAFTED_N_FEATURES) == (3, len(handcrafted_feature_names())) == (3, 55)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()  # also on blank background
    np.testing.assert_array_equal(feats, handcrafted_features(patches))
    assert handcrafted_features(patches[:0]).shape == (0, 55)


def test_handcrafted_features_tell_stroma_from_nuclei():
    names = handcrafted_feature_names()
    stroma, nuclei = handcrafted_features(_tissue("stroma")), handcrafted_features(_tissue("nuclei"))
    mean_r, contrast = names.index("summary_ch-0_mean"), names.index("texture_grey_contrast_axial")
    assert (nuclei[:, mean_r] < stroma[:, mean_r] - 0.05).all()
    assert (nuclei[:, contrast] > 2 * stroma[:, contrast]).all()


def test_handcrafted_features_are_dihedral_invariant():
    patches = np.concatenate([_tissue("nuclei", size=100), _tissue("stroma", size=100)])  # 100 -> 64: non-integer
    reference = handcrafted_features(patches)
    for k in range(1, 8):
        np.testing.assert_allclose(handcrafted_features(dihedral(patches, k)), reference, rtol=1e-6, atol=1e-7)


def test_handcrafted_features_refuse_bad_input():
    with pytest.raises(TypeError, match=r"Expected `patches` to be a uint8 numpy array, found `dtype\('float64'\)`"):
        handcrafted_features(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"Expected `patches` to be of shape \(B, 3, H, W\)"):
        handcrafted_features(np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="Expected `size` to be an integer >= 2, found `1`"):
        handcrafted_features(np.zeros((1, 3, 8, 8), dtype=np.uint8), size=1)


@pytest.mark.slow  # a timing assertion: flaky on a busy machine, not slow
def test_handcrafted_features_cost():
    patches = _tissue("nuclei", n=16, size=224)
    handcrafted_features(patches[:1])
    start = time.perf_counter()
    handcrafted_features(patches)
    assert (time.perf_counter() - start) / 16 < 0.2  # about 20 ms a patch on one core
