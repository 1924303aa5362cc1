"""Tools: train, predict, embed, evaluate."""

from ._evaluate import evaluate
from ._fit import fit
from ._poincare import poincare
from ._predict import predict

__all__ = ["evaluate", "fit", "poincare", "predict"]
