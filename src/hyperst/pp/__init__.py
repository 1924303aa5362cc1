"""Preprocessing: the niche graph, virtual spots over an H&E image, pseudo-spots from Visium HD bins or cells."""

from ._niche import niche_graph
from ._pseudospots import pseudospots
from ._tile import tile

__all__ = ["niche_graph", "pseudospots", "tile"]
