"""Tools: train, predict, embed."""

from ._fit import fit
from ._poincare import poincare
from ._predict import predict

__all__ = ["fit", "poincare", "predict"]
