"""Training arrays read by rows: in memory, or from zarr on disk through one bounded cache of chunks.

A fit's training store is one :class:`SlideArrays` per slide: the ``(N, V, F)`` spot and niche features (the
slide's zarr feature cache, :mod:`hyperst.tl._features`) and its ``(N, G)`` spot gene input, niche gene input
and target (a zarr group the fit writes in a temporary folder). A dataset reads the rows of a batch with
:func:`take`: a zarr array is read by whole chunks of spots (all views), kept in a least-recently-used cache
of at most ``hyperst.settings.feature_cache_mb`` MiB per process, so memory is set by that budget and the
batch, not by the number of slides. Zarr arrays are opened lazily in each process (a DataLoader worker or a
DDP process opens its own, and a pickled array travels as its path only).

:func:`column_mean_std` gives the column means and standard deviations of rows streamed in blocks, equal to
the last bit to NumPy's ``mean(0)`` / ``std(0)`` of all the rows at once (NumPy sums float32 rows along axis 0
one after another; so does it).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._settings import settings

__all__ = [
    "ChunkCache",
    "RowSource",
    "RunningMoments",
    "SlideArrays",
    "chunk_cache",
    "column_mean_std",
    "take",
    "write_rows",
]

#: Bytes of one chunk of spots (all views) aimed at when a feature or gene array is written.
CHUNK_BYTES = 2**21


def chunk_rows(row_nbytes: int, n_rows: int) -> int:
    """Rows per chunk: about :data:`CHUNK_BYTES` per chunk, at least 16 rows, at most ``n_rows``."""
    return int(max(1, min(n_rows, max(16, CHUNK_BYTES // max(1, row_nbytes)))))


class RowSource:
    """An ``(N, ...)`` array read by rows: a NumPy array in memory, or array ``name`` of a zarr group at ``path``.

    Parameters
    ----------
    array
        The rows in memory.
    path, name
        The zarr group and the array in it (when ``array`` is ``None``).
    """

    def __init__(
        self, array: np.ndarray | None = None, *, path: str | os.PathLike | None = None, name: str = ""
    ) -> None:
        self.array = array
        self.path = None if path is None else str(path)
        self.name = name
        self._handle: Any = None
        self._pid = -1
        if array is not None:
            self.shape, self.dtype, self.chunk_len = tuple(array.shape), array.dtype, max(1, len(array))
        else:
            handle = self._open()
            self.shape, self.dtype, self.chunk_len = tuple(handle.shape), np.dtype(handle.dtype), handle.chunks[0]

    @property
    def in_memory(self) -> bool:
        """The rows are a NumPy array."""
        return self.array is not None

    @property
    def key(self) -> str:
        """Identity of the array in the chunk cache."""
        return f"{self.path}::{self.name}"

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row (all views)."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _open(self) -> Any:
        if self._handle is None or self._pid != os.getpid():  # a forked process opens its own
            import zarr

            self._handle = zarr.open_group(self.path, mode="r")[self.name]
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def read_chunk(self, c: int) -> np.ndarray:
        """Rows of chunk ``c`` (``chunk_len`` rows, fewer at the end)."""
        if self.array is not None:
            return self.array
        return np.asarray(self._open()[c * self.chunk_len : (c + 1) * self.chunk_len])


class ChunkCache:
    """Least-recently-used chunks of zarr arrays, at most ``hyperst.settings.feature_cache_mb`` MiB in all."""

    def __init__(self) -> None:
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.nbytes = 0
        self.reads = 0

    def get(self, source: RowSource, c: int) -> np.ndarray:
        """Chunk ``c`` of ``source``, read (and kept) if not held."""
        key = (source.key, c)
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
            return chunk
        chunk = source.read_chunk(c)
        self.reads += 1
        self._chunks[key] = chunk
        self.nbytes += chunk.nbytes
        budget = settings.feature_cache_mb * 2**20
        while self.nbytes > budget and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self.nbytes -= old.nbytes
        return chunk

    def clear(self) -> None:
        """Drop every chunk."""
        self._chunks.clear()
        self.nbytes = 0

    def __getstate__(self) -> dict[str, Any]:  # a spawned process starts empty
        return {"_chunks": OrderedDict(), "nbytes": 0, "reads": 0}


#: The process's cache, shared by every dataset of a fit (training, validation, refit, statistics).
chunk_cache = ChunkCache()


def take(source: RowSource, rows: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
    """Rows ``rows`` of ``source`` (with ``views``: element ``views[i]`` of axis 1 for row ``i``), as a new array."""
    rows = np.asarray(rows, dtype=np.int64)
    if source.array is not None:
        return source.array[rows] if views is None else source.array[rows, views]
    tail = source.shape[1:] if views is None else source.shape[2:]
    out = np.empty((len(rows), *tail), dtype=source.dtype)
    chunk = rows // source.chunk_len
    order = np.argsort(chunk, kind="stable")
    bounds = np.flatnonzero(np.diff(chunk[order])) + 1
    for mine in np.split(order, bounds) if len(rows) else []:
        c = int(chunk[mine[0]])
        local = rows[mine] - c * source.chunk_len
        slab = chunk_cache.get(source, c)
        out[mine] = slab[local] if views is None else slab[local, views[mine]]
    return out


@dataclass
class SlideArrays:
    """What training reads of one slide: ``(N, V, F)`` spot and niche features, and its gene arrays.

    ``genes`` holds the ``(N, G)`` spot gene input, niche gene input and target. ``spot`` and ``niche`` are
    ``None`` when the slide's patches are read on the fly (LoRA).
    """

    genes: tuple[RowSource, RowSource, RowSource]
    spot: RowSource | None = None
    niche: RowSource | None = None

    @classmethod
    def of(cls, value: SlideArrays | tuple[np.ndarray, ...]) -> SlideArrays:
        """``value``, or in-memory gene arrays ``(spot gene, niche gene, target)`` as a :class:`SlideArrays`."""
        if isinstance(value, SlideArrays):
            return value
        spot_gene, niche_gene, target = value
        return cls((RowSource(spot_gene), RowSource(niche_gene), RowSource(target)))

    def sources(self) -> list[RowSource]:
        """Every array, features first."""
        return [s for s in (self.spot, self.niche) if s is not None] + list(self.genes)


def write_rows(path: str | os.PathLike, arrays: dict[str, np.ndarray], chunk_len: int) -> dict[str, RowSource]:
    """Write ``(N, ...)`` arrays into a new zarr group at ``path``, ``chunk_len`` rows a chunk; open them back."""
    import zarr

    from .._utils import quiet_third_party

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with quiet_third_party():
        group = zarr.open_group(str(path), mode="w")
        for name, a in arrays.items():
            group.create_array(name, data=a, chunks=(max(1, min(chunk_len, len(a))), *a.shape[1:]))
    return {name: RowSource(path=path, name=name) for name in arrays}


def column_mean_std(
    blocks: Callable[[], Iterable[np.ndarray]], *, std: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Column means (and standard deviations) of the rows of ``blocks()``, read once (twice with ``std``).

    Parameters
    ----------
    blocks
        Returns a fresh iterator over ``(n_i, F)`` float32 blocks of rows, in order.
    std
        Also compute the (population) standard deviations.

    Returns
    -------
    ``(F,)`` means and standard deviations (``None`` without ``std``), bit-equal to NumPy's ``mean(0)`` and
    ``std(0)`` of the concatenated rows.
    """

    def total(parts: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
        acc, n = None, 0
        for b in parts:
            if len(b) == 0:
                continue
            # NumPy's axis-0 reduction adds rows one after another into the running sum: continue it
            acc = np.add.reduce(b if acc is None else np.concatenate([acc[None], b]), axis=0)
            n += len(b)
        if acc is None:
            msg = "No rows to compute statistics of."
            raise ValueError(msg)
        return acc, n

    acc, n = total(blocks())
    mean = np.true_divide(acc, n, dtype=acc.dtype)
    if not std:
        return mean, None
    sq, _ = total((d := b - mean) * d for b in blocks())
    return mean, np.sqrt(np.true_divide(sq, n, dtype=sq.dtype))


class RunningMoments:
    """Column means and (population) standard deviations of rows added block by block, in one pass.

    Each block is merged into float64 running moments (Chan, Golub and LeVeque's update of the mean and of the
    sum of squared deviations): memory is ``O(F)`` whatever the number of rows, and the float32 results are the
    exact moments rounded, within a rounding of NumPy's float32 ``mean(0)`` and ``std(0)`` of the stacked rows
    (which :func:`column_mean_std` reproduces bit for bit, but reading the rows twice).
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        """Merge the ``(n, F)`` rows of ``block``."""
        b = np.asarray(block, dtype=np.float64)
        if len(b) == 0:
            return
        n_b, mean_b = len(b), b.mean(0)
        m2_b = np.square(b - mean_b).sum(0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.square(delta) * (self.n * n_b / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(F,)`` float32 means and standard deviations of every row added."""
        if self.mean is None or self.m2 is None:
            msg = "No rows to compute statistics of."
            raise ValueError(msg)
        return self.mean.astype(np.float32), np.sqrt(self.m2 / self.n).astype(np.float32)
