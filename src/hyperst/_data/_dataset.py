"""Training data as torch datasets: cached features (frozen encoder) or patches read on the fly (LoRA).

Both give ``(spot, niche, spot_gene, niche_gene, target)`` items and draw, per spot and epoch, one random
dihedral view (:meth:`ViewDataset.set_epoch`), the same for a spot and its niche, reproducibly from the seed.
Without augmentation every spot shows view 0, the identity.

Arrays are read by rows from each slide's :class:`~hyperst._data._store.SlideArrays` (in memory, or zarr on
disk through the bounded chunk cache of :mod:`hyperst._data._store`), a whole batch at a time
(``__getitems__``, the DataLoader's batched path); nothing is concatenated over the slides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .._settings import settings
from ._patches import PatchGeometry, PatchReader, dihedral
from ._store import SlideArrays, take

__all__ = ["ChunkShuffleSampler", "FeatureDataset", "PatchDataset", "ViewDataset", "stacked"]

#: ``(slide, rows)`` pairs: a slide (``.name``, ``.sdata``, ``.layout``) and the table row positions of its
#: spots that are used.
Parts = Sequence[tuple[Any, np.ndarray]]
#: Per slide name, its arrays (:class:`SlideArrays`, or in memory the ``(spot gene, niche gene, target)``
#: arrays over all its spots).
GeneArrays = Mapping[str, SlideArrays | tuple[np.ndarray, np.ndarray, np.ndarray]]

#: Rows per block when statistics or predictions stream over a dataset (a multiple of 1024, the batch of
#: :func:`hyperst.tl._trust.spot_radius`, so blocks split the rows where one pass over all of them would).
BLOCK_ROWS = 8192


def stacked(blocks: Iterable[np.ndarray], n_rows: int) -> np.ndarray:
    """Consecutive ``(n_i, ...)`` blocks, ``n_rows`` rows in all, written into one array as they come.

    Unlike concatenating a list, the blocks and the whole are never all held at once.
    """
    out, a = None, 0
    for block in blocks:
        if out is None:
            out = np.empty((n_rows, *block.shape[1:]), dtype=block.dtype)
        out[a : a + len(block)] = block
        a += len(block)
    if out is None or a != n_rows:
        msg = f"The blocks hold {a} rows, not the {n_rows} they were said to."
        raise ValueError(msg)
    return out


class ViewDataset(Dataset):
    """Spots of several slides with their gene inputs and targets, and the dihedral view each shows this epoch.

    Parameters
    ----------
    parts
        ``(slide, rows)`` pairs.
    genes
        Per slide name, its arrays.
    n_views
        Views to draw from (1: always the identity).
    seed
        Seed of the view draws.
    """

    def __init__(self, parts: Parts, genes: GeneArrays, *, n_views: int, seed: int) -> None:
        self.arrays = [SlideArrays.of(genes[s.name]) for s, _ in parts]
        # int32 positions and int8 views: a few bytes per spot of the cohort, kept for the whole fit
        self.slide = np.concatenate([np.full(len(r), i, dtype=np.int32) for i, (_, r) in enumerate(parts)])
        self.row = np.concatenate([np.asarray(r, dtype=np.int32) for _, r in parts])
        self.n_views = n_views
        self.seed = seed
        self.views = np.zeros(len(self.row), dtype=np.int8)
        self.set_epoch(0)  # the loader may fetch the first batch before the epoch-start hook runs

    def set_epoch(self, epoch: int) -> None:
        """Draw the dihedral view of every spot for ``epoch``."""
        if self.n_views > 1:
            draw = np.random.default_rng((self.seed, epoch)).integers(0, self.n_views, len(self))
            self.views = draw.astype(np.int8)

    def __len__(self) -> int:
        return len(self.row)

    def _gather(self, idx: np.ndarray, pick: Any, views: np.ndarray | None = None) -> np.ndarray:
        """Rows of ``idx`` from ``pick(arrays)`` of each slide (``views``: one view per row), in ``idx`` order."""
        slides = np.unique(self.slide[idx])
        if len(slides) == 1:  # one slide: no copy into a second buffer
            return take(pick(self.arrays[slides[0]]), self.row[idx], views)
        out = None
        for s in slides:
            mine = np.flatnonzero(self.slide[idx] == s)
            values = take(pick(self.arrays[s]), self.row[idx[mine]], None if views is None else views[mine])
            if out is None:
                out = np.empty((len(idx), *values.shape[1:]), dtype=values.dtype)
            out[mine] = values
        return out

    def genes(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(n, G)`` spot gene inputs, niche gene inputs and targets of items ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        return tuple(self._gather(idx, lambda a, k=k: a.genes[k]) for k in range(3))

    def blocks(self, what: Any, size: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        """``what(idx)`` of consecutive blocks of ``size`` items, in order."""
        for a in range(0, len(self), size):
            yield what(np.arange(a, min(a + size, len(self))))

    @property
    def target(self) -> np.ndarray:
        """``(N, G)`` targets of every item, read into memory (the validation spots'), a block at a time."""
        return stacked(
            self.blocks(lambda i: self._gather(np.asarray(i, dtype=np.int64), lambda a: a.genes[2])), len(self)
        )

    def _items(self, first: np.ndarray, second: np.ndarray, idx: np.ndarray) -> list[tuple[torch.Tensor, ...]]:
        genes = self.genes(idx)
        return [
            (torch.from_numpy(first[j]), torch.from_numpy(second[j]), *(torch.from_numpy(g[j]) for g in genes))
            for j in range(len(idx))
        ]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([i])[0]


class FeatureDataset(ViewDataset):
    """Cached ``(V, F)`` spot and niche features per spot; ``augment`` draws among the ``V`` cached views."""

    def __init__(self, parts: Parts, genes: GeneArrays, *, augment: bool, seed: int) -> None:
        n_cached = min(SlideArrays.of(genes[s.name]).spot.shape[1] for s, _ in parts)
        super().__init__(parts, genes, n_views=n_cached if augment else 1, seed=seed)

    def features(self, idx: np.ndarray, views: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(n, F)`` spot and niche features of items ``idx`` in ``views`` (default: view 0)."""
        idx = np.asarray(idx, dtype=np.int64)
        views = np.zeros(len(idx), dtype=np.int64) if views is None else views
        return self._gather(idx, lambda a: a.spot, views), self._gather(idx, lambda a: a.niche, views)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """Read a whole batch, a chunk of spots at a time (the DataLoader's batched path)."""
        idx = np.asarray(indices, dtype=np.int64)
        spot, niche = self.features(idx, self.views[idx])
        return self._items(spot, niche, idx)

    def nbytes(self) -> int:
        """Bytes of the chunks of zarr arrays that the items touch (0 when every array is in memory)."""
        total = 0
        for s, arrays in enumerate(self.arrays):
            rows = self.row[self.slide == s]
            for source in arrays.sources():
                if not source.in_memory:
                    total += len(np.unique(rows // source.chunk_len)) * source.chunk_len * source.row_nbytes
        return total

    def sampler(self) -> ChunkShuffleSampler | None:
        """Return a chunk-aware shuffle when the chunks read exceed ``settings.feature_cache_mb``; else ``None``.

        ``None`` keeps the DataLoader's own shuffle (a random permutation of all spots): the chunks read then
        all stay in the cache, as the whole arrays in memory would.
        """
        budget = settings.feature_cache_mb * 2**20
        if self.nbytes() <= budget:
            return None
        spot = [a.spot for a in self.arrays]
        chunk = self.row // np.array([s.chunk_len for s in spot])[self.slide]
        per_spot = max(a.row_nbytes for arrays in self.arrays for a in arrays.sources())
        window = max(1, budget // (2 * per_spot * len(self.arrays[0].sources())))
        chunk = chunk.astype(np.int64)
        return ChunkShuffleSampler(self.slide * (int(chunk.max()) + 1) + chunk, window, seed=self.seed)


class ChunkShuffleSampler(Sampler[int]):
    """Shuffle that reads each chunk of spots about once per epoch (a block shuffle).

    Each epoch, the chunks are put in a random order and taken in windows of about ``window`` spots (half the
    cache budget); the spots of a window are shuffled together. With ``set_epoch`` (Lightning calls it, also
    under DDP, whose wrapper hands every process its share of this order) each epoch has its own order.

    Parameters
    ----------
    chunks
        ``(N,)`` chunk id of every item.
    window
        Spots per window.
    seed
        Seed of the order.
    """

    def __init__(self, chunks: np.ndarray, window: int, *, seed: int) -> None:
        self.chunks = np.asarray(chunks)
        if self.chunks.size and np.abs(self.chunks).max() < 2**31:  # kept for the whole fit: 4 bytes a spot
            self.chunks = self.chunks.astype(np.int32)
        self.window = int(window)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.chunks)

    def order(self) -> np.ndarray:
        """Return the order of the items in the current epoch."""
        rng = np.random.default_rng((self.seed, self.epoch))
        ids, inverse, counts = np.unique(self.chunks, return_inverse=True, return_counts=True)
        by_chunk = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
        out, window = [], []
        for c in rng.permutation(len(ids)):
            window.append(by_chunk[c])
            if sum(len(w) for w in window) >= self.window:
                out.append(rng.permutation(np.concatenate(window)))
                window = []
        if window:
            out.append(rng.permutation(np.concatenate(window)))
        return np.concatenate(out)

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        for a in range(0, len(order), 8192):  # as Python ints a block at a time, not a list of the whole cohort
            yield from order[a : a + 8192].tolist()


class PatchDataset(ViewDataset):
    """``(3, P, P)`` uint8 spot and niche patches cropped from the slides on the fly.

    The parameters are those of :class:`ViewDataset`, and ``geometry``: the patch sizes.
    """

    def __init__(self, parts: Parts, genes: GeneArrays, geometry: PatchGeometry, *, n_views: int, seed: int) -> None:
        self.readers = [PatchReader(s.sdata, s.layout, geometry) for s, _ in parts]
        super().__init__(parts, genes, n_views=n_views, seed=seed)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """Read the patches of a whole batch with one crop call per slide (the DataLoader's batched path)."""
        idx = np.asarray(indices, dtype=np.int64)
        side = self.readers[0].geometry.out_px
        spot = np.empty((len(idx), 3, side, side), dtype=np.uint8)
        niche = np.empty_like(spot)
        for s in np.unique(self.slide[idx]):
            mine = np.flatnonzero(self.slide[idx] == s)
            spot[mine], niche[mine] = self.readers[s].read(self.row[idx[mine]])
        for j, i in enumerate(idx):
            v = int(self.views[i])
            spot[j], niche[j] = dihedral(spot[j], v), dihedral(niche[j], v)
        return self._items(spot, niche, idx)
