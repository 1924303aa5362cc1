"""Square crops of one image level, read tile by tile through a bounded cache.

Slicing a dask array once per patch costs about a millisecond of graph building and scheduling, more than the
pixels themselves, and reads every chunk a patch touches again for the next patch. :class:`ChunkedPixels`
instead fetches the tiles under a whole batch of patches in one ``dask.compute`` (a tile is one chunk, or a
block of small chunks about ``TILE_PX`` wide), keeps them (channels last, ready for PIL) in a
least-recently-used cache bounded in bytes, and copies each crop out of them with numpy. Pixels outside the
image are white. The crops are exactly the pixels a direct slice gives (tested).
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["CHUNK_CACHE_BYTES", "ChunkedPixels", "thread_map"]

#: Fill value for pixels outside the image (H&E background is white).
PAD_VALUE = 255
#: Bytes of image tiles kept between calls unless told otherwise (``hyperst.settings.patch_cache_mb``).
CHUNK_CACHE_BYTES = 256 * 2**20

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def thread_map(fn: Callable, items: Iterable, workers: int) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads (in order; in the caller's thread when ``workers <= 1``).

    The pool belongs to the process that made it, so a forked child (a data-loader worker) makes its own
    instead of waiting on threads it did not inherit.
    """
    items = list(items)
    if workers <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    key = (os.getpid(), workers)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hyperst-pixels")
    return list(_pools[key].map(fn, items))


#: Boxes whose tiles a :class:`ChunkedPixels` remembers (about two batches' worth would do).
_MAX_BOXES_KEPT = 4096
#: Pixels per side of the tiles the cache holds: chunks smaller than this are fetched (and kept) in groups.
TILE_PX = 1024


def _tile_edges(chunks: tuple[int, ...]) -> np.ndarray:
    """Edges of tiles made of whole chunks, about ``TILE_PX`` wide (one chunk when chunks are larger)."""
    edges = np.concatenate([[0], np.cumsum(chunks)])
    step = max(1, round(TILE_PX / max(1, int(np.median(chunks)))))
    return np.unique(np.concatenate([edges[::step], edges[-1:]]))


class ChunkedPixels:
    """Crops of a ``(c, y, x)`` image array (numpy or dask), channels last.

    Parameters
    ----------
    data
        The image level's array.
    cache_bytes
        Most bytes of tiles kept between calls (dask arrays only; a numpy array is sliced in place).
    """

    def __init__(self, data: object, *, cache_bytes: int = CHUNK_CACHE_BYTES) -> None:
        import dask.array as da

        self.data = data
        self.shape = tuple(int(s) for s in data.shape[1:])
        self.lazy = isinstance(data, da.Array)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._box_tiles: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
        if self.lazy:
            self._y_edges = _tile_edges(data.chunks[1])
            self._x_edges = _tile_edges(data.chunks[2])
            # the same edges as Python lists: `bisect` on a list costs a fraction of a scalar `np.searchsorted`
            self._y_list, self._x_list = self._y_edges.tolist(), self._x_edges.tolist()
        else:
            self._hwc = np.moveaxis(np.asarray(data), 0, -1)  # a view: no copy of the image

    @staticmethod
    def _tile_range(edges: list[int], a: int, b: int) -> range:
        """Tile indices along one axis that overlap pixels ``[a, b)`` (already clipped to the image)."""
        return range(bisect.bisect_right(edges, a) - 1, bisect.bisect_left(edges, b))

    def _tiles_of(self, box: tuple[int, int, int]) -> list[tuple[int, int]]:
        """Tiles under ``box``, remembered: a batch asks for each box's tiles three times (group, fetch, crop)."""
        tiles = self._box_tiles.get(box)
        if tiles is None:
            if len(self._box_tiles) >= _MAX_BOXES_KEPT:
                self._box_tiles.clear()
            tiles = self._box_tiles[box] = self._find_tiles(box)
        return tiles

    def _find_tiles(self, box: tuple[int, int, int]) -> list[tuple[int, int]]:
        x0, y0, s = box
        ya, yb = max(y0, 0), min(y0 + s, self.shape[0])
        xa, xb = max(x0, 0), min(x0 + s, self.shape[1])
        if ya >= yb or xa >= xb:
            return []
        ys = self._tile_range(self._y_list, ya, yb)
        xs = self._tile_range(self._x_list, xa, xb)
        return [(i, j) for i in ys for j in xs]

    def _fetch(self, keys: list[tuple[int, int]]) -> None:
        """Read the tiles ``keys`` that are not cached, in one compute, then trim the cache to its budget."""
        import dask

        missing = [k for k in dict.fromkeys(keys) if k not in self._cache]
        if missing:
            ye, xe = self._y_edges, self._x_edges
            tiles = [self.data[:, ye[i] : ye[i + 1], xe[j] : xe[j + 1]] for i, j in missing]
            arrays = dask.compute(*tiles, scheduler="threads")
            for key, arr in zip(missing, arrays, strict=True):
                hwc = np.ascontiguousarray(np.moveaxis(np.asarray(arr), 0, -1))
                self._cache[key] = hwc
                self._cached_bytes += hwc.nbytes
        for key in keys:
            self._cache.move_to_end(key)
        needed = set(keys)
        while self._cached_bytes > self.cache_bytes and len(self._cache) > len(needed):
            key, arr = next(iter(self._cache.items()))
            if key in needed:  # only when the batch alone exceeds the budget: keep what it needs
                break
            del self._cache[key]
            self._cached_bytes -= arr.nbytes

    def groups(self, boxes: np.ndarray) -> list[list[int]]:
        """Split the boxes, in order, into groups whose tiles fit the cache budget (one group for a numpy array)."""
        if not self.lazy:
            return [list(range(len(boxes)))]
        out: list[list[int]] = [[]]
        seen: set[tuple[int, int]] = set()
        nbytes = 0
        for i, box in enumerate(boxes):
            new = {k for k in self._tiles_of(tuple(int(v) for v in box)) if k not in seen}
            size = sum(self._tile_bytes(k) for k in new)
            if out[-1] and nbytes + size > self.cache_bytes:
                out.append([])
                seen, nbytes = set(), 0
                new = set(self._tiles_of(tuple(int(v) for v in box)))
                size = sum(self._tile_bytes(k) for k in new)
            out[-1].append(i)
            seen |= new
            nbytes += size
        return out

    def _tile_bytes(self, key: tuple[int, int]) -> int:
        i, j = key
        h = self._y_list[i + 1] - self._y_list[i]
        w = self._x_list[j + 1] - self._x_list[j]
        return h * w * int(self.data.shape[0]) * self.data.dtype.itemsize

    def prepare(self, boxes: np.ndarray) -> None:
        """Read into the cache the tiles under ``boxes`` (one ``dask.compute``); then :meth:`crop` only copies.

        Call it from one thread at a time; :meth:`crop` may then run in several threads.
        """
        if self.lazy:
            self._fetch([k for b in boxes for k in self._tiles_of(tuple(int(v) for v in b))])

    def crops(self, boxes: np.ndarray) -> list[np.ndarray]:
        """``(s, s, c)`` uint8 crops of the integer ``(x0, y0, s)`` boxes, white outside the image."""
        out: list[np.ndarray] = []
        for group in self.groups(boxes):
            self.prepare(boxes[group])
            out.extend(self.crop(boxes[i]) for i in group)
        return out

    def crop(self, box: np.ndarray | tuple[int, int, int], out: np.ndarray | None = None) -> np.ndarray:
        """Return the ``(s, s, c)`` crop of one ``(x0, y0, s)`` box, from the cache that :meth:`prepare` filled.

        ``out``, an ``(s, s, c)`` array of the image's dtype (e.g. a row of a batch buffer), receives the crop
        instead of a new array.
        """
        x0, y0, s = (int(v) for v in box)
        h, w = self.shape
        ya, yb, xa, xb = max(y0, 0), min(y0 + s, h), max(x0, 0), min(x0 + s, w)
        inside = ya == y0 and xa == x0 and yb == y0 + s and xb == x0 + s
        if not self.lazy and inside:
            if out is None:
                return np.ascontiguousarray(self._hwc[ya:yb, xa:xb])
            out[:] = self._hwc[ya:yb, xa:xb]
            return out
        if out is None:
            out = np.empty((s, s, self.data.shape[0]), dtype=self.data.dtype)
        if not inside:
            out.fill(PAD_VALUE)
        if ya >= yb or xa >= xb:
            return out
        if not self.lazy:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = self._hwc[ya:yb, xa:xb]
            return out
        for i, j in self._tiles_of((x0, y0, s)):
            cy, cx = self._y_list[i], self._x_list[j]
            tile = self._cache[(i, j)]
            # the overlap of the crop and this tile, in image pixels
            oy0, oy1 = max(ya, cy), min(yb, cy + tile.shape[0])
            ox0, ox1 = max(xa, cx), min(xb, cx + tile.shape[1])
            out[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = tile[oy0 - cy : oy1 - cy, ox0 - cx : ox1 - cx]
        return out
