"""hyperst: predict spatial gene expression from H&E histology with hierarchical hyperbolic learning."""

from __future__ import annotations

from . import (
    _logging,  # noqa: F401  (installs the "hyperst" log handler)
    datasets,
    lorentz,
    nn,
    pl,
    pp,
    tl,
)
from ._config import HyperSTConfig
from ._model import HyperST
from ._settings import settings
from ._version import __version__

__all__ = ["HyperST", "HyperSTConfig", "__version__", "datasets", "lorentz", "nn", "pl", "pp", "settings", "tl"]
