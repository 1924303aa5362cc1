"""H&E-like rendering of a synthetic slide.

Stains follow Beer-Lambert: a pixel's optical density is ``h * H + e * E + background``, where ``H`` and ``E``
are the haematoxylin (purple, nuclei) and eosin (pink, stroma and cytoplasm) colour vectors and ``h``, ``e``
the stain amounts. Slowly varying quantities (tissue, domains, fibres, lumens, stain tone) are drawn on the
coarse map of :mod:`._synthetic_tissue`; nuclei are drawn as ellipses at full resolution. ``h`` and ``e`` are
stored as ``uint8`` levels and turned into RGB by one lookup table, which keeps the rendering of a
twenty-megapixel slide well under a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ndtri

from ._synthetic_tissue import field_on_grid, smooth_field

if TYPE_CHECKING:
    from ._synthetic_tissue import Layout

__all__ = ["TEXTURES", "downscale", "render"]

_COLUMNS = (
    "density",
    "radius",
    "elongation",
    "nucleus_h",
    "cytoplasm_h",
    "eosin",
    "fibre",
    "angle",
    "lumen",
    "gland",
)
#: Texture of each sub-domain: nuclei per 1000 µm², nuclear radius (µm), nuclear elongation (aspect ratio),
#: haematoxylin of nuclei and of the cytoplasm, eosin, fibre contrast (0-1), fibre angle (rad), lumen
#: fraction (0-1), nuclei lining the lumens (0/1). Domains differ strongly, sub-domains of one domain
#: moderately.
TEXTURES: dict[str, np.ndarray] = dict(
    zip(
        _COLUMNS,
        np.array(
            [  # density radius elong  nuc_h  cyto_h  eosin  fibre  angle  lumen gland
                [8.0, 3.9, 1.25, 1.05, 0.16, 0.30, 0.05, 0.0, 0.00, 0],  # tumour_solid
                [6.0, 3.5, 1.40, 0.95, 0.12, 0.36, 0.05, 0.0, 0.18, 1],  # tumour_glandular
                [1.4, 2.3, 3.00, 1.10, 0.02, 0.80, 0.50, 0.3, 0.00, 0],  # stroma_dense
                [1.0, 2.4, 2.50, 1.00, 0.02, 0.48, 0.35, 1.8, 0.22, 0],  # stroma_loose
                [3.5, 2.8, 2.00, 1.05, 0.05, 0.62, 0.30, 1.0, 0.00, 0],  # stroma_cellular
                [16.0, 2.6, 1.05, 1.45, 0.10, 0.20, 0.05, 0.0, 0.00, 0],  # immune_follicle
                [8.0, 2.9, 1.10, 1.30, 0.07, 0.46, 0.20, 2.4, 0.04, 0],  # immune_infiltrate
            ]
        ).T,
        strict=True,
    )
)

_H = np.array([0.65, 0.70, 0.29])  # haematoxylin optical-density direction (R, G, B)
_E = np.array([0.15, 0.90, 0.40])  # eosin
_H_LEVEL, _E_LEVEL = 100.0, 200.0  # uint8 level per unit of optical density
_BACKGROUND_OD = 0.03  # glass and mounting medium: (247, 247, 247)
_LUMEN_RADIUS_UM = 14.0
_FIBRE_PERIOD_UM = 9.0
NUCLEUS_LEVEL = 45  # haematoxylin level above which a pixel counts as nucleus


def _lookup_table() -> np.ndarray:
    # (3, 256 * 256) uint8: RGB of haematoxylin level i and eosin level j at index 256 i + j
    od = np.arange(256)[:, None, None] / _H_LEVEL * _H + np.arange(256)[None, :, None] / _E_LEVEL * _E + _BACKGROUND_OD
    return np.round(255.0 * np.exp(-od)).astype(np.uint8).reshape(-1, 3).T.copy()


def _ellipses(
    shape: tuple[int, int],
    cy: np.ndarray,
    cx: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise ellipses (centres, semi-axes, angles in pixels) as ``(index, owner, rho²)`` of their pixels.

    ``index`` is the flat pixel index in an image of ``shape``, ``owner`` the ellipse covering it and ``rho²``
    the squared elliptic radius (0 at the centre, 1 on the border).
    """
    reach = np.ceil(np.maximum(a, b)).astype(np.int64) + 1
    index, owner, rho2 = [], [], []
    for size in np.unique(reach):
        dy, dx = (g.ravel().astype(np.float32) for g in np.mgrid[-size : size + 1, -size : size + 1])
        members = np.flatnonzero(reach == size)
        chunk = max(1, 1_000_000 // dy.size)
        for s in range(0, members.size, chunk):
            m = members[s : s + chunk]
            r0, c0 = np.floor(cy[m]), np.floor(cx[m])
            u = (c0 + 0.5 - cx[m]).astype(np.float32)[:, None] + dx
            v = (r0 + 0.5 - cy[m]).astype(np.float32)[:, None] + dy
            cos, sin = (
                np.cos(angle[m]).astype(np.float32)[:, None],
                np.sin(angle[m]).astype(np.float32)[:, None],
            )
            inv_a, inv_b = (1 / a[m]).astype(np.float32)[:, None], (1 / b[m]).astype(np.float32)[:, None]
            q = ((u * cos + v * sin) * inv_a) ** 2 + ((v * cos - u * sin) * inv_b) ** 2
            r = r0.astype(np.int64)[:, None] + dy.astype(np.int64)
            c = c0.astype(np.int64)[:, None] + dx.astype(np.int64)
            inside = (q <= 1.0) & (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
            index.append(r[inside] * shape[1] + c[inside])
            owner.append(np.broadcast_to(m[:, None], q.shape)[inside])
            rho2.append(q[inside])
    if not index:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(index), np.concatenate(owner), np.concatenate(rho2)


def _coarse_stains(
    rng: np.random.Generator, layout: Layout, microns_per_pixel: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin and eosin levels on the coarse map, and the relative nuclear density (0 off tissue)."""
    labels, cell = layout.labels, layout.factor * microns_per_pixel
    tissue = labels >= 0
    lab = np.where(tissue, labels, 0)
    ys = ((np.arange(labels.shape[0]) + 0.5) * cell).astype(np.float32)
    xs = ((np.arange(labels.shape[1]) + 0.5) * cell).astype(np.float32)
    bounds = (0.0, labels.shape[0] * cell, 0.0, labels.shape[1] * cell)

    # lumens / fat: thresholded short-range field, threshold set per sub-domain to give its lumen fraction
    lumen_field = field_on_grid(smooth_field(rng, bounds, _LUMEN_RADIUS_UM), ys, xs)
    cut = ndtri(1.0 - TEXTURES["lumen"]).astype(np.float32)  # the field is standard normal
    lumen = tissue & (lumen_field > cut[lab])

    # collagen fibres: stripes across the sub-domain's angle, their phase bent by a smooth warp
    warp = field_on_grid(smooth_field(rng, bounds, 40.0), ys, xs)
    theta = TEXTURES["angle"].astype(np.float32)[lab]
    wave = np.float32(2 * np.pi / _FIBRE_PERIOD_UM)
    phase = wave * (xs[None, :] * np.sin(theta) - ys[:, None] * np.cos(theta)) + np.float32(6.0) * warp
    stripes = np.float32(0.5) + np.float32(0.5) * np.sin(phase)
    # fibres fade in patches (and next to lumens); the warp also mottles the stain
    fibre = TEXTURES["fibre"].astype(np.float32)[lab] * np.clip(0.7 - 0.35 * lumen_field, 0.15, 1.0)
    fibre *= np.float32(min(1.0, _FIBRE_PERIOD_UM / (4.0 * cell)))  # no aliased stripes on coarse pixels
    tone = np.float32(rng.uniform(0.9, 1.1))  # per-slide staining intensity
    eosin = tone * TEXTURES["eosin"].astype(np.float32)[lab] * (1 - fibre + fibre * stripes) * (1 + 0.1 * warp)
    haem = tone * TEXTURES["cytoplasm_h"].astype(np.float32)[lab] * (1 - 0.5 * fibre * stripes)
    eosin = np.where(lumen, 0.03, np.where(tissue, eosin, 0.0))
    haem = np.where(lumen, 0.01, np.where(tissue, haem, 0.0))
    h_level = np.clip(haem * _H_LEVEL, 0, 240).astype(np.uint8)  # headroom for the pixel noise
    e_level = np.clip(eosin * _E_LEVEL, 0, 240).astype(np.uint8)
    # glands: epithelial nuclei crowd along the lumen border
    gland = (TEXTURES["gland"].astype(np.float32)[lab] > 0) & (lumen_field > cut[lab] - 0.6) & ~lumen
    return h_level, e_level, np.where(lumen | ~tissue, 0.0, np.where(gland, 2.5, 1.0)).astype(np.float32)


def _nuclei(
    rng: np.random.Generator, layout: Layout, relative: np.ndarray, microns_per_pixel: float
) -> tuple[np.ndarray, ...]:
    """Sample nuclei as a Poisson process on the coarse map; return ``(cy, cx, a, b, angle, od)`` (pixels)."""
    labels, cell = layout.labels, layout.factor * microns_per_pixel
    # spot-scale cell-density field: the local morphology that drives the "morphology" genes
    step = 4
    ys = (np.arange(0, labels.shape[0], step) + step / 2) * cell
    xs = (np.arange(0, labels.shape[1], step) + step / 2) * cell
    bounds = (0.0, labels.shape[0] * cell, 0.0, labels.shape[1] * cell)
    local = field_on_grid(smooth_field(rng, bounds, 30.0), ys, xs)
    local = np.exp(0.5 * local - 0.125)[np.arange(labels.shape[0]) // step][:, np.arange(labels.shape[1]) // step]
    lab = np.where(labels >= 0, labels, 0)
    rate = TEXTURES["density"].astype(np.float32)[lab] * np.float32(cell**2 / 1000.0) * local * relative
    counts = rng.poisson(rate).ravel()
    flat = np.repeat(np.arange(counts.size), counts)
    row, col = np.divmod(flat, labels.shape[1])
    sub = labels.ravel()[flat]
    n = flat.size
    scale = layout.factor  # coarse cell -> full-resolution pixels
    cy = (row + rng.random(n)) * scale
    cx = (col + rng.random(n)) * scale
    radius = TEXTURES["radius"][sub] * np.exp(0.15 * rng.standard_normal(n)) / microns_per_pixel
    elong = np.sqrt(TEXTURES["elongation"][sub] * np.exp(0.1 * rng.standard_normal(n)))
    fibrous = TEXTURES["fibre"][sub] > 0.25
    angle = np.where(fibrous, TEXTURES["angle"][sub] + 0.3 * rng.standard_normal(n), rng.uniform(0, np.pi, n))
    od = TEXTURES["nucleus_h"][sub] * np.exp(0.1 * rng.standard_normal(n))
    return cy, cx, radius * elong, radius / elong, angle, od


def render(rng: np.random.Generator, layout: Layout, microns_per_pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """Render the full-resolution H&E-like image of a slide.

    Parameters
    ----------
    rng
        Random generator of this slide.
    layout
        Tissue layout from :func:`._synthetic_tissue.make_layout`.
    microns_per_pixel
        Full-resolution pixel size.

    Returns
    -------
    ``(image, nuclei)``: the ``(3, height, width)`` uint8 RGB image and the ``(height, width)`` boolean mask
    of nuclear pixels.
    """
    h_coarse, e_coarse, relative = _coarse_stains(rng, layout, microns_per_pixel)
    f, (height, width) = layout.factor, layout.shape_px
    h_level = np.broadcast_to(h_coarse[:, None, :, None], (*h_coarse.shape[:1], f, h_coarse.shape[1], f))
    h_level = h_level.reshape(height, width).copy()
    e_level = np.broadcast_to(e_coarse[:, None, :, None], (*e_coarse.shape[:1], f, e_coarse.shape[1], f))
    e_level = e_level.reshape(height, width).copy()

    cy, cx, a, b, angle, od = _nuclei(rng, layout, relative, microns_per_pixel)
    index, owner, rho2 = _ellipses((height, width), cy, cx, a, b, angle)
    # chromatin: darker rim and granular texture; little eosin inside nuclei
    chromatin = od[owner] * (0.8 + 0.3 * rho2 + 0.12 * rng.standard_normal(owner.size)) * _H_LEVEL
    h_flat, e_flat = h_level.reshape(-1), e_level.reshape(-1)
    h_flat[index] = np.clip(chromatin, NUCLEUS_LEVEL + 1, 240).astype(np.uint8)
    e_flat[index] = e_flat[index] // 3 + 10
    nuclei = h_level > NUCLEUS_LEVEL

    # pixel noise, then stains -> RGB through the lookup table
    noise = rng.integers(0, 10, size=(height, width), dtype=np.uint8)
    e_level += noise
    h_level += noise >> 2
    lut_index = (h_level.astype(np.uint16) << 8) | e_level
    lut = _lookup_table()
    image = np.empty((3, height, width), dtype=np.uint8)
    for channel in range(3):
        image[channel] = lut[channel][lut_index]
    return image, nuclei


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-average a ``(c, y, x)`` uint8 image by an integer ``factor``, dropping incomplete edge blocks."""
    if factor == 1:
        return image
    c, h, w = image.shape
    total = np.zeros((c, h // factor, w // factor), dtype=np.uint32)
    for i in range(factor):
        for j in range(factor):
            total += image[:, i : h - h % factor : factor, j : w - w % factor : factor]
    return ((total + factor * factor // 2) // (factor * factor)).astype(np.uint8)
