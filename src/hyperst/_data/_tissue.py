"""Tissue detection on a low-resolution copy of an H&E image (never reading the full resolution into memory).

Conventions: positions are ``(x, y)`` pixels of the image's finest level; the mask is at most
:data:`MAX_MASK_SIDE` pixels on its long side.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import expected
from ._elements import image_levels

__all__ = ["MAX_MASK_SIDE", "low_res", "tissue_mask"]

#: Long side of the low-resolution image tissue is detected on, in pixels.
MAX_MASK_SIDE = 2048
#: Bounds on the saturation threshold: below 0.05 is the tint of glass and JPEG noise, above 0.15 is stained
#: tissue in every H&E scan, so Otsu's threshold is clipped to this band (a slide that is all tissue or all
#: background has no bimodal histogram for Otsu to split).
_SATURATION_BAND = (0.05, 0.15)


def _block_factor(needed: int, chunks: tuple[tuple[int, ...], ...]) -> int:
    """Return a block size >= ``needed`` that divides the image's chunks, if one is at most twice ``needed``.

    Averaging blocks that never straddle a chunk needs no rechunking, which keeps memory at a few chunks.
    """
    if needed <= 1:
        return 1
    inner = [c for axis in chunks[1:] for c in axis[:-1]]
    common = math.gcd(*inner) if inner else 0
    for f in range(needed, 2 * needed + 1):
        if common == 0 or common % f == 0:
            return f
    return needed


def low_res(image: object, image_key: str) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Read a ``(3, h, w)`` float32 copy of the image at most ``MAX_MASK_SIDE`` px long; its scale; full shape.

    The finest pyramid level that fits is read; if none does, the coarsest level is block-averaged lazily.
    The scale is ``(sx, sy)``: full-resolution pixels per low-resolution pixel.
    """
    import dask.array as da

    levels = [lvl.transpose("c", "y", "x") for lvl in image_levels(image)]
    full_h, full_w = int(levels[0].sizes["y"]), int(levels[0].sizes["x"])
    n_channels = int(levels[0].sizes["c"])
    if n_channels < 3:
        msg = expected(f"images[{image_key!r}]", "an RGB image (3 channels)", n_channels)
        msg = f"{msg} Pass `image_key=` naming the H&E image."
        raise ValueError(msg)
    fits = [lvl for lvl in levels if max(lvl.sizes["y"], lvl.sizes["x"]) <= MAX_MASK_SIDE]
    level = fits[0] if fits else levels[-1]
    h, w = int(level.sizes["y"]), int(level.sizes["x"])
    arr = da.asarray(level.data)[:3]
    factor = _block_factor(math.ceil(max(h, w) / MAX_MASK_SIDE), arr.chunks)
    if factor > 1:
        arr = da.coarsen(np.mean, arr, {1: factor, 2: factor}, trim_excess=True, dtype=np.float32)
    rgb = np.asarray(arr.compute(), dtype=np.float32)
    return rgb, (full_w / w * factor, full_h / h * factor), (full_h, full_w)


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """``mask`` without its connected components smaller than ``min_px`` pixels."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel()) >= min_px
    keep[0] = False
    return keep[labels]


def tissue_mask(rgb: np.ndarray, min_object_px: float) -> tuple[np.ndarray, float]:
    """Tissue pixels of a ``(3, h, w)`` H&E image, and the saturation threshold used.

    Saturation ``(max - min) / max`` over R, G, B is near 0 for glass (white), for black padding and for grey
    dust, and high for both haematoxylin and eosin. It is smoothed (Gaussian, sigma 1 px), thresholded at
    Otsu's value clipped to ``_SATURATION_BAND``, closed with a 3 x 3 square, pieces smaller than
    ``min_object_px`` are dropped and holes smaller than that are filled.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    hi, lo = rgb.max(0), rgb.min(0)
    sat = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    sat = ndimage.gaussian_filter(sat, sigma=1.0)
    otsu = float(threshold_otsu(sat)) if np.ptp(sat) > 1e-6 else _SATURATION_BAND[0]
    threshold = float(np.clip(otsu, *_SATURATION_BAND))
    mask = ndimage.binary_closing(sat > threshold, structure=np.ones((3, 3), bool), border_value=0)
    mask = _drop_small(mask, min_object_px)
    mask = ~_drop_small(~mask, min_object_px)  # fill small holes
    return mask, threshold
