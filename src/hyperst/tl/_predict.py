"""``hst.tl.predict``: expression and hyperbolic embeddings for every spot of a slide, from its H&E alone.

Load → features → infer → QC → write: the steps live in :mod:`hyperst.tl._encoder` (the encoder),
:mod:`hyperst.tl._features` (cached features), :mod:`hyperst.tl._infer` (inference, the table, the writes) and
:mod:`hyperst.tl._trust` (intervals and domain checks).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .._constants import DEFAULT_KEY, Keys
from .._docs import doc_params
from .._validation import expected, expected_type
from ._encoder import extractor_for
from ._features import extract_features
from ._infer import infer, prediction_table, provenance, write_predictions
from ._prepare import geometry_from, load_slide
from ._trust import RELIABLE_PCC, conformal_bounds, domain_qc, feature_distance

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from .._model import HyperST

__all__ = ["predict"]

logger = logging.getLogger(__name__)


def _check_arguments(model: HyperST, views: int, coverage: float | None) -> None:
    from .._model import HyperST

    if not isinstance(model, HyperST):
        msg = (
            f"{expected_type('model', 'a hyperst.HyperST', model)} Train one with `hyperst.tl.fit(...)` "
            "or read a saved one with `hyperst.HyperST.load(path)`."
        )
        raise TypeError(msg)
    if not isinstance(views, int) or not 1 <= views <= 8:
        raise ValueError(expected("views", "an integer from 1 to 8", views))
    if coverage is not None and not (isinstance(coverage, float) and 0 < coverage < 1):
        raise ValueError(expected("coverage", "a float in (0, 1) or None", coverage))


@doc_params
def predict(
    sdata: SpatialData | AnnData,
    model: HyperST,
    *,
    key_added: str = DEFAULT_KEY,
    inplace: bool = True,
    table_key: str | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    microns_per_pixel: float | None = None,
    layer: str | None = None,
    views: int = 1,
    coverage: float | None = 0.9,
    normalised: bool = False,
    reliable_pcc: float = RELIABLE_PCC,
    batch_size: int = 32,
    cache: bool | str | os.PathLike = True,
) -> AnnData | None:
    """Predict expression and hyperbolic embeddings for every spot, from the H&E image.

    Counts are optional: with them, the gene-side embeddings are written too. Spots near the border are
    padded, never dropped. A slide with no spots at all can be tiled first with :func:`hyperst.pp.tile`. A
    slide of Visium HD bins or Xenium cells without a table of spots is first summed into pseudo-spots by
    :func:`hyperst.pp.pseudospots` at its defaults (56 µm); with ``inplace=True`` they are added to ``sdata``
    (``shapes['hyperst_pseudospots_spots']``, ``tables['hyperst_pseudospots']``) and the results below are
    written to their table. :func:`hyperst.tl.to_bins` then copies the predictions to the bins or cells.

    Parameters
    ----------
    {sdata}
    model
        A trained :class:`hyperst.HyperST`.
    {key_added}
    inplace
        Write into ``sdata``; ``False`` returns the predictions table and leaves ``sdata`` untouched.
    {table_key}
    {image_key}
    {shapes_key}
    microns_per_pixel
        Pixel size of the image; derived from the spot diameter when ``None``.
    layer
        Layer with raw counts for the gene embeddings (``None``: ``X``).
    views
        Dihedral views averaged per spot (test-time augmentation; 1: none).
    coverage
        Target coverage of the split-conformal intervals, calibrated on the validation slides' residuals at fit
        time (``None``: no intervals).
    normalised
        Scale each spot's interval by its hyperbolic radius relative to the validation spots' (clipped to
        0.5-2x); ``False`` gives every spot of a gene the same width. See ``docs/trust.md`` for how the two
        compare on held-out sections.
    reliable_pcc
        Validation PCC from which ``var['{{key_added}}_reliable']`` is ``True``.
    batch_size
        Spots per batch of patches.
    cache
        Feature cache: ``True``, a folder, or ``False``.

    Returns
    -------
    With ``inplace=True``, ``None``, after writing to the spots' table:

    - ``obsm['X_{{key_added}}']``, ``obsm['X_{{key_added}}_niche']``: spot and niche image embeddings,
      Lorentz coordinates with the time component first, float32;
    - ``obsm['X_{{key_added}}_gene']``, ``obsm['X_{{key_added}}_gene_niche']``: gene embeddings, when the
      table holds counts of the model's genes;
    - ``obsm['X_{{key_added}}_poincare']``, ``obs['{{key_added}}_radius']``: Poincaré-disk view and distance to
      the origin;
    - ``obsp['{{key_added}}_connectivities']``, ``obsp['{{key_added}}_distances']``: the niche graph;
    - ``layers['{{key_added}}']``: predicted expression, same shape as ``X``, NaN for genes not predicted;
      ``var['{{key_added}}_predicted']``;
    - ``layers['{{key_added}}_lower']``, ``layers['{{key_added}}_upper']``: split-conformal bounds at
      ``coverage`` (when the model holds a calibration), NaN for genes not predicted;
    - ``var['{{key_added}}_val_pcc']``, ``var['{{key_added}}_reliable']``: each gene's Pearson r on the
      validation slides at fit time, and whether it reaches ``reliable_pcc``;
    - ``uns['{{key_added}}']``: provenance (version, model hash, genes, encoder, µm/px, patch sizes,
      curvature), ``["intervals"]`` (coverage, calibration size) and ``["qc"]``: the domain-shift checks
      (pixel size, stain, image features, embedding radius against the training slides; a warning names
      any that fail);

    and ``sdata.tables['{{key_added}}']``: the predictions as their own table (var = the model's genes),
    annotating the same spots. With ``inplace=False``, that table (holding the embeddings too).
    """
    from ..pp import niche_graph

    _check_arguments(model, views, coverage)
    keys = Keys(key_added)
    slide = load_slide(
        sdata,
        table_key=table_key,
        image_key=image_key,
        shapes_key=shapes_key,
        microns_per_pixel=microns_per_pixel,
        write_pseudospots=inplace,
    )
    extractor = extractor_for(model.encoder, model.module.n_features)
    spot, niche = extract_features(
        slide.sdata,
        slide.layout,
        extractor,
        geometry=geometry_from(model.config),
        views=views,
        batch_size=batch_size,
        cache=cache,
        desc="predict",
    )
    if extractor.module is not None:  # a custom module is the user's: back where it was found
        extractor.module.cpu()
    table_key = slide.layout.elements.table_key
    graph = niche_graph(slide.sdata, table_key=table_key, n_rings=model.config.n_rings, inplace=False)
    inference = infer(model, slide, spot, niche, keys=keys, layer=layer, connectivities=graph[0])

    qc = domain_qc(model.training, slide, feature_distance(model.module, spot[:, 0]), inference.radius)
    bounds, intervals = None, None
    if coverage is not None and model.training.calibration is not None:
        radius = inference.radius if normalised else None
        lower, upper, intervals = conformal_bounds(inference.pred, model.training.calibration, coverage, radius)
        bounds = (lower, upper)
    elif coverage is not None:
        logger.info("No intervals: the model has no calibration (it was fitted without validation slides)")
    uns = provenance(model, slide, inference, views=views, qc=qc, intervals=intervals)

    result = prediction_table(
        slide, model, inference, graph, keys=keys, bounds=bounds, reliable_pcc=reliable_pcc, uns=uns
    )
    if not inplace:
        return result
    write_predictions(sdata, slide, result, inference, graph, keys=keys, bounds=bounds, reliable_pcc=reliable_pcc)
    return None
