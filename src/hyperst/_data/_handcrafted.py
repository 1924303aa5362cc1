"""squidpy's hand-crafted image features of patches: weight-free, always offline.

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

Values and cost: the numbers are those of squidpy's ``ImageContainer.features_summary``, ``features_histogram``
and ``features_texture`` bit for bit (tested against them on synthetic and real patches), computed with the
same numpy and scikit-image calls but without a container. The texture is the costly part: squidpy's
``graycoprops`` sums each property over the whole ``256 x 256`` GLCM (about 4 ms per property on one core);
:func:`_glcm_properties` sums the same products over the non-zero cells only, in the same order, which gives
the same floats about 20 times faster. Patches of a batch are spread over ``hyperst.settings.read_workers``
threads.
"""

from __future__ import annotations

import numpy as np

from .._settings import settings
from .._validation import expected
from ._pixels import thread_map

__all__ = ["HANDCRAFTED_N_FEATURES", "handcrafted_feature_names", "handcrafted_features"]

_QUANTILES = (0.9, 0.5, 0.1)
_BINS = 10
_PROPS = ("contrast", "dissimilarity", "homogeneity", "correlation", "ASM")
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
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

    rgb = _resize(patches, int(size))
    grey = np.clip(np.rint(np.einsum("bchw,c->bhw", rgb, _LUMA)), 0, 255).astype(np.uint8)
    rows = thread_map(lambda i: _patch_features(rgb[i], grey[i]), range(n), settings.read_workers)
    return np.asarray(rows, dtype=np.float64).astype(np.float32)


def _patch_features(rgb: np.ndarray, grey: np.ndarray) -> list[float]:
    """Compute the features of one ``(3, s, s)`` patch and its ``(s, s)`` grey level, in column order.

    The summary and histogram make the numpy calls of squidpy's ``features_summary`` and ``features_histogram``
    on the same arrays, and :func:`_glcm_properties` gives ``features_texture``'s numbers, so the values are
    squidpy's bit for bit (tested against an :class:`~squidpy.im.ImageContainer`), without its overhead.
    """
    row: list[float] = []
    for c in range(3):
        channel = rgb[c]
        row += [np.quantile(channel, q) / 255.0 for q in _QUANTILES]
        row += [np.mean(channel) / 255.0, np.std(channel) / 255.0]
    n_pixels = float(rgb.shape[-1] * rgb.shape[-2])
    for c in range(3):
        hist, _ = np.histogram(rgb[c], bins=_BINS, range=(0, 255), weights=None, density=False)
        row += [count / n_pixels for count in hist]
    by_prop = _glcm_properties(grey)
    for p in _PROPS:
        by_angle = by_prop[p]  # one distance; angles as in `_ANGLES`
        row += [(by_angle[0] + by_angle[2]) / 2, (by_angle[1] + by_angle[3]) / 2]
    return row


_LEVELS = 256
_I, _J = np.ogrid[0:_LEVELS, 0:_LEVELS]
#: ``skimage.feature.graycoprops``'s weights, computed as it computes them.
_WEIGHTS = {"contrast": (_I - _J) ** 2, "dissimilarity": np.abs(_I - _J), "homogeneity": 1.0 / (1.0 + (_I - _J) ** 2)}


def _in_order_sum(terms: np.ndarray) -> float:
    """Sum ``terms`` one after the other, as numpy sums the GLCM over its two level axes (not pairwise)."""
    return float(np.cumsum(terms)[-1]) if len(terms) else 0.0


def _glcm_properties(grey: np.ndarray) -> dict[str, list[float]]:
    """GLCM (distance 1, :data:`_ANGLES`) properties per angle, bit for bit as ``graycoprops`` computes them.

    ``graycoprops`` multiplies the whole normalised ``256 x 256`` matrix by each weight and sums over both level
    axes; numpy adds those terms in row-major order, one after the other. The zero cells add nothing, so
    the same products of the non-zero cells (at most ``4 * s * s`` of 65,536), summed in the same order, give
    the same numbers, about 20 times faster.
    """
    from skimage.feature import graycomatrix

    counts = graycomatrix(grey, distances=(1,), angles=_ANGLES, levels=_LEVELS)[:, :, 0, :]
    out: dict[str, list[float]] = {p: [] for p in _PROPS}
    levels = np.arange(_LEVELS)
    for a in range(len(_ANGLES)):
        i, j = np.nonzero(counts[:, :, a])  # row-major order, as numpy's sum runs
        total = float(counts[:, :, a].sum(dtype=np.uint64)) or 1.0
        P = counts[i, j, a].astype(np.float64) / total
        for prop, w in _WEIGHTS.items():
            out[prop].append(_in_order_sum(P * w[i, j]))
        out["ASM"].append(_in_order_sum(P**2))
        diff_i = levels - _in_order_sum(i * P)  # per level, as `I - mean` in skimage
        diff_j = levels - _in_order_sum(j * P)
        std_i = np.sqrt(_in_order_sum(P * diff_i[i] ** 2))
        std_j = np.sqrt(_in_order_sum(P * diff_j[j] ** 2))
        cov = _in_order_sum(P * (diff_i[i] * diff_j[j]))
        out["correlation"].append(1.0 if std_i < 1e-15 or std_j < 1e-15 else cov / (std_i * std_j))
    return out
