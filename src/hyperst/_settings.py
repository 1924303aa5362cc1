"""Global settings of hyperst (``hyperst.settings``), checked when set."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from numbers import Integral
from pathlib import Path
from typing import Any

from ._validation import check_choice, expected, expected_type

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


def _default_read_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(expected_type(name, "True or False", value))
    return value


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(expected_type(name, "an integer >= 0", value))
    if value < 0:
        raise ValueError(expected(name, "an integer >= 0", value))
    return int(value)


def _check_path(name: str, value: Any) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(expected_type(name, "a str or os.PathLike path", value))
    return Path(value).expanduser()


#: Check (and conversion) of each setting, run whenever it is set.
_CHECKS = {
    "progress_bar": _check_bool,
    "num_workers": _check_count,
    "read_ahead": _check_count,
    "read_workers": _check_count,
    "patch_cache_mb": _check_count,
    "feature_cache_mb": _check_count,
    "cache_dir": _check_path,
}


@dataclass
class Settings:
    """Package-wide settings, checked when set (a wrong value raises :class:`TypeError` or :class:`ValueError`).

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
    read_workers
        Threads that crop and resize the patches of a batch, each a consecutive share of it into a crop buffer
        of its own (PIL, torch and numpy release the GIL, so they run in parallel). Defaults to the number of
        CPUs, at most 8; ``0`` or ``1`` works in the reading thread only. With a GPU encoder, the CPU per spot
        of reading sets the rate: ``tl.fit(..., resample="bilinear")`` needs about a fifth of LANCZOS's
        (``docs/benchmarks.md``, "Feeding a fast encoder").
    patch_cache_mb
        MiB of image chunks a patch reader keeps between batches, per pyramid level it reads (spot and niche
        patches may come from two levels). Patches are read in bands across the slide, so each chunk is
        read about once; the default 256 holds about 20 chunks of 2048 x 2048 px.
    feature_cache_mb
        MiB of cached features and gene arrays that training keeps in memory, per process (each DataLoader worker
        and each DDP process holds its own). ``tl.fit`` reads them from the per-slide zarr caches in chunks of
        spots; a cohort whose chunks fit is read once and shuffled like arrays in memory, a larger one is
        shuffled by windows of chunks (half this budget each), so memory is set by this budget and the batch, not
        by the number of slides. The default 1024 holds about 16,000 spots of 8 views of 1,024-d features.
    cache_dir
        Where datasets and cached features are stored; defaults to ``$HYPERST_DATA_DIR`` or
        ``~/.cache/hyperst``. A string or path-like, stored as a :class:`~pathlib.Path` (``~`` expanded).
    """

    progress_bar: bool = True
    num_workers: int = 0
    read_ahead: int = 1
    read_workers: int = field(default_factory=_default_read_workers)
    patch_cache_mb: int = 256
    feature_cache_mb: int = 1024
    cache_dir: Path = field(default_factory=_default_cache_dir)
    _verbosity: str = "info"

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CHECKS:
            value = _CHECKS[name](f"hyperst.settings.{name}", value)
        elif name != "verbosity" and name not in {f.name for f in fields(self)}:
            names = sorted([*_CHECKS, "verbosity"])
            msg = f"`hyperst.settings` has no setting `{name}`; the settings are {names}."
            raise AttributeError(msg)
        super().__setattr__(name, value)

    @property
    def verbosity(self) -> str:
        """Level of the ``hyperst`` logger: ``'error'``, ``'warning'``, ``'info'`` or ``'debug'``."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: str) -> None:
        check_choice(value, "hyperst.settings.verbosity", sorted(_VERBOSITY))
        self._verbosity = value
        logging.getLogger("hyperst").setLevel(_VERBOSITY[value])


settings = Settings()
