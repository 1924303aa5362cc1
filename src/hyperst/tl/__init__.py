"""Tools: cache features, train, predict, embed, evaluate, and predictions back to Visium HD bins or cells."""

from ._cohort import cache_features
from ._evaluate import evaluate
from ._fit import fit
from ._poincare import poincare
from ._predict import predict
from ._to_bins import to_bins

__all__ = ["cache_features", "evaluate", "fit", "poincare", "predict", "to_bins"]
