"""Spot and niche patches around every spot, cropped lazily and resized to the encoder's input.

Crops go through squidpy's :class:`~squidpy.im.ImageContainer` over the (dask-backed) image element, so only
the pixels of the current batch are read; ``method="direct"`` slices the same pixels straight from the array
(identical output, tested) and is faster. Patches that cross the image border are padded with white, never
dropped. Sizes are physical: a patch covers the same micrometres whatever the scan resolution.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._constants import PATCH_SIZE_PX, RESAMPLE, SPOT_PATCH_UM
from .._settings import settings
from .._utils import progress
from .._validation import check_choice, check_positive, expected, expected_to
from ._elements import image_levels
from ._pixels import PAD_VALUE, ChunkedPixels, thread_map
from ._resize import resize_into

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._layout import SlideLayout

__all__ = ["CROP_BUFFER_BYTES", "PatchGeometry", "PatchReader", "dihedral"]

#: Most bytes of crops each read thread holds before resizing them (bilinear resizes these in one torch call).
CROP_BUFFER_BYTES = 4 * 2**20


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Apply the ``k``-th of the 8 dihedral transforms to the last two axes of ``x``.

    ``k`` in 0–3 rotates by ``k`` × 90°; 4–7 transpose first, then rotate. ``k = 0`` is the identity.

    Parameters
    ----------
    x
        ``(..., H, W)`` array, e.g. ``(B, 3, H, W)`` patches.
    k
        Transform index in ``range(8)``.

    Returns
    -------
    The transformed array (a contiguous copy).
    """
    if k not in range(8):
        raise ValueError(expected("k", "an integer in range(8)", k))
    if k >= 4:
        x = np.swapaxes(x, -1, -2)
    return np.ascontiguousarray(np.rot90(x, k % 4, axes=(-2, -1)))


@dataclass(frozen=True)
class PatchGeometry:
    """Physical size of the spot and niche patches.

    Parameters
    ----------
    spot_um
        Side of the square spot patch in micrometres (the authors' code uses 112 µm).
    niche_um
        Side of the niche patch; ``None`` covers the spot and ``n_rings`` rings of grid neighbours:
        ``2 * (n_rings * pitch + spot radius)`` (about 255 µm on Visium, 500 µm on legacy ST).
    n_rings
        Neighbour rings the niche covers when ``niche_um`` is ``None``.
    out_px
        Side in pixels that both patches are resized to (the encoder's input).
    resample
        Resize filter: ``"lanczos"`` (squidpy's pixels, resized by PIL crop by crop) or ``"bilinear"``
        (slightly softer; resized by torch a batch at once, about eight times less CPU than LANCZOS).
    """

    spot_um: float = SPOT_PATCH_UM
    niche_um: float | None = None
    n_rings: int = 1
    out_px: int = PATCH_SIZE_PX
    resample: str = "lanczos"

    def __post_init__(self) -> None:
        check_positive(self.spot_um, "spot_um")
        if self.niche_um is not None:
            check_positive(self.niche_um, "niche_um")
        if not isinstance(self.n_rings, int) or self.n_rings < 1:
            raise ValueError(expected("n_rings", "an integer >= 1", self.n_rings))
        if not isinstance(self.out_px, int) or self.out_px < 8:
            raise ValueError(expected("out_px", "an integer >= 8", self.out_px))
        check_choice(self.resample, "resample", RESAMPLE)

    def cache_key(self) -> dict[str, str]:
        """Return what identifies the resize filter's pixels in a feature cache's key (nothing for LANCZOS).

        LANCZOS caches keep the keys they had before the option existed. ``"bilinear"`` names its resize too:
        it resized with PIL before it resized in torch (pixels within one grey level), so caches of PIL's
        bilinear pixels are not reused for torch's.
        """
        if self.resample == "lanczos":
            return {}
        return {"resample": self.resample, "resize": "torch-antialias"}

    def sides_px(self, layout: SlideLayout) -> tuple[float, float]:
        """Spot and niche patch sides in full-resolution pixels of ``layout``'s image."""
        spot = self.spot_um / layout.microns_per_pixel
        if self.niche_um is not None:
            niche = self.niche_um / layout.microns_per_pixel
        elif np.isfinite(layout.grid.pitch):
            niche = 2 * (self.n_rings * layout.grid.pitch + layout.spot_diameter_px / 2)
        else:
            niche = 2 * spot
        return spot, max(niche, spot)


class PatchReader:
    """Read spot and niche patches of one slide in batches.

    Parameters
    ----------
    sdata
        The slide.
    layout
        Its layout, from :func:`hyperst._data.slide_layout`.
    geometry
        Patch sizes.
    method
        ``"squidpy"`` crops through :class:`squidpy.im.ImageContainer`; ``"direct"`` slices the image array
        (same pixels, less overhead).
    """

    def __init__(
        self,
        sdata: SpatialData,
        layout: SlideLayout,
        geometry: PatchGeometry | None = None,
        *,
        method: Literal["squidpy", "direct"] = "direct",
    ) -> None:
        self.layout = layout
        self.geometry = geometry or PatchGeometry()
        self.method = check_choice(method, "method", ["squidpy", "direct"])
        image_key = layout.elements.image_key
        self.levels = image_levels(sdata.images[image_key])
        base = self.levels[0]
        if "c" not in base.dims or base.sizes["c"] != 3:
            n = base.sizes.get("c", 0)
            fix = "Pass `image_key=` naming the H&E image"
            if n == 4:
                fix += (
                    ", or keep its RGB channels: `sdata.images[k] = Image2DModel.parse(img.isel(c=[0, 1, 2]), ...)` "
                    "(an RGBA scan's alpha channel carries no stain)"
                )
            elif n == 1:
                fix += ", or stack the grey channel three times (`np.repeat(grey, 3, axis=0)`) if it is a grey H&E scan"
            problem = expected_to(f"images[{image_key!r}]", "be RGB with 3 channels along `c`", dict(base.sizes))
            msg = f"{problem} {fix}."
            raise ValueError(msg)
        if base.dtype != np.uint8:
            problem = expected_to(f"images[{image_key!r}]", "hold uint8 RGB values (0-255)", f"dtype `{base.dtype}`")
            msg = f"{problem} Convert it, e.g. `(img * 255).clip(0, 255).astype('uint8')` for floats in [0, 1]."
            raise ValueError(msg)
        self.downsample = [base.sizes["x"] / lvl.sizes["x"] for lvl in self.levels]
        self.sides = self.geometry.sides_px(layout)
        self._containers: dict[int, object] = {}
        self._sources: dict[int, ChunkedPixels] = {}
        self._lock = threading.Lock()
        self._buffers = threading.local()

    def __len__(self) -> int:
        return len(self.layout.centres_px)

    def _level_for(self, side_px: float) -> int:
        """Return the coarsest pyramid level that still gives ``out_px`` pixels across the patch."""
        out = self.geometry.out_px
        ok = [i for i, f in enumerate(self.downsample) if side_px / f >= out * 0.999]
        return max(ok, key=lambda i: self.downsample[i]) if ok else 0

    def crop_boxes(self, idx: np.ndarray, side_px: float, level: int) -> np.ndarray:
        """Integer ``(x0, y0, size)`` boxes, in level pixels, of patches centred on the spots ``idx``."""
        f = self.downsample[level]
        size = max(1, round(side_px / f))
        c = self.layout.centres_px[idx] / f
        x0 = np.round(c[:, 0] - size / 2).astype(int)
        y0 = np.round(c[:, 1] - size / 2).astype(int)
        return np.column_stack([x0, y0, np.full(len(idx), size)])

    def _container(self, level: int) -> object:
        if level not in self._containers:
            from .._utils import import_squidpy

            sq = import_squidpy()
            arr = self.levels[level].transpose("y", "x", "c").rename({"c": "channels"}).expand_dims("z", axis=2)
            self._containers[level] = sq.im.ImageContainer(
                arr, layer="image", dims=("y", "x", "z", "channels"), lazy=True
            )
        return self._containers[level]

    def _crops_squidpy(self, boxes: np.ndarray, level: int) -> list[np.ndarray]:
        ic = self._container(level)
        out = []
        for x0, y0, s in boxes:
            crop = ic.crop_corner(y=int(y0), x=int(x0), size=(int(s), int(s)), cval=np.uint8(PAD_VALUE))
            arr = np.asarray(crop["image"].data)
            out.append(arr.reshape(int(s), int(s), -1)[..., :3])
        return out

    def _pixels(self, level: int) -> ChunkedPixels:
        if level not in self._sources:
            self._sources[level] = ChunkedPixels(self.levels[level].data, cache_bytes=settings.patch_cache_mb * 2**20)
        return self._sources[level]

    def _buffer(self, n: int, size: int) -> np.ndarray:
        """Return a ``(n, size, size, 3)`` uint8 crop buffer of the calling thread, reused between batches."""
        buffers = self._buffers.__dict__  # one dict per thread
        key = (n, size)
        if key not in buffers:
            buffers.clear()  # one shape at a time per thread: the spot or the niche crops of a batch
            buffers[key] = np.empty((n, size, size, 3), dtype=np.uint8)
        return buffers[key]

    def _read(self, idx: np.ndarray, side_px: float) -> np.ndarray:
        level = self._level_for(side_px)
        boxes = self.crop_boxes(idx, side_px, level)
        out_px, resample = self.geometry.out_px, self.geometry.resample
        batch = np.empty((len(idx), 3, out_px, out_px), dtype=np.uint8)
        if len(idx) == 0:
            return batch
        if self.method == "squidpy":
            for i, crop in enumerate(self._crops_squidpy(boxes, level)):  # one full-size crop held at a time
                resize_into(np.ascontiguousarray(crop)[None], batch[i : i + 1], resample)
            return batch
        pixels = self._pixels(level)
        size = int(boxes[0, 2])  # every box of a level has the same side

        step = max(1, CROP_BUFFER_BYTES // (3 * size * size))  # crops per buffer: memory stays bounded

        def work(part: range) -> None:  # crop into this thread's buffer, then resize into the batch
            for a in range(part.start, part.stop, step):
                b = min(a + step, part.stop)
                crops = self._buffer(b - a, size)
                for k in range(a, b):
                    pixels.crop(boxes[k], out=crops[k - a])
                resize_into(crops, batch[a:b], resample)

        with self._lock:  # the chunk cache is filled by one caller at a time; crops and resizes run in threads
            for group in pixels.groups(boxes):  # consecutive boxes
                pixels.prepare(boxes[group])
                n_parts = max(1, min(settings.read_workers, len(group)))
                edges = np.linspace(group[0], group[-1] + 1, n_parts + 1).round().astype(int).tolist()
                thread_map(work, [range(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)], n_parts)
        return batch

    def read(self, idx: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Spot and niche patches of the spots ``idx`` (table row positions).

        Returns
        -------
        Two ``(B, 3, out_px, out_px)`` uint8 arrays: spot patches and niche patches.
        """
        idx = np.asarray(idx, dtype=int)
        spot_side, niche_side = self.sides
        return self._read(idx, spot_side), self._read(idx, niche_side)

    def reading_order(self) -> np.ndarray:
        """Table rows in the order :meth:`iter_batches` reads them: bands across the slide, in a snake.

        Bands are as tall as the image's chunks (or the niche patch, if larger), so consecutive batches touch
        the same chunks and the chunk cache reads each about once, whatever order the table's rows are in
        (spatialdata-io's Visium tables are in barcode order, which is spatially random).
        """
        centres = self.layout.centres_px
        data = self.levels[0].data
        chunk = max(data.chunks[1]) if hasattr(data, "chunks") and data.chunks else 2048
        band = np.floor(centres[:, 1] / max(float(chunk), self.sides[1])).astype(np.int64)
        x = np.where(band % 2 == 0, centres[:, 0], -centres[:, 0])
        return np.lexsort((x, band))

    def iter_batches(
        self, batch_size: int = 64, *, desc: str = "patches"
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(idx, spot, niche)`` for batches of spots covering every spot once, with a progress bar.

        ``idx`` holds the batch's table row positions, in :meth:`reading_order` (neighbours together), not
        consecutive rows. Memory is bounded by a few batches and the chunk cache: only the image chunks under
        their patches are read. The next ``hyperst.settings.read_ahead`` batches (default 1) are read in a
        background thread meanwhile, each cropped and resized by ``hyperst.settings.read_workers`` threads.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(expected("batch_size", "a positive integer", batch_size))
        ahead = settings.read_ahead  # an integer >= 0, checked when set
        order = self.reading_order()
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        bar = progress(batches, total=len(batches), desc=desc, unit="batch")
        if ahead == 0 or len(batches) < 2:
            for idx in bar:
                yield idx, *self.read(idx)
            return
        # one reader thread keeps `ahead` batches in flight, so reading overlaps the caller's encoding; leaving the
        # loop early waits for those reads only
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hyperst-patches") as pool:
            pending = deque(pool.submit(self.read, idx) for idx in batches[:ahead])
            for i, idx in enumerate(bar):
                if i + ahead < len(batches):
                    pending.append(pool.submit(self.read, batches[i + ahead]))
                spot, niche = pending.popleft().result()
                yield idx, spot, niche
