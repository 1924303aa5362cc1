"""Global settings of hyperst (``hyperst.settings``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings", "settings"]

_VERBOSITY = {
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def _default_cache_dir() -> Path:
    env = os.environ.get("HYPERST_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hyperst"


@dataclass
class Settings:
    """Package-wide settings.

    Attributes
    ----------
    progress_bar
        Show progress bars on long work (patch extraction, training, prediction).
    num_workers
        Worker processes of the PyTorch data loaders: training batches, and the patches read on the fly with
        ``finetune="lora"``. Feature extraction with a frozen encoder reads patches in the calling process.
    read_ahead
        Batches of patches that feature extraction and prediction read in a background thread while the encoder
        works on the current one (memory: this many batches more). ``0`` reads them in turn with the encoding.
    seed
        Default random seed where a function takes ``random_state=None``.
    cache_dir
        Where datasets and cached features are stored; defaults to ``$HYPERST_DATA_DIR`` or
        ``~/.cache/hyperst``.
    """

    progress_bar: bool = True
    num_workers: int = 0
    read_ahead: int = 1
    seed: int = 0
    cache_dir: Path = field(default_factory=_default_cache_dir)
    _verbosity: str = "info"

    @property
    def verbosity(self) -> str:
        """Level of the ``hyperst`` logger: ``'error'``, ``'warning'``, ``'info'`` or ``'debug'``."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: str) -> None:
        if value not in _VERBOSITY:
            msg = f"Expected `verbosity` to be one of {sorted(_VERBOSITY)}, found `{value!r}`."
            raise ValueError(msg)
        self._verbosity = value
        logging.getLogger("hyperst").setLevel(_VERBOSITY[value])


settings = Settings()
