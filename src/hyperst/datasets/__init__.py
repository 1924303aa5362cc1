"""Datasets: the embedded synthetic default (real public slides follow)."""

from __future__ import annotations

from ._synthetic import synthetic

__all__ = ["synthetic"]
