"""Preprocessing: the niche graph of the spots."""

from ._niche import niche_graph

__all__ = ["niche_graph"]
