"""Small shared helpers: the progress-bar wrapper."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from ._settings import settings

__all__ = ["progress"]

T = TypeVar("T")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a ``tqdm.auto`` bar unless ``hyperst.settings.progress_bar`` is off."""
    if not settings.progress_bar:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
