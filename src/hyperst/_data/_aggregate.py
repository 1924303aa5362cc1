"""Pseudo-spots: a square lattice of a physical size over bins or cells, counts summed, and its niche graph.

Bins (Visium HD) are grouped by their own grid: pseudo-spot ``(R, C)`` holds the bins with
``array_row // k == R`` and ``array_col // k == C``, ``k`` bins a side, and its centre is where the bin grid
(fitted to the bins' pixel centres by least squares, so a grid slightly rotated in the image is followed)
puts the middle of that block, whether or not every bin of it is under the tissue. Cells are grouped by an
axis-aligned lattice of squares in the image's pixels, starting at the cells' smallest ``x`` and ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["Lattice", "bin_lattice", "cell_lattice", "lattice_graph", "sum_counts"]


@dataclass(frozen=True)
class Lattice:
    """Pseudo-spots over ``N`` members (bins or cells), of which ``n`` are kept."""

    #: ``(N,)`` pseudo-spot of each member (its row in the arrays below), ``-1`` where none was kept.
    assignment: np.ndarray
    #: ``(n,)`` lattice row and column of each pseudo-spot.
    rows: np.ndarray
    cols: np.ndarray
    #: ``(n, 2)`` centres as ``(x, y)`` image pixels.
    centres_px: np.ndarray
    #: ``(n,)`` members of each pseudo-spot.
    n_members: np.ndarray
    #: Side of a pseudo-spot in image pixels.
    side_px: float


def _group(
    rows: np.ndarray, cols: np.ndarray, min_members: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group members by ``(row, col)``, keeping groups of ``min_members`` or more: assignment, rows, cols, sizes."""
    r0, c0 = rows.min(), cols.min()
    width = int(cols.max() - c0) + 1
    key = (rows - r0) * width + (cols - c0)
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    keep = counts >= min_members
    new_index = np.full(uniq.size, -1, dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    r, c = np.divmod(uniq[keep], width)
    return new_index[inverse], r + r0, c + c0, counts[keep]


def bin_lattice(grid: np.ndarray, centres_px: np.ndarray, k: int, min_members: int) -> Lattice:
    """Pseudo-spots of ``k`` x ``k`` bins.

    Parameters
    ----------
    grid
        ``(N, 2)`` ``(array_row, array_col)`` of the bins.
    centres_px
        ``(N, 2)`` ``(x, y)`` pixel centres of the bins.
    k
        Bins per pseudo-spot side.
    min_members
        Fewest bins a kept pseudo-spot holds.

    Returns
    -------
    The :class:`Lattice`.
    """
    design = np.column_stack([grid[:, 1], grid[:, 0], np.ones(len(grid))]).astype(float)
    fit, *_ = np.linalg.lstsq(design, centres_px, rcond=None)  # (3, 2): col, row, 1 -> x, y
    assignment, rows, cols, n = _group(grid[:, 0] // k, grid[:, 1] // k, min_members)
    middle = np.column_stack([cols * k + (k - 1) / 2, rows * k + (k - 1) / 2, np.ones(rows.size)])
    pitch = float(np.sqrt(abs(np.linalg.det(fit[:2, :2]))))  # pixels per bin step
    return Lattice(assignment, rows, cols, middle @ fit, n, k * pitch)


def cell_lattice(centres_px: np.ndarray, side_px: float, min_members: int) -> Lattice:
    """Pseudo-spots of ``side_px`` x ``side_px`` image pixels over cells.

    Parameters
    ----------
    centres_px
        ``(N, 2)`` ``(x, y)`` pixel centres of the cells.
    side_px
        Side of a pseudo-spot in image pixels.
    min_members
        Fewest cells a kept pseudo-spot holds.

    Returns
    -------
    The :class:`Lattice`.
    """
    origin = np.floor(centres_px.min(0))
    cell = np.floor((centres_px - origin) / side_px).astype(np.int64)
    assignment, rows, cols, n = _group(cell[:, 1], cell[:, 0], min_members)
    centres = origin + (np.column_stack([cols, rows]) + 0.5) * side_px
    return Lattice(assignment, rows, cols, centres, n, float(side_px))


def sum_counts(counts: sp.spmatrix | np.ndarray, assignment: np.ndarray, n_spots: int) -> sp.csr_matrix:
    """``(n_spots, G)`` sums of the members' counts per pseudo-spot (members with ``-1`` left out)."""
    kept = np.flatnonzero(assignment >= 0)
    member = sp.csr_matrix(
        (np.ones(kept.size, dtype=np.float32), (assignment[kept], kept)), shape=(n_spots, len(assignment))
    )
    return sp.csr_matrix(member @ sp.csr_matrix(counts))


def lattice_graph(rows: np.ndarray, cols: np.ndarray, n_rings: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Build the niche graph of a square lattice: neighbours within ``n_rings`` steps (4 per ring step).

    Parameters
    ----------
    rows, cols
        ``(n,)`` lattice indices of the pseudo-spots.
    n_rings
        Rings of neighbours.

    Returns
    -------
    ``(connectivities, distances)``: binary adjacency and the ring of each neighbour (its city-block distance
    on the lattice), as squidpy's grid graph gives them on a full lattice, without a diagonal.
    """
    n = len(rows)
    if n == 0:
        empty = sp.csr_matrix((0, 0), dtype=np.float32)
        return empty, empty.copy()
    r0, c0 = rows.min() - n_rings, cols.min() - n_rings
    width = int(cols.max() - c0) + n_rings + 1
    key = (rows - r0) * width + (cols - c0)
    order = np.argsort(key)
    sorted_keys = key[order]
    src, dst, ring = [], [], []
    for dr in range(-n_rings, n_rings + 1):
        for dc in range(-n_rings, n_rings + 1):
            steps = abs(dr) + abs(dc)
            if steps == 0 or steps > n_rings:
                continue
            target = key + dr * width + dc
            at = np.searchsorted(sorted_keys, target).clip(0, n - 1)
            hit = sorted_keys[at] == target
            src.append(np.flatnonzero(hit))
            dst.append(order[at[hit]])
            ring.append(np.full(int(hit.sum()), float(steps), dtype=np.float32))
    i, j, d = np.concatenate(src), np.concatenate(dst), np.concatenate(ring)
    conn = sp.csr_matrix((np.ones(i.size, dtype=np.float32), (i, j)), shape=(n, n))
    dist = sp.csr_matrix((d, (i, j)), shape=(n, n))
    return conn, dist
