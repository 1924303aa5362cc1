"""Image encoders: a backbone behind one interface, ``(B, 3, H, W)`` RGB patches in, ``(B, F)`` features out.

:func:`build_encoder` is the registry. Every torchvision classification model builds by its name (``resnet50``,
``mobilenet_v2``, ``efficientnet_b0``, ``convnext_tiny``, ``regnet_y_400mf``, ``swin_t``, ``vit_b_16``, …;
the names of ``torchvision.models.list_models(module=torchvision.models)``), with torchvision's pretrained
weights (``weights="DEFAULT"`` or a weights name, downloaded by torchvision), random ones (``weights=None``) or
a local checkpoint; timm models (``"timm:<model_name>"``) and Hugging Face hub models (``"hf-hub:<repo>"``, e.g.
UNI) need the ``timm`` extra; any :class:`torch.nn.Module` is wrapped as is. Classifier heads are removed
(:mod:`hyperst.nn._torchvision`), so the features are the backbone's pooled output, and their size is found by
one forward pass.

:class:`ImageEncoder` takes uint8 pixels (or floats already in ``[0, 1]``) and normalises them with the
backbone's mean and standard deviation, so callers never repeat the backbone's preprocessing. Its
:class:`EncoderSpec` records what was built, for provenance and to rebuild the encoder when a model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import expected, expected_to, expected_type
from ._torchvision import headless, torchvision_names, unknown_name_message

__all__ = ["ENCODERS", "EncoderSpec", "ImageEncoder", "build_encoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Hub models whose architecture is known, so that they build offline: timm architecture and kwargs.
_TIMM_PRESETS = {
    "hf-hub:mahmoodlab/uni": ("vit_large_patch16_224", {"init_values": 1e-5, "dynamic_img_size": True}),
}
#: The registry's forms of names: any torchvision classification model (e.g. ``"resnet50"``), timm and hub models.
ENCODERS = ("<torchvision model>", "timm:<model_name>", "hf-hub:<repo>")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class EncoderSpec:
    """What an :class:`ImageEncoder` was built from (JSON-serialisable through :meth:`to_dict`).

    Parameters
    ----------
    name
        Registry name (``"resnet50"``, ``"hf-hub:MahmoodLab/UNI"``) or ``"custom:<class name>"``.
    weights
        Weights it was built with: a weights name, a checkpoint path, or ``None`` for random ones.
    n_features
        Size ``F`` of the output features.
    input_size
        Side in pixels of the input the backbone expects.
    mean
        Per-channel mean subtracted from inputs in ``[0, 1]``.
    std
        Per-channel standard deviation the inputs are divided by.
    """

    name: str
    weights: str | None
    n_features: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a dict of JSON types."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


class ImageEncoder(nn.Module):
    """Normalise RGB patches and run a backbone that returns ``(B, F)`` features.

    Parameters
    ----------
    backbone
        Module mapping normalised ``(B, 3, H, W)`` float images to ``(B, F)`` features.
    name
        Name recorded in :attr:`spec`; defaults to ``"custom:<class name>"``.
    weights
        Weights recorded in :attr:`spec`.
    n_features
        Feature size ``F``; ``None`` finds it with a dry run on a ``(1, 3, input_size, input_size)`` input.
    input_size
        Side in pixels of the input the backbone expects.
    mean
        Per-channel mean of the backbone's normalisation.
    std
        Per-channel standard deviation of the backbone's normalisation.

    Raises
    ------
    ValueError
        If the dry run does not give a ``(B, F)`` tensor.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str | None = None,
        weights: str | None = None,
        n_features: int | None = None,
        input_size: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        #: Frozen with :meth:`freeze`: no gradients, and the backbone stays in eval mode.
        self.frozen = False
        #: LoRA settings once :func:`~hyperst.nn.apply_lora` ran (needed to rebuild before loading weights).
        self.lora_config: dict[str, Any] | None = None
        if n_features is None:
            n_features = self._dry_run(input_size)
        name = name if name is not None else f"custom:{type(backbone).__name__}"
        self.spec = EncoderSpec(name, weights, int(n_features), int(input_size), tuple(mean), tuple(std))

    @property
    def name(self) -> str:
        """Registry name of the backbone."""
        return self.spec.name

    @property
    def n_features(self) -> int:
        """Size ``F`` of the output features."""
        return self.spec.n_features

    @property
    def input_size(self) -> int:
        """Side in pixels of the input the backbone expects."""
        return self.spec.input_size

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``(B, 3, H, W)`` uint8 patches (or floats in ``[0, 1]``) into ``(B, F)`` features."""
        if x.ndim != 4 or x.shape[1] != 3:
            msg = expected_to("x", "be a (B, 3, H, W) tensor", f"shape `{tuple(x.shape)}`")
            raise ValueError(msg)
        if x.dtype == torch.uint8:
            x = x.to(self.mean.dtype) / 255.0
        elif x.is_floating_point():
            x = x.to(self.mean.dtype)
        else:
            msg = expected_to("x", "be uint8 or floating point", f"`{x.dtype}`")
            raise TypeError(msg)
        return _check_features(self.backbone((x - self.mean) / self.std))

    def freeze(self) -> ImageEncoder:
        """Stop all gradients and keep the backbone in eval mode (also after ``.train()``); return ``self``."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> ImageEncoder:  # noqa: FBT001, FBT002 (torch's signature)
        """Set the training mode; a frozen backbone stays in eval mode, a LoRA one keeps batch-norm statistics."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        elif self.lora_config is not None:
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.SyncBatchNorm):
                    module.eval()
        return self

    @torch.no_grad()
    def _dry_run(self, input_size: int) -> int:
        modes = {m: m.training for m in self.backbone.modules()}  # restored as the caller left them
        param = next(self.backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self.backbone.eval()
        try:
            out = _check_features(self.backbone(torch.zeros(1, 3, input_size, input_size, device=device)))
        finally:
            for module, mode in modes.items():
                module.training = mode
        return out.shape[1]


def _check_features(out: Any) -> Tensor:
    if not isinstance(out, Tensor) or out.ndim != 2:
        found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        msg = f"{expected_to('backbone', 'return a (B, F) tensor', f'`{found}`')} Pool and flatten its output."
        raise ValueError(msg)
    return out


def _is_path(weights: object) -> bool:
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and ("/" in weights or os.sep in weights or weights.endswith(_CHECKPOINT_SUFFIXES))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``.pt``/``.pth``/``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors`` state dict."""
    path = Path(path)
    if not path.is_file():
        msg = expected("weights", "an existing checkpoint file", os.fspath(path))
        raise FileNotFoundError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # Lightning and timm training checkpoints nest the weights
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        msg = expected_to("weights", "hold a state dict of tensors", f"`{type(state).__name__}` in `{path}`")
        raise ValueError(msg)
    return dict(state)


def _load_into(backbone: nn.Module, path: str | os.PathLike, *, name: str, removed: tuple[str, ...] = ()) -> None:
    state = load_checkpoint(path)
    for prefix in ("module.", "backbone.", "model."):  # DDP, an ImageEncoder's own state dict, wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    for head in removed:  # the head of a full-model checkpoint was removed from the backbone
        state = {k: v for k, v in state.items() if k != head and not k.startswith(f"{head}.")}
    wanted = set(backbone.state_dict())
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        msg = (
            f"Checkpoint `{os.fspath(path)}` does not fit `{name}`: missing keys {_few(missing)}, "
            f"unexpected keys {_few(unexpected)}."
        )
        raise ValueError(msg)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as err:  # shape mismatches
        msg = f"Checkpoint `{os.fspath(path)}` does not fit `{name}`: {' '.join(str(err).split())}"
        raise ValueError(msg) from err


def _few(keys: list[str], n: int = 5) -> str:
    return f"{keys[:n]}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}"


def _weights_member(name: str, weights: str) -> Any:
    """Return the torchvision weights enum member ``weights`` (``"DEFAULT"``, ``"IMAGENET1K_V1"``…) of ``name``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    member = str(weights).rsplit(".", 1)[-1]
    if member not in enum.__members__:
        choices = [*enum.__members__, "None", "a checkpoint path"]
        msg = expected(f"weights` of `{name}", f"one of {choices}", weights)
        raise ValueError(msg)
    return enum[member]


def _download(name: str, chosen: Any) -> nn.Module:
    """Build ``name`` with torchvision's weights ``chosen``, which torchvision downloads unless cached."""
    from torchvision.models import get_model

    try:
        return get_model(name, weights=chosen)
    except OSError as err:  # URLError and socket errors: offline
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(chosen.url)
        msg = (
            f"Could not download the `{chosen}` weights of `{name}` ({chosen.url}): {err}. Offline, pass the path "
            f"of a local copy as `weights=`, or put it at `{cached}`."
        )
        raise ConnectionError(msg) from err


def _torchvision(name: str, weights: str | os.PathLike | None) -> ImageEncoder:
    from torchvision.models import get_model

    kwargs: dict[str, Any] = {}
    if weights is not None and not _is_path(weights):
        chosen = _weights_member(name, weights)
        kwargs = chosen.transforms.keywords  # crop_size, and mean/std where they are not ImageNet's
        model = _download(name, chosen)
    else:
        model = get_model(name, weights=None)
    removed = headless(model, name)
    if weights is not None and _is_path(weights):
        _load_into(model, weights, name=name, removed=removed)
    return ImageEncoder(
        model,
        name=name,
        weights=None if weights is None else os.fspath(weights),
        input_size=int(kwargs.get("crop_size", getattr(model, "image_size", 224))),  # ViTs have a fixed size
        mean=tuple(kwargs.get("mean", IMAGENET_MEAN)),
        std=tuple(kwargs.get("std", IMAGENET_STD)),
    )


def _timm(name: str, weights: str | os.PathLike | None) -> ImageEncoder:
    try:
        import timm
    except ImportError as err:
        msg = f"`{name}` needs timm. Install the `timm` extra with `pip install 'hyperst[timm]'`."
        raise ImportError(msg) from err

    arch, kwargs = _TIMM_PRESETS.get(name.lower(), (name.removeprefix("timm:"), {}))
    kwargs = {**kwargs, "num_classes": 0}
    if weights is None or _is_path(weights):
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if weights is not None:
            _load_into(model, weights, name=name, removed=(model.pretrained_cfg.get("classifier", "head"),))
    else:  # "DEFAULT" or a timm pretrained tag
        source = name if name.startswith("hf-hub:") else arch
        tag = "" if weights == "DEFAULT" or name.startswith("hf-hub:") else f".{weights}"
        model = timm.create_model(f"{source}{tag}", pretrained=True, **kwargs)
    cfg = model.pretrained_cfg
    return ImageEncoder(
        model,
        name=name,
        weights=None if weights is None else os.fspath(weights),
        n_features=getattr(model, "head_hidden_size", None) or model.num_features,
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
    )


def build_encoder(encoder: str | nn.Module, *, weights: str | os.PathLike | None = "DEFAULT") -> ImageEncoder:
    """Build an :class:`ImageEncoder` from a registry name or wrap a module.

    Parameters
    ----------
    encoder
        A torchvision classification model (any name of ``torchvision.models.list_models(module=
        torchvision.models)``: ``"resnet50"``, ``"mobilenet_v2"``, ``"efficientnet_b0"``, ``"convnext_tiny"``,
        ``"swin_t"``…), ``"timm:<model_name>"``, ``"hf-hub:<repo>"`` (e.g. ``"hf-hub:MahmoodLab/UNI"``; timm
        extra), or a module mapping normalised ``(B, 3, 224, 224)`` images to ``(B, F)`` features (an
        :class:`ImageEncoder` is returned as is).
    weights
        ``"DEFAULT"`` for the pretrained weights (downloaded by torchvision or timm), another torchvision
        weights name (``"IMAGENET1K_V1"``, read from torchvision's cache when it is there) or timm pretrained
        tag, ``None`` for random weights, or the path of a local ``.pt``/``.pth``/``.bin``/``.safetensors``
        state dict (e.g. a copy of torchvision's file), of the full model or without its head.
        For a module, ``"DEFAULT"`` and ``None`` keep its weights and a path is loaded into it. Offline, UNI
        builds from its known architecture; other ``"hf-hub:"`` models need the hub for their configuration.

    Returns
    -------
    The encoder, in training mode with all parameters trainable (see :meth:`ImageEncoder.freeze`).

    Raises
    ------
    ValueError
        If the name or the weights name is unknown (the message names close matches), the checkpoint does not
        fit the backbone, or a module does not return ``(B, F)`` features.
    TypeError
        If ``encoder`` is neither a string nor a module, or ``weights`` neither a string, a path nor ``None``.
    ConnectionError
        If torchvision's weights are not cached and cannot be downloaded.
    ImportError
        If a timm model is requested without timm installed.
    FileNotFoundError
        If a checkpoint path does not exist.
    """
    if weights is not None and not isinstance(weights, str | os.PathLike):
        msg = expected_type("weights", "a string, a path or None", weights)
        raise TypeError(msg)
    if isinstance(encoder, ImageEncoder):
        return encoder
    if isinstance(encoder, nn.Module):
        if weights is not None and weights != "DEFAULT":
            if not _is_path(weights):
                msg = expected("weights", "a checkpoint path, 'DEFAULT' or None for a module", weights)
                raise ValueError(msg)
            _load_into(encoder, weights, name=type(encoder).__name__)
            return ImageEncoder(encoder, weights=os.fspath(weights))
        return ImageEncoder(encoder)
    if isinstance(encoder, str) and encoder.startswith(("timm:", "hf-hub:")) and encoder.split(":", 1)[1]:
        return _timm(encoder, weights)
    if isinstance(encoder, str) and encoder in torchvision_names():
        return _torchvision(encoder, weights)
    if not isinstance(encoder, str):
        msg = expected_type("encoder", "a registry name or an nn.Module", encoder)
        raise TypeError(msg)
    raise ValueError(unknown_name_message(encoder, others=("squidpy", *ENCODERS[1:])))
