"""Resize a batch of square crops to the encoder's input, channels first.

``"lanczos"`` resizes crop by crop with PIL's LANCZOS filter: squidpy's pixels, bit for bit (tested). PIL
releases the GIL while it resizes, so parts of a batch resize in parallel threads. ``"bilinear"`` resizes the
whole batch in one call of torch's antialiased bilinear interpolation on uint8 (PIL's filter, its own fixed-point
arithmetic): about four times less CPU than PIL's bilinear resize, whose pixels it gives for enlargements and
within one grey level for reductions (a few values in a thousand differ by 1, measured). The feature cache keys
the two apart (``hyperst.tl._features``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["resize_into"]

#: PIL filter of each ``resample`` name (PIL.Image.Resampling.LANCZOS; PIL imported when used).
_PIL_FILTERS = {"lanczos": 1}


def _resize_pil(crops: np.ndarray, out: np.ndarray, resample: str) -> None:
    from PIL import Image

    px = out.shape[-1]
    for i, crop in enumerate(crops):
        img = Image.fromarray(crop).resize((px, px), _PIL_FILTERS[resample])
        out[i] = np.asarray(img).transpose(2, 0, 1)


def _resize_torch(crops: np.ndarray, out: np.ndarray) -> None:
    import torch
    import torch.nn.functional as F

    px = out.shape[-1]
    x = torch.from_numpy(crops).permute(0, 3, 1, 2)  # a channels-last view: torch's fast uint8 path
    with torch.inference_mode():
        y = F.interpolate(x, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
    out[:] = y.numpy()  # channels last to first: numpy's copy takes about half the time of torch's `copy_`


def resize_into(crops: np.ndarray, out: np.ndarray, resample: str) -> None:
    """Resize ``(b, s, s, 3)`` uint8 crops into ``out``, a ``(b, 3, p, p)`` uint8 array.

    Parameters
    ----------
    crops
        Square RGB crops, channels last, C-contiguous.
    out
        Where the resized patches go, channels first (e.g. a slice of a batch).
    resample
        ``"lanczos"`` (PIL, crop by crop) or ``"bilinear"`` (torch, the whole batch at once).
    """
    if len(crops) == 0:
        return
    if crops.shape[1] == out.shape[-1]:  # already the encoder's size: no filter touches the pixels
        out[:] = crops.transpose(0, 3, 1, 2)
    elif resample == "bilinear":
        _resize_torch(crops, out)
    else:
        _resize_pil(crops, out, resample)
