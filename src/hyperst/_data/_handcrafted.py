"""Hand-crafted image features of patches through squidpy: weight-free, always offline.

Each patch is first resized to ``size`` px by exact area averaging, so that the grey-level co-occurrence
matrix (GLCM, distance 1 px) sees the same physical scale whatever the scan resolution. Then, per patch:

- ``features_summary`` of the R, G and B channels: quantiles 0.9, 0.5, 0.1, mean and standard deviation,
  divided by 255 (15 features);
- ``features_histogram`` of R, G and B: 10 bins over the fixed range ``[0, 255]`` (so that patches are
  comparable), as fractions of the pixels (30 features);
- ``features_texture`` of the grey level (ITU-R 601 luma): contrast, dissimilarity, homogeneity, correlation
  and ASM of the GLCM, averaged over the axis-aligned angles (0, π/2) and over the diagonal ones (π/4, 3π/4)
  (10 features).

The 8 dihedral transforms of a patch (:func:`hyperst._data.dihedral`) give exactly the same features (tested),
so one view suffices: summary and histogram ignore pixel positions, the area resize is computed in integers
and commutes with flips and transposes, and a flip or a transpose only swaps angles within each averaged
pair (or reverses a direction, which transposes the GLCM and leaves these five properties unchanged). Per
angle, the texture would not be invariant. The features have mixed scales; standardise them before use.

Cost (one core): squidpy computes the GLCM properties on a 256 × 256 grey-level matrix, about 4 ms per
property whatever the patch size, so the texture dominates: about 16 ms per patch at ``size=64`` and 20 ms
at 224 (three RGB texture channels would triple it, hence the single grey channel). Resizing first thus
fixes the texture's scale rather than saving much time. All patches of a batch share one
:class:`~squidpy.im.ImageContainer`, one library id per patch along ``z`` (a container per patch would add
about 1 ms each).
"""

from __future__ import annotations

import numpy as np

from .._validation import expected

__all__ = ["HANDCRAFTED_N_FEATURES", "handcrafted_feature_names", "handcrafted_features"]

_QUANTILES = (0.9, 0.5, 0.1)
_BINS = 10
_PROPS = ("contrast", "dissimilarity", "homogeneity", "correlation", "ASM")
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
# the grey level is channel 0 of the container, R, G, B are 1-3: squidpy 1.8 `features_texture` indexes the
# selected channels with their original index, which only works for a leading channel
_GREY = 0
_RGB = [1, 2, 3]
_LUMA = np.array([0.299, 0.587, 0.114])


def handcrafted_feature_names() -> list[str]:
    """Names of the columns :func:`handcrafted_features` returns, in order.

    Returns
    -------
    ``summary_ch-{c}_*`` and ``histogram_ch-{c}_bin-{i}`` for the channels ``c`` = 0, 1, 2 (R, G, B), then
    ``texture_grey_{prop}_{axial|diagonal}``.
    """
    names = []
    for c in range(3):
        names += [f"summary_ch-{c}_quantile-{q}" for q in _QUANTILES]
        names += [f"summary_ch-{c}_mean", f"summary_ch-{c}_std"]
    names += [f"histogram_ch-{c}_bin-{i}" for c in range(3) for i in range(_BINS)]
    names += [f"texture_grey_{p}_{kind}" for p in _PROPS for kind in ("axial", "diagonal")]
    return names


#: Number of hand-crafted features per patch.
HANDCRAFTED_N_FEATURES = len(handcrafted_feature_names())


def _area_sum_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Sum the input pixels each of ``n_out`` output pixels covers along ``axis``, times ``n_in``, in integers.

    With the axis stretched ``n_out`` times, output pixel ``i`` spans ``[i * n_in, (i + 1) * n_in)`` and input
    pixel ``j`` spans ``[j * n_out, (j + 1) * n_out)``: every overlap is an integer, so the result is exact
    (flips and transposes commute with it, rounding ties included) and needs no BLAS call (whose threads can
    stall for tens of milliseconds on busy shared cores).
    """
    x = np.moveaxis(x, axis, -1).astype(np.int64)
    n_in = x.shape[-1]
    running = np.concatenate([np.zeros((*x.shape[:-1], 1), dtype=np.int64), np.cumsum(x, axis=-1)], axis=-1)
    edges = np.arange(n_out + 1) * n_in  # output edges, stretched
    lo = np.minimum(edges // n_out, n_in - 1)  # input pixel holding each edge
    below = n_out * running[..., lo] + (edges - lo * n_out) * x[..., lo]  # stretched sum left of each edge
    return np.moveaxis(np.diff(below, axis=-1), -1, axis)


def _resize(patches: np.ndarray, size: int) -> np.ndarray:
    """Area-resize ``(B, 3, H, W)`` uint8 patches to ``(B, 3, size, size)`` uint8 (flip/transpose-equivariant)."""
    h, w = patches.shape[-2:]
    if (h, w) == (size, size):
        return patches
    sums = _area_sum_axis(_area_sum_axis(patches, size, axis=-1), size, axis=-2)
    return np.clip(np.rint(sums / (h * w)), 0, 255).astype(np.uint8)


def _texture_keys(prop: str) -> list[str]:
    return [f"texture_ch-{_GREY}_{prop}_dist-1_angle-{a:.2f}" for a in _ANGLES]


def handcrafted_features(patches: np.ndarray, *, size: int = 64) -> np.ndarray:
    """Compute squidpy's summary, histogram and texture features of a batch of RGB patches.

    See the module docstring for the features, their dihedral invariance and their cost.

    Parameters
    ----------
    patches
        ``(B, 3, H, W)`` uint8 RGB patches.
    size
        Side in pixels the patches are resized to before the features are computed (the texture's scale:
        the GLCM compares pixels 1 px apart).

    Returns
    -------
    ``(B, F)`` float32 features, ``F =`` :data:`HANDCRAFTED_N_FEATURES`, columns named by
    :func:`handcrafted_feature_names`.

    Raises
    ------
    TypeError
        If ``patches`` is not a uint8 array.
    ValueError
        If ``patches`` is not ``(B, 3, H, W)`` or ``size`` is not an integer >= 2.
    """
    if not isinstance(patches, np.ndarray) or patches.dtype != np.uint8:
        found = patches.dtype if isinstance(patches, np.ndarray) else type(patches)
        raise TypeError(expected("patches", "a uint8 numpy array", found))
    if patches.ndim != 4 or patches.shape[1] != 3:
        raise ValueError(expected("patches", "of shape (B, 3, H, W)", patches.shape))
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 2:
        raise ValueError(expected("size", "an integer >= 2", size))
    n = len(patches)
    if n == 0:
        return np.zeros((0, HANDCRAFTED_N_FEATURES), dtype=np.float32)

    from .._utils import import_squidpy

    ImageContainer = import_squidpy().im.ImageContainer

    rgb = _resize(patches, int(size))
    grey = np.clip(np.rint(np.einsum("bchw,c->bhw", rgb, _LUMA)), 0, 255).astype(np.uint8)
    stack = np.concatenate([grey[:, None], rgb], axis=1).transpose(2, 3, 0, 1)  # (y, x, z, channels)
    library_ids = [str(i) for i in range(n)]
    ic = ImageContainer(stack, layer="image", dims=("y", "x", "z", "channels"), library_id=library_ids)

    n_pixels = float(rgb.shape[-1] * rgb.shape[-2])
    out = np.empty((n, HANDCRAFTED_N_FEATURES), dtype=np.float64)
    for i, lid in enumerate(library_ids):
        summary = ic.features_summary("image", library_id=lid, channels=_RGB, quantiles=_QUANTILES)
        hist = ic.features_histogram("image", library_id=lid, channels=_RGB, bins=_BINS, v_range=(0, 255))
        texture = ic.features_texture("image", library_id=lid, channels=_GREY, props=_PROPS, angles=_ANGLES)
        row = []
        for c in _RGB:
            stats = [f"quantile-{q}" for q in _QUANTILES] + ["mean", "std"]
            row += [summary[f"summary_ch-{c}_{s}"] / 255.0 for s in stats]
        row += [hist[f"histogram_ch-{c}_bin-{b}"] / n_pixels for c in _RGB for b in range(_BINS)]
        for p in _PROPS:
            by_angle = [texture[k] for k in _texture_keys(p)]
            row += [(by_angle[0] + by_angle[2]) / 2, (by_angle[1] + by_angle[3]) / 2]
        out[i] = row
    return out.astype(np.float32)
