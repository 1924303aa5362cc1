"""Datasets: synthetic Visium, Visium HD and Xenium slides, public slides with checksums, local HEST-1k."""

from __future__ import annotations

from ._her2st import her2st
from ._hest import hest
from ._synthetic import synthetic
from ._synthetic_hd import synthetic_visium_hd
from ._synthetic_xenium import synthetic_xenium
from ._visium_10x import visium_10x

__all__ = ["her2st", "hest", "synthetic", "synthetic_visium_hd", "synthetic_xenium", "visium_10x"]
