"""Plotting: the Poincaré disk, measured vs predicted expression over the H&E, training history, gene scores.

Every function only reads what :mod:`hyperst.tl` wrote, returns its Axes or Figure, and leaves the data
untouched.
"""

from ._history import history
from ._poincare import poincare
from ._scores import gene_scores
from ._spatial import spatial

__all__ = ["gene_scores", "history", "poincare", "spatial"]
