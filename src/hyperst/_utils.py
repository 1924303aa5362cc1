"""Small shared helpers: the progress-bar wrapper, quieting chatty dependencies, fingerprints, random state."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from ._settings import settings

__all__ = [
    "file_sha256",
    "import_squidpy",
    "kept_random_state",
    "progress",
    "quiet_loggers",
    "quiet_third_party",
    "state_fingerprint",
]

T = TypeVar("T")
#: Environment variables through which ``lightning.seed_everything`` passes its seed on.
_SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a ``tqdm.auto`` bar unless ``hyperst.settings.progress_bar`` is off."""
    if not settings.progress_bar:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)


@contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of other packages' loggers (e.g. ``"spatialdata"``) for the duration of a block."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old, strict=True):
            lg.setLevel(lvl)


def state_fingerprint(state: Mapping[str, Any]) -> str:
    """Short sha256 of a state dict of tensors (names and bytes, in name order): identifies weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def kept_random_state() -> Iterator[None]:
    """Leave Python's, NumPy's and torch's global random generators (and Lightning's seed variables) as found.

    Code inside may seed them (``lightning.seed_everything``, ``torch.manual_seed``) for its own reproducibility;
    the caller's streams continue afterwards as if it had not run.
    """
    import random

    import numpy as np
    import torch

    py, nps, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    env = {k: os.environ.get(k) for k in _SEED_VARIABLES}
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(nps)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: Third-party warnings that hyperst's own calls trigger and that a user can do nothing about: the message,
#: the category, and the package that issues it.
_NOISE = (
    (r".* is not a valid key!", SyntaxWarning),  # docrep, while squidpy is imported
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),  # lightning's pytree helpers on newer torch
    (r"zarr v3 autosharding will be the default", UserWarning),  # zarr, on the arrays hyperst writes
)


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence :data:`_NOISE` inside one of hyperst's calls; the user's own warning filters are restored after."""
    import warnings

    with warnings.catch_warnings():
        for message, category in _NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def import_squidpy() -> Any:
    """Import squidpy without the docrep warnings its import prints."""
    with quiet_third_party():
        import squidpy

    return squidpy
