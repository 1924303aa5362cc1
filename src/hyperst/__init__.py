"""hyperst: predict spatial gene expression from H&E histology with hierarchical hyperbolic learning.

The subpackages (``pp``, ``tl``, ``pl``, ``datasets``, ``lorentz``, ``nn``) and the model classes are imported
when first used, so that ``import hyperst`` and the ``hyperst`` command line start without loading torch,
Lightning, spatialdata or scanpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _logging  # noqa: F401  (installs the "hyperst" log handler)
from ._settings import settings
from ._version import __version__

if TYPE_CHECKING:
    from . import datasets, lorentz, nn, pl, pp, tl
    from ._config import HyperSTConfig
    from ._model import HyperST

__all__ = ["HyperST", "HyperSTConfig", "__version__", "datasets", "lorentz", "nn", "pl", "pp", "settings", "tl"]

_SUBPACKAGES = ("datasets", "lorentz", "nn", "pl", "pp", "tl")
_CLASSES = {"HyperST": "._model", "HyperSTConfig": "._config"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _CLASSES:
        value = getattr(importlib.import_module(_CLASSES[name], __name__), name)
        globals()[name] = value
        return value
    msg = f"module 'hyperst' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
