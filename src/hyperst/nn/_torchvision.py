"""torchvision classification models by name, as headless backbones that return pooled ``(B, F)`` features.

Every name of ``torchvision.models.list_models(module=torchvision.models)`` builds (``resnet50``,
``mobilenet_v2``, ``efficientnet_b0``, ``convnext_tiny``, ``regnet_y_400mf``, ``swin_t``, ``vit_b_16``, …).
The classifier is found by the attribute torchvision gives it (``fc``, ``classifier``, ``heads`` or ``head``)
and its final projection to the 1,000 classes is replaced by an identity: a head that is only that projection
(with dropout) becomes an identity as a whole, and a head that also pools or normalises (ConvNeXt, MaxViT,
SqueezeNet) keeps those layers. Auxiliary classifiers (GoogLeNet, Inception v3) are removed as torchvision
removes them from its pretrained models, and those two read inputs as their ImageNet weights expect
(``transform_input=True``), whatever the weights.
"""

from __future__ import annotations

import difflib
from functools import cache

from torch import nn

from .._validation import expected

__all__ = ["headless", "torchvision_names", "unknown_name_message"]

#: Attributes of torchvision's classifiers, tried in this order.
HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
#: Auxiliary classifiers (GoogLeNet, Inception v3).
AUX_ATTRIBUTES = ("aux1", "aux2", "AuxLogits")
_PARAMETER_FREE = (nn.Dropout, nn.Identity)


@cache
def torchvision_names() -> tuple[str, ...]:
    """Return the classification models torchvision builds (``list_models(module=torchvision.models)``)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def unknown_name_message(name: str, *, others: tuple[str, ...]) -> str:
    """Describe an encoder name that is neither a torchvision model nor one of ``others``, with close matches."""
    names = torchvision_names()
    close = difflib.get_close_matches(name.lower(), [*others, *names], n=4, cutoff=0.6)
    what = f"a torchvision classification model, one of {list(others)} or an nn.Module"
    hint = f" Close matches: {close}." if close else ""
    return (
        f"{expected('encoder', what, name)}{hint} The torchvision names are those of "
        f"`torchvision.models.list_models(module=torchvision.models)` ({len(names)} here, e.g. 'resnet50', "
        "'mobilenet_v2', 'efficientnet_b0', 'convnext_tiny')."
    )


def headless(model: nn.Module, name: str) -> tuple[str, ...]:
    """Remove the classifier and auxiliary classifiers of a torchvision ``model`` in place.

    Parameters
    ----------
    model
        A classification model built by ``torchvision.models.get_model``.
    name
        Its name, for messages.

    Returns
    -------
    The dotted names of the modules removed (``("fc",)``, ``("classifier",)``, ``("classifier.2",)``…), so
    that the keys of a full-model checkpoint under them can be dropped before loading.

    Raises
    ------
    TypeError
        If ``model`` has no classifier under a known attribute, or one without a final linear layer.
    """
    removed = [*_remove_aux(model), _remove_head(model, name)]
    if hasattr(model, "transform_input"):  # GoogLeNet, Inception v3: their ImageNet weights read inputs so
        model.transform_input = True
    return tuple(removed)


def _remove_aux(model: nn.Module) -> list[str]:
    removed = [a for a in AUX_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Module)]
    for attr in removed:
        setattr(model, attr, None)
    if hasattr(model, "aux_logits"):
        model.aux_logits = False  # forward returns the features alone, also in training mode
    return removed


def _remove_head(model: nn.Module, name: str) -> str:
    attr = next((a for a in HEAD_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Module)), None)
    head = getattr(model, attr) if attr is not None else None
    if isinstance(head, nn.Linear):
        setattr(model, attr, nn.Identity())
        return attr
    if isinstance(head, nn.Sequential):
        last = max((i for i, m in enumerate(head) if isinstance(m, nn.Linear | nn.Conv2d)), default=None)
        if last is not None:
            if all(isinstance(m, _PARAMETER_FREE) for i, m in enumerate(head) if i != last):
                setattr(model, attr, nn.Identity())  # only dropout around the projection: drop it all
                return attr
            key = list(head._modules)[last]
            head[last] = nn.Identity()  # keep the pooling, flattening or normalisation around it
            return f"{attr}.{key}"
    msg = (
        f"`{name}` has no classifier hyperst can remove (a linear layer under one of {list(HEAD_ATTRIBUTES)}). "
        "Build it yourself, remove its head and pass the module as `encoder=`."
    )
    raise TypeError(msg)
