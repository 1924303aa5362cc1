"""What the synthetic Visium HD and Xenium slides share: the tissue, its H&E image and each point's signal.

The tissue, its nested domains and the H&E-like image come from the same generators as the synthetic Visium
slides (:mod:`._synthetic_tissue`, :mod:`._synthetic_image`), drawn over a scaffold lattice of 8 µm. A bin or a
cell then takes its counts from the same gene programs (:mod:`._synthetic_counts`), driven by its sub-domain,
the nuclear fraction of the image over a Visium-spot-sized window around it, and the domains found on a ring
of Visium-niche radius around it, so that the sum over a pseudo-spot carries the signal a Visium spot does.
Positions are in micrometres of the image frame (``y`` down, ``x`` right, origin at the image's corner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._constants import SPOT_DIAMETER_UM
from ._synthetic_counts import ROLES
from ._synthetic_image import render
from ._synthetic_tissue import DOMAINS, PARENT, make_layout

if TYPE_CHECKING:
    from ._synthetic_counts import GenePrograms

__all__ = ["SPOT_AREA_UM2", "Tissue", "check_area", "gene_table", "point_signal", "tissue"]

#: Area of a 55 µm Visium spot, the unit of :func:`._synthetic_counts.sample_counts`' ``size_factor``.
SPOT_AREA_UM2 = float(np.pi * (SPOT_DIAMETER_UM["visium"] / 2) ** 2)
#: Pitch of the scaffold lattice the tissue is drawn over (a Visium HD bin).
SCAFFOLD_UM = 8.0
#: Side of the window whose nuclear fraction drives the morphology genes (about a Visium spot).
_WINDOW_UM = 50.0
#: Radius of the ring whose domains drive the niche genes, and the points sampled on it.
_RING_UM, _RING_POINTS = 80.0, 8
_AREA_RANGE = (0.05, 20.0)


@dataclass
class Tissue:
    """A drawn tissue: the scaffold lattice (in-tissue sites), the image and its maps.

    Attributes
    ----------
    row, col
        ``(n,)`` lattice indices of the in-tissue scaffold sites.
    y, x
        ``(n,)`` their centres in µm.
    subdomain
        ``(n,)`` their sub-domain codes.
    image
        ``(3, height, width)`` uint8 H&E-like image.
    nuclei
        ``(height, width)`` boolean mask of nuclear pixels.
    labels
        Coarse map of sub-domain codes (``-1`` outside the tissue), ``factor`` image pixels per cell.
    factor
        Image pixels per coarse cell along each axis.
    microns_per_pixel
        Pixel size of the image.
    """

    row: np.ndarray
    col: np.ndarray
    y: np.ndarray
    x: np.ndarray
    subdomain: np.ndarray
    image: np.ndarray
    nuclei: np.ndarray
    labels: np.ndarray
    factor: int
    microns_per_pixel: float

    def label_at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Sub-domain code at points ``(y, x)`` (µm) from the coarse map, ``-1`` outside the tissue or image."""
        cell = self.factor * self.microns_per_pixel
        i, j = np.floor(y / cell).astype(np.int64), np.floor(x / cell).astype(np.int64)
        inside = (i >= 0) & (i < self.labels.shape[0]) & (j >= 0) & (j < self.labels.shape[1])
        out = np.full(np.shape(y), -1, dtype=np.int64)
        out[inside] = self.labels[i[inside], j[inside]]
        return out


def check_area(tissue_mm2: object) -> float:
    """Return ``tissue_mm2`` as a float, or raise naming the allowed range."""
    from numbers import Real

    from .._validation import expected

    low, high = _AREA_RANGE
    if isinstance(tissue_mm2, bool) or not isinstance(tissue_mm2, Real) or not low <= tissue_mm2 <= high:
        raise ValueError(expected("tissue_mm2", f"a number in [{low}, {high}]", tissue_mm2))
    return float(tissue_mm2)


def tissue(rng: np.random.Generator, tissue_mm2: float, microns_per_pixel: float, pixel_multiple: int) -> Tissue:
    """Draw the tissue of one slide over a square scaffold of :data:`SCAFFOLD_UM` and render its image.

    Parameters
    ----------
    rng
        Random generator of the slide.
    tissue_mm2
        Tissue area in mm².
    microns_per_pixel
        Pixel size of the image.
    pixel_multiple
        The image height and width are rounded up to a multiple of this.

    Returns
    -------
    The :class:`Tissue`.
    """
    n_sites = max(10, round(tissue_mm2 * 1e6 / SCAFFOLD_UM**2))
    layout = make_layout(
        rng,
        n_sites,
        pitch_um=SCAFFOLD_UM,
        hexagonal=False,
        microns_per_pixel=microns_per_pixel,
        pixel_multiple=pixel_multiple,
    )
    image, nuclei = render(rng, layout, microns_per_pixel)
    return Tissue(
        row=layout.array_row,
        col=layout.array_col,
        y=layout.y,
        x=layout.x,
        subdomain=layout.subdomain,
        image=image,
        nuclei=nuclei,
        labels=layout.labels,
        factor=layout.factor,
        microns_per_pixel=microns_per_pixel,
    )


def point_signal(t: Tissue, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclear fraction around points ``(y, x)`` (µm) and the domain composition of the ring around them.

    Parameters
    ----------
    t
        The tissue.
    y, x
        ``(n,)`` positions in µm.

    Returns
    -------
    ``(nuclear_fraction, composition)``: ``(n,)`` mean of the nuclear mask over a :data:`_WINDOW_UM` square
    window, and ``(n, n_domains)`` fractions of the in-tissue ring points in each domain.
    """
    from scipy.ndimage import uniform_filter

    mpp = t.microns_per_pixel
    window = max(1, round(_WINDOW_UM / mpp))
    smooth = uniform_filter(t.nuclei.astype(np.float32), size=window, mode="constant")
    i = np.clip(np.floor(y / mpp).astype(np.int64), 0, smooth.shape[0] - 1)
    j = np.clip(np.floor(x / mpp).astype(np.int64), 0, smooth.shape[1] - 1)
    nuclear = smooth[i, j].astype(float)

    angles = 2 * np.pi * np.arange(_RING_POINTS) / _RING_POINTS
    ring = t.label_at(y[:, None] + _RING_UM * np.sin(angles), x[:, None] + _RING_UM * np.cos(angles))
    domain = np.where(ring >= 0, PARENT[np.maximum(ring, 0)], -1)
    counts = np.stack([(domain == d).sum(axis=1) for d in range(len(DOMAINS))], axis=1)
    composition = counts / np.maximum((domain >= 0).sum(axis=1, keepdims=True), 1)
    return nuclear, composition


def gene_table(programs: GenePrograms) -> pd.DataFrame:
    """Return the ``var`` of a synthetic slide: 10x-style gene ids, names ``SYN0001``…, each gene's program role."""
    n = programs.role.size
    width = max(4, len(str(n)))
    return pd.DataFrame(
        {
            "gene_ids": [f"SYNG{i:011d}" for i in range(1, n + 1)],
            "feature_types": "Gene Expression",
            "genome": "synthetic",
            "synthetic_role": pd.Categorical(programs.role, categories=list(ROLES)),
        },
        index=pd.Index([f"SYN{i:0{width}d}" for i in range(1, n + 1)]),
    )
