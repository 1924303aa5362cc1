"""Datasets: the embedded synthetic default and public slides downloaded with checksums."""

from __future__ import annotations

from ._her2st import her2st
from ._synthetic import synthetic

__all__ = ["her2st", "synthetic"]
