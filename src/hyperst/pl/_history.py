"""``hst.pl.history``: the loss terms and the curvature over the epochs of a fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._validation import expected
from ._utils import finish, to_axes_list

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .._model import HyperST

__all__ = ["history"]

#: Loss terms drawn by default, when the fit logged them: the total and its three parts.
_DEFAULT_TERMS = ("loss", "mse", "hca", "hea")
_STAGES = {"train": ("train", "-"), "val": ("validation", "--")}
_CURV = "curv"


def _series(rows: list[dict[str, float]], key: str) -> np.ndarray:
    return np.array([row.get(key, np.nan) for row in rows], dtype=float)


def _logged_terms(rows: list[dict[str, float]]) -> list[str]:
    """Every term logged for some stage, in first-seen order (``train_mse`` and ``val_mse`` give ``mse``)."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            stage, _, term = key.partition("_")
            if stage in _STAGES and term and term != _CURV:
                seen[term] = None
    return list(seen)


def history(
    model: HyperST,
    *,
    terms: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
) -> Figure | None:
    """Plot the training and validation losses, and the learned curvature, over the epochs of a fit.

    Reads ``model.history`` (one row per epoch, as :func:`hyperst.tl.fit` records it) and marks the epoch whose
    weights the model kept (``model.training.best_epoch``).

    Parameters
    ----------
    model
        A fitted :class:`hyperst.HyperST`.
    terms
        Loss terms to draw, e.g. ``["loss", "mse", "hca_is_gs"]``; ``None``: the total loss and its parts
        (``mse``, and ``hca`` and ``hea`` when the model aligns the streams).
    ax
        Two Axes (losses, curvature), or one when the model has no curvature (Euclidean, or no alignment);
        ``None`` makes a new figure.
    show
        Show the figure (and return ``None``); ``None`` shows it only in an interactive session when ``ax`` is
        not given.

    Returns
    -------
    The Figure, or ``None`` when shown.

    Raises
    ------
    ValueError
        If the model has no history, or ``ax`` has the wrong number of Axes.
    KeyError
        If a requested term was not logged.

    Examples
    --------
    >>> import hyperst as hst
    >>> model = hst.tl.fit(slides, genes=200)  # doctest: +SKIP
    >>> fig = hst.pl.history(model, show=False)  # doctest: +SKIP
    >>> fig = hst.pl.history(model, terms=["hca_is_gs", "hea_is_in"], show=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    from .._model import HyperST

    if not isinstance(model, HyperST):
        raise TypeError(expected("model", "a hyperst.HyperST", type(model).__name__))
    rows = list(model.history)
    if not rows:
        msg = "The model has no training history (`model.history` is empty). Train it with `hyperst.tl.fit`."
        raise ValueError(msg)
    logged = _logged_terms(rows)
    if terms is None:
        terms = [t for t in _DEFAULT_TERMS if t in logged]
    else:
        terms = [terms] if isinstance(terms, str) else list(terms)
        missing = [t for t in terms if t not in logged]
        if missing:
            msg = f"Loss terms {missing} were not logged in `model.history`. Available terms: {logged}."
            raise KeyError(msg)
    curv_key = next((f"{s}_{_CURV}" for s in _STAGES if any(f"{s}_{_CURV}" in row for row in rows)), None)
    n_panels = 2 if curv_key is not None else 1

    axes = to_axes_list(ax)
    if axes is None:
        fig, grid = plt.subplots(1, n_panels, figsize=(5.0 * n_panels, 3.6), squeeze=False, layout="constrained")
        axes = list(grid.ravel())
    elif len(axes) != n_panels:
        what = "two Axes (losses, curvature)" if n_panels == 2 else "one Axes (the model has no curvature)"
        raise ValueError(expected("ax", what, f"{len(axes)} Axes"))
    else:
        fig = axes[0].figure

    epochs = _series(rows, "epoch")
    best = model.training.best_epoch
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    loss_ax = axes[0]
    for i, term in enumerate(terms):
        for stage, (label, style) in _STAGES.items():
            values = _series(rows, f"{stage}_{term}")
            if np.isfinite(values).any():
                loss_ax.plot(epochs, values, style, color=colours[i % len(colours)], label=f"{term} ({label})")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("losses")
    if curv_key is not None:
        curv_ax = axes[1]
        curv_ax.plot(epochs, _series(rows, curv_key), "-", color="black", label="curvature")
        curv_ax.set_xlabel("epoch")
        curv_ax.set_ylabel("c (the space has curvature -c)")
        curv_ax.set_title("curvature")
    if best is not None and best >= 0:
        for a in axes:
            a.axvline(best, color="0.6", linestyle=":", linewidth=1.0, label="best epoch")
    for a in axes:
        a.legend(fontsize="small")
    return finish(fig, show=show, user_ax=ax is not None)
