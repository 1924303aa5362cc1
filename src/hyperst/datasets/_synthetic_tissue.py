"""Tissue layout of a synthetic slide: spot grid, tissue blob and nested domain maps.

Conventions used by all ``_synthetic*`` modules: positions are in micrometres, ``y`` first in arrays
(row-major images), and a "coarse map" is the full-resolution pixel grid block-averaged by an integer
factor, so that coarse cell ``(i, j)`` covers full-resolution pixels ``[i f, (i + 1) f) x [j f, (j + 1) f)``.
A pixel with index ``i`` covers ``[i, i + 1)`` in its image's intrinsic coordinates (the spatialdata
convention), so its centre lies at ``i + 0.5``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DOMAINS",
    "PARENT",
    "SUBDOMAINS",
    "Field",
    "Layout",
    "field_at",
    "field_on_grid",
    "make_layout",
    "smooth_field",
]

#: Tissue domains and the fraction of the tissue each one aims to cover.
DOMAINS: dict[str, float] = {"tumour": 0.4, "stroma": 0.35, "immune": 0.25}
#: Sub-domains, in the order of their integer codes, with their parent domain.
SUBDOMAINS: dict[str, str] = {
    "tumour_solid": "tumour",
    "tumour_glandular": "tumour",
    "stroma_dense": "stroma",
    "stroma_loose": "stroma",
    "stroma_cellular": "stroma",
    "immune_follicle": "immune",
    "immune_infiltrate": "immune",
}
#: Integer code of each sub-domain's parent domain, ``(n_subdomains,)``.
PARENT = np.array([list(DOMAINS).index(d) for d in SUBDOMAINS.values()])

_GRID_FRACTION = 0.35  # share of the spot grid covered by tissue


#: A smooth random field: lattice weights ``(ny, nx)`` and lattice coordinates along ``y`` and ``x``.
Field = tuple[np.ndarray, np.ndarray, np.ndarray]


def smooth_field(rng: np.random.Generator, bounds: tuple[float, float, float, float], length_um: float) -> Field:
    """Draw a smooth Gaussian random field as white noise on a lattice convolved with a Gaussian.

    Parameters
    ----------
    rng
        Random generator.
    bounds
        ``(y_min, y_max, x_min, x_max)`` of the region the field must cover, in µm.
    length_um
        Correlation length (the Gaussian kernel's standard deviation).

    Returns
    -------
    ``(F, ly, lx)``: the ``(ny, nx)`` lattice weights and the lattice coordinates along ``y`` and ``x``.
    Evaluate with :func:`field_on_grid` or :func:`field_at`; the field has unit variance.
    """
    step, pad = length_um / 2.0, 3.0 * length_um
    ly = np.arange(bounds[0] - pad, bounds[1] + pad + step, step)
    lx = np.arange(bounds[2] - pad, bounds[3] + pad + step, step)
    return rng.standard_normal((ly.size, lx.size)).astype(np.float32), ly, lx


def _weights(coords: np.ndarray, lattice: np.ndarray, length_um: float) -> np.ndarray:
    # Gaussian kernel rows, normalised so that the field has unit variance everywhere
    w = np.exp(-0.5 * ((coords[:, None] - lattice[None, :]) / length_um) ** 2).astype(np.float32)
    return w / np.sqrt((w**2).sum(axis=1, keepdims=True))


def field_on_grid(field: Field, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Evaluate a field from :func:`smooth_field` on the grid ``ys x xs`` (µm), as a ``(ny, nx)`` array."""
    f, ly, lx = field
    length = 2.0 * (ly[1] - ly[0])
    return _weights(ys, ly, length) @ f @ _weights(xs, lx, length).T


def field_at(field: Field, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Evaluate a field from :func:`smooth_field` at the points ``(y, x)`` (µm), as an ``(n,)`` array."""
    f, ly, lx = field
    length = 2.0 * (ly[1] - ly[0])
    return np.einsum("ni,ij,nj->n", _weights(y, ly, length), f, _weights(x, lx, length))


@dataclass
class Layout:
    """Spot grid and tissue maps of one slide (all lengths in µm unless named ``_px``).

    Attributes
    ----------
    array_row, array_col
        ``(n_spots,)`` Visium-style grid indices of the in-tissue spots.
    y, x
        ``(n_spots,)`` spot centres.
    neighbours
        ``(n_spots, k)`` index of each spot's grid neighbours (``k`` = 6 hex, 4 square), ``-1`` if absent.
    subdomain
        ``(n_spots,)`` sub-domain code of each spot.
    shape_px
        ``(height, width)`` of the full-resolution image.
    factor
        Full-resolution pixels per coarse cell along each axis.
    labels
        Coarse map of sub-domain codes, ``-1`` outside the tissue.
    """

    array_row: np.ndarray
    array_col: np.ndarray
    y: np.ndarray
    x: np.ndarray
    neighbours: np.ndarray
    subdomain: np.ndarray
    shape_px: tuple[int, int]
    factor: int
    labels: np.ndarray


def _grid(n_grid: int, pitch: float, *, hexagonal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # returns array_row, array_col and centres (y, x) in µm relative to the first spot
    row_step = pitch * np.sqrt(3.0) / 2.0 if hexagonal else pitch
    n_rows = int(np.ceil(np.sqrt(n_grid * pitch / row_step)))
    n_per_row = int(np.ceil(n_grid / n_rows))
    row, j = np.divmod(np.arange(n_rows * n_per_row), n_per_row)
    col = 2 * j + row % 2 if hexagonal else j
    x = col * (pitch / 2.0 if hexagonal else pitch)
    return row, col, row * row_step, x


def _neighbours(row: np.ndarray, col: np.ndarray, *, hexagonal: bool) -> np.ndarray:
    steps = [(0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)] if hexagonal else [(0, -1), (0, 1), (-1, 0), (1, 0)]
    lookup = {(r, c): i for i, (r, c) in enumerate(zip(row.tolist(), col.tolist(), strict=True))}
    return np.array([[lookup.get((r + dr, c + dc), -1) for dr, dc in steps] for r, c in zip(row, col, strict=True)])


def _balanced_argmax(scores: np.ndarray, target: np.ndarray, n_iter: int = 60) -> np.ndarray:
    """Per-class offsets that make ``argmax(scores + offsets)`` hit the ``target`` class fractions."""
    offsets = np.zeros(scores.shape[1])
    if scores.shape[0] == 0:
        return offsets
    for _ in range(n_iter):
        frac = np.bincount(np.argmax(scores + offsets, axis=1), minlength=scores.shape[1]) / scores.shape[0]
        offsets += 0.5 * (target - frac)
    return offsets


def _blob(
    rng: np.random.Generator, box: tuple[float, float, float, float], n_spots: int, pitch_um: float
) -> tuple[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], Field]:
    """Draw an irregular tissue blob; return its score function ``(y, x, noise) -> score`` and noise field."""
    cy, cx = (box[0] + box[1]) / 2.0, (box[2] + box[3]) / 2.0
    half = np.array([box[1] - box[0], box[3] - box[2]]) / 2.0 * rng.uniform(0.7, 1.0, 2)
    harmonics = rng.normal(0.0, 0.07, (3, 2))
    tissue_radius = float(np.sqrt(n_spots / np.pi)) * pitch_um
    noise_field = smooth_field(rng, box, max(2.0 * pitch_um, 0.25 * tissue_radius))
    edge = np.array(box) + np.array([-1, 1, -1, 1]) * pitch_um / 2.0

    def score(y: np.ndarray, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
        # 1 - elliptic radius / angular wobble, with wobble = Re(sum_k c_k e^{ik theta}) computed without trig
        dy, dx = (y - cy).astype(np.float32), (x - cx).astype(np.float32)
        radius = np.sqrt((dy / half[0]) ** 2 + (dx / half[1]) ** 2, dtype=np.float32)
        unit = (dx + 1j * dy).astype(np.complex64) / np.maximum(np.hypot(dx, dy), 1e-3)
        power, wobble = unit, np.zeros(np.broadcast_shapes(dy.shape, dx.shape), dtype=np.float32)
        for a, b in harmonics:
            power = power * unit
            wobble += np.float32(a) * power.real + np.float32(b) * power.imag
        value = 1.0 - radius / (1.0 + wobble) + np.float32(0.12) * noise
        inside = (y >= edge[0]) & (y <= edge[1]) & (x >= edge[2]) & (x <= edge[3])
        return np.where(inside, value, -np.inf)

    return score, noise_field


def _running_argmax(
    values: list[np.ndarray], offsets: np.ndarray, allowed: list[np.ndarray] | None = None
) -> np.ndarray:
    """``argmax_k(values[k] + offsets[k])`` over the allowed ``k``, one map at a time (no stacking)."""
    best = np.full(values[0].shape, -np.inf, dtype=np.float32)
    label = np.zeros(values[0].shape, dtype=np.int8)
    for k, (v, o) in enumerate(zip(values, offsets.astype(np.float32), strict=True)):
        better = v + o > best if allowed is None else (v + o > best) & allowed[k]
        np.copyto(best, v + o, where=better, casting="same_kind")
        label[better] = k
    return label


@dataclass
class _Domains:
    """Nested domains: argmax of smooth fields, offset so that the spots meet drawn target fractions."""

    dom_fields: list[Field]
    sub_fields: list[Field]
    dom_offsets: np.ndarray
    sub_offsets: np.ndarray

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        bounds: tuple[float, ...],
        y: np.ndarray,
        x: np.ndarray,
        pitch_um: float,
    ) -> _Domains:
        size = float(np.sqrt(y.size) * pitch_um)
        dom_fields = [smooth_field(rng, bounds, max(1.5 * pitch_um, size / 5.0)) for _ in DOMAINS]
        sub_fields = [smooth_field(rng, bounds, max(1.0 * pitch_um, size / 12.0)) for _ in SUBDOMAINS]
        dom_scores = np.stack([field_at(f, y, x) for f in dom_fields], axis=1)
        dom_offsets = _balanced_argmax(dom_scores, rng.dirichlet(40.0 * np.array(list(DOMAINS.values()))))
        spot_domain = np.argmax(dom_scores + dom_offsets, axis=1)
        sub_scores = np.stack([field_at(f, y, x) for f in sub_fields], axis=1)
        sub_offsets = np.zeros(len(SUBDOMAINS))
        for d in range(len(DOMAINS)):
            members = np.flatnonzero(PARENT == d)
            target = rng.dirichlet(np.full(members.size, 20.0))
            sub_offsets[members] = _balanced_argmax(sub_scores[spot_domain == d][:, members], target)
        return cls(dom_fields, sub_fields, dom_offsets, sub_offsets)

    def at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Sub-domain codes at the points ``(y, x)``."""
        return self._codes([field_at(f, y, x) for f in self.dom_fields], [field_at(f, y, x) for f in self.sub_fields])

    def on_grid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Sub-domain codes on the grid ``ys x xs``."""
        dom = [field_on_grid(f, ys, xs) for f in self.dom_fields]
        return self._codes(dom, [field_on_grid(f, ys, xs) for f in self.sub_fields])

    def _codes(self, dom: list[np.ndarray], sub: list[np.ndarray]) -> np.ndarray:
        domain = _running_argmax(dom, self.dom_offsets)
        return _running_argmax(sub, self.sub_offsets, [domain == d for d in PARENT])


def make_layout(
    rng: np.random.Generator,
    n_spots: int,
    *,
    pitch_um: float,
    hexagonal: bool,
    microns_per_pixel: float,
    pixel_multiple: int,
) -> Layout:
    """Place the spot grid, draw the tissue blob and the nested domain maps of one slide.

    Parameters
    ----------
    rng
        Random generator of this slide.
    n_spots
        Number of in-tissue spots.
    pitch_um
        Centre-to-centre distance of grid neighbours.
    hexagonal
        Visium hexagonal grid if true, legacy ST square grid otherwise.
    microns_per_pixel
        Full-resolution pixel size.
    pixel_multiple
        The image height and width are rounded up to a multiple of this (for exact downscaling).

    Returns
    -------
    The slide's :class:`Layout`.
    """
    row, col, gy, gx = _grid(int(np.ceil(n_spots / _GRID_FRACTION)), pitch_um, hexagonal=hexagonal)
    box = (float(gy.min()), float(gy.max()), float(gx.min()), float(gx.max()))
    # tissue: exactly the n_spots grid points of highest blob score
    tissue_score, blob_noise = _blob(rng, box, n_spots, pitch_um)
    score = tissue_score(gy, gx, field_at(blob_noise, gy, gx))
    keep = np.sort(np.argsort(-score, kind="stable")[:n_spots])
    threshold = score[keep].min()
    row, col, sy, sx = row[keep], col[keep], gy[keep], gx[keep]

    # the image: the tissue's spots plus a margin of background (tissue reaches < 1 pitch past its spots)
    margin = 250.0 + pitch_um
    factor = max(1, round(2.0 / microns_per_pixel))  # coarse cells of about 2 µm
    multiple = int(np.lcm(factor, pixel_multiple))
    origin = (sy.min() - margin, sx.min() - margin)
    shape_px = tuple(
        int(np.ceil((g.max() - g.min() + 2 * margin) / microns_per_pixel / multiple)) * multiple for g in (sy, sx)
    )
    bounds = (
        min(box[0], origin[0]),
        max(box[1], origin[0] + shape_px[0] * microns_per_pixel),
        min(box[2], origin[1]),
        max(box[3], origin[1] + shape_px[1] * microns_per_pixel),
    )
    domains = _Domains.draw(rng, bounds, sy, sx, pitch_um)

    # coarse maps, evaluated at the centres of coarse cells
    cell = factor * microns_per_pixel
    ys = origin[0] + (np.arange(shape_px[0] // factor) + 0.5) * cell
    xs = origin[1] + (np.arange(shape_px[1] // factor) + 0.5) * cell
    labels = domains.on_grid(ys, xs)
    noise = field_on_grid(blob_noise, ys, xs)
    labels[tissue_score(ys[:, None].astype(np.float32), xs[None, :].astype(np.float32), noise) < threshold] = -1

    row0, col0 = row.min(), col.min()
    col0 -= (col0 - row0) % 2 if hexagonal else 0  # keep array_col's parity equal to array_row's
    row, col = row - row0, col - col0
    return Layout(
        array_row=row,
        array_col=col,
        y=sy - origin[0],
        x=sx - origin[1],
        neighbours=_neighbours(row, col, hexagonal=hexagonal),
        subdomain=domains.at(sy, sx).astype(np.int64),
        shape_px=shape_px,
        factor=factor,
        labels=labels,
    )
