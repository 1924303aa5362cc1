"""Preprocessing: the niche graph of the spots, virtual spots over the tissue of an H&E image."""

from ._niche import niche_graph
from ._tile import tile

__all__ = ["niche_graph", "tile"]
