"""Training data as torch datasets: cached features (frozen encoder) or patches read on the fly (LoRA).

Both give ``(spot, niche, spot_gene, niche_gene, target)`` items and draw, per spot and epoch, one random
dihedral view (:meth:`ViewDataset.set_epoch`), the same for a spot and its niche, reproducibly from the seed.
Without augmentation every spot shows view 0, the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._patches import PatchGeometry, PatchReader, dihedral

__all__ = ["FeatureDataset", "PatchDataset", "ViewDataset"]

#: ``(slide, rows)`` pairs: a slide (``.name``, ``.sdata``, ``.layout``, cached ``.spot``/``.niche`` features)
#: and the table row positions of its spots that are used.
Parts = Sequence[tuple[Any, np.ndarray]]
#: Per slide name, its ``(spot gene, niche gene, target)`` arrays over all its spots.
GeneArrays = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


class ViewDataset(Dataset):
    """Spots of several slides with their gene inputs and targets, and the dihedral view each shows this epoch.

    Parameters
    ----------
    parts
        ``(slide, rows)`` pairs.
    genes
        Per slide name, the ``(spot gene, niche gene, target)`` arrays of all its spots.
    n_views
        Views to draw from (1: always the identity).
    seed
        Seed of the view draws.
    """

    def __init__(self, parts: Parts, genes: GeneArrays, *, n_views: int, seed: int) -> None:
        self.spot_gene, self.niche_gene, self.target = (
            np.concatenate([genes[s.name][k][r] for s, r in parts]) for k in range(3)
        )
        self.n_views = n_views
        self.seed = seed
        self.views = np.zeros(len(self.target), dtype=np.int64)
        self.set_epoch(0)  # the loader may fetch the first batch before the epoch-start hook runs

    def set_epoch(self, epoch: int) -> None:
        """Draw the dihedral view of every spot for ``epoch``."""
        if self.n_views > 1:
            self.views = np.random.default_rng((self.seed, epoch)).integers(0, self.n_views, len(self))

    def __len__(self) -> int:
        return len(self.target)

    def _genes(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(self.spot_gene[i]),
            torch.from_numpy(self.niche_gene[i]),
            torch.from_numpy(self.target[i]),
        )


class FeatureDataset(ViewDataset):
    """Cached ``(V, F)`` spot and niche features per spot; ``augment`` draws among the ``V`` cached views."""

    def __init__(self, parts: Parts, genes: GeneArrays, *, augment: bool, seed: int) -> None:
        self.spot = np.concatenate([s.spot[r] for s, r in parts])  # (N, V, F)
        self.niche = np.concatenate([s.niche[r] for s, r in parts])
        super().__init__(parts, genes, n_views=self.spot.shape[1] if augment else 1, seed=seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        v = self.views[i]
        return (torch.from_numpy(self.spot[i, v]), torch.from_numpy(self.niche[i, v]), *self._genes(i))


class PatchDataset(ViewDataset):
    """``(3, P, P)`` uint8 spot and niche patches cropped from the slides on the fly.

    The parameters are those of :class:`ViewDataset`, and ``geometry``: the patch sizes.
    """

    def __init__(self, parts: Parts, genes: GeneArrays, geometry: PatchGeometry, *, n_views: int, seed: int) -> None:
        self.readers = [PatchReader(s.sdata, s.layout, geometry) for s, _ in parts]
        self.slide = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, (_, r) in enumerate(parts)])
        self.row = np.concatenate([np.asarray(r, dtype=np.int64) for _, r in parts])
        super().__init__(parts, genes, n_views=n_views, seed=seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """Read the patches of a whole batch with one crop call per slide (the DataLoader's batched path)."""
        idx = np.asarray(indices, dtype=np.int64)
        side = self.readers[0].geometry.out_px
        spot = np.empty((len(idx), 3, side, side), dtype=np.uint8)
        niche = np.empty_like(spot)
        for s in np.unique(self.slide[idx]):
            mine = np.flatnonzero(self.slide[idx] == s)
            spot[mine], niche[mine] = self.readers[s].read(self.row[idx[mine]])
        out = []
        for j, i in enumerate(idx):
            v = int(self.views[i])
            out.append(
                (torch.from_numpy(dihedral(spot[j], v)), torch.from_numpy(dihedral(niche[j], v)), *self._genes(i))
            )
        return out
