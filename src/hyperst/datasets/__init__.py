"""Datasets: the embedded synthetic default, public slides downloaded with checksums, and local HEST-1k."""

from __future__ import annotations

from ._her2st import her2st
from ._hest import hest
from ._synthetic import synthetic
from ._visium_10x import visium_10x

__all__ = ["her2st", "hest", "synthetic", "visium_10x"]
