"""Lazy readers for full-resolution H&E images: chunked TIFF through tifffile's zarr store, whole-file decode otherwise.

A slide image becomes a ``(c, y, x)`` uint8 dask array whose chunks are read only when touched. TIFF files
(tiled, striped, pyramidal, BigTIFF) are read chunk by chunk, so a crop reads only the tiles or strips under
it. JPEG and PNG have no random access: the first touched chunk decodes the whole file, which is then kept.
The array-likes behind the dask arrays pickle as their path, so slides survive copies and worker processes.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._validation import expected_to

__all__ = ["TIFF_SUFFIXES", "image_element", "lazy_image", "n_halvings"]

#: File suffixes read with tifffile (chunked); anything else goes through PIL (one decode).
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff")
_TARGET_CHUNK_PX = 1024  # dask chunk side aimed for, in whole native tiles/strips
_STRIP_CHUNK_ROWS = 256  # rows per dask chunk when the file stores full-width strips
_PIL_CHUNK_PX = 256


@contextmanager
def open_pil(path: Path) -> Iterator[Any]:
    """Open an image with PIL, silencing its decompression-bomb warning (slides are hundreds of megapixels)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            yield img


class LazyPil:
    """``(c, y, x)`` uint8 array-like over a JPEG/PNG: the shape comes from the header, pixels from one decode.

    JPEG has no random access, so the first slice decodes the whole image and keeps it; copies and pickles
    carry only the path.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open_pil(self.path) as img:
            width, height = img.size
        self.shape = (3, height, width)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type, tuple[Path]]:
        return type(self), (self.path,)

    @property
    def decoded(self) -> bool:
        """Whether the image has been decoded."""
        return self._pixels is not None

    def __getitem__(self, key: Any) -> np.ndarray:
        with self._lock:
            if self._pixels is None:
                with open_pil(self.path) as img:
                    self._pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        return self._pixels.transpose(2, 0, 1)[key]


class LazyTiff:
    """Array-like over level 0 of a TIFF's first series, read through tifffile's zarr store.

    Only the tiles or strips under a slice are read and decoded. The store (which holds an open file) is
    created on first access in each process; copies and pickles carry only the path.
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = Path(path)
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[0]
            self.axes = series.axes
            self.shape = tuple(int(s) for s in series.shape)
            self.dtype = np.dtype(series.dtype)
            page = series.levels[0].keyframe
            if page.is_tiled:
                self.native = (int(page.tilelength), int(page.tilewidth))
            else:
                self.native = (max(1, min(int(page.rowsperstrip), int(page.imagelength))), int(page.imagewidth))
        self.ndim = len(self.shape)
        self._array: Any = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type, tuple[Path]]:
        return type(self), (self.path,)

    def _zarr(self) -> Any:
        with self._lock:
            if self._array is None:
                import tifffile
                import zarr

                store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
                self._array = zarr.open(store, mode="r")
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._zarr()[key])


def n_halvings(height: int, width: int, *, coarsest_px: int = 2048, most: int = 6) -> int:
    """How many times to halve an image so that its longer side is at most ``coarsest_px`` (capped at ``most``)."""
    side = max(height, width)
    return int(min(most, max(0, math.ceil(math.log2(side / coarsest_px))))) if side > coarsest_px else 0


def _chunk(native: int, size: int, target: int) -> int:
    return min(size, native * max(1, round(target / native)))


def lazy_image(path: str | Path, *, name: str) -> Any:
    """``(c, y, x)`` uint8 dask array over an RGB image file, read lazily.

    Parameters
    ----------
    path
        A TIFF (any of :data:`TIFF_SUFFIXES`), JPEG or PNG file.
    name
        Name of the dask array (a stable name lets dask reuse computed chunks).

    Returns
    -------
    The dask array; RGBA images lose their alpha channel.

    Raises
    ------
    ValueError
        If the image is not 8-bit RGB(A).
    """
    import dask.array as da

    path = Path(path)
    if path.name.lower().endswith(TIFF_SUFFIXES):
        lazy = LazyTiff(path)
        axes, shape = lazy.axes, lazy.shape
        if lazy.dtype != np.uint8 or axes not in ("YXS", "SYX") or shape[axes.index("S")] not in (3, 4):
            found = f"axes {axes!r}, shape {shape} and dtype {lazy.dtype}"
            msg = (
                f"{expected_to(path.name, 'be an 8-bit RGB image', found)} hyperst reads H&E images; convert the "
                "slide to 8-bit RGB first."
            )
            raise ValueError(msg)
        ty, tx = lazy.native
        if axes == "YXS":
            height, width = shape[0], shape[1]
            target_y = _STRIP_CHUNK_ROWS if tx >= width else _TARGET_CHUNK_PX
            chunks = (_chunk(ty, height, target_y), _chunk(tx, width, _TARGET_CHUNK_PX), shape[2])
            data = da.from_array(lazy, chunks=chunks, name=name, meta=np.empty((0, 0, 0), np.uint8))
            data = data[:, :, :3].transpose(2, 0, 1)
        else:
            height, width = shape[1], shape[2]
            target_y = _STRIP_CHUNK_ROWS if tx >= width else _TARGET_CHUNK_PX
            chunks = (shape[0], _chunk(ty, height, target_y), _chunk(tx, width, _TARGET_CHUNK_PX))
            data = da.from_array(lazy, chunks=chunks, name=name, meta=np.empty((0, 0, 0), np.uint8))[:3]
        return data
    lazy_pil = LazyPil(path)
    chunks = (3, _PIL_CHUNK_PX, _PIL_CHUNK_PX)
    return da.from_array(lazy_pil, chunks=chunks, name=name, meta=np.empty((0, 0, 0), np.uint8))


def image_element(
    path: str | Path, coordinate_system: str, *, name: str, scale_factors: list[int] | Literal["auto"] | None
) -> Any:
    """Parse ``path`` into a spatialdata image element, identity-registered in ``coordinate_system``.

    Parameters
    ----------
    path
        The image file (see :func:`lazy_image`).
    coordinate_system
        The coordinate system whose units are the image's full-resolution pixels.
    name
        Name of the dask array.
    scale_factors
        Downsampling factors of the pyramid levels below full resolution; ``None`` or empty gives a
        single-scale image, ``"auto"`` halves the image until its longer side is at most 2048 px.

    Returns
    -------
    The parsed image (a ``DataTree`` when multiscale, else a ``DataArray``), chunked as the file is.
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    data = lazy_image(path, name=name)
    if scale_factors == "auto":
        scale_factors = [2] * n_halvings(int(data.shape[1]), int(data.shape[2]))
    return Image2DModel.parse(
        DataArray(data, dims=("c", "y", "x")),
        scale_factors=list(scale_factors) if scale_factors else None,
        transformations={coordinate_system: Identity()},
        chunks=data.chunksize,
        rgb=None,
    )
