"""What ``hst.tl.fit`` trains on: the slides, the genes, their arrays, the validation split, the checkpoints."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from .._config import HyperSTConfig
from .._data._genes import select_hmhvg
from .._data._store import RowSource, SlideArrays, chunk_cache, chunk_rows, write_rows
from .._settings import settings
from .._validation import expected
from ._features import extract_features
from ._prepare import SlideInput, check_counts, check_distinct, geometry_from, load_slide, slide_gene_arrays

if TYPE_CHECKING:
    from pathlib import Path

    from ._features import FeatureExtractor

__all__ = [
    "checkpoint_folder",
    "choose_genes",
    "load_training_slides",
    "prepare_cohort",
    "split_slides",
    "training_items",
    "training_store",
]

logger = logging.getLogger(__name__)


def training_items(sdata: Any) -> list[Any]:
    """List the slides given to ``fit``, each given once (refused otherwise, before any work)."""
    from anndata import AnnData
    from spatialdata import SpatialData

    if isinstance(sdata, SpatialData | AnnData):
        return [sdata]
    if isinstance(sdata, Sequence) and not isinstance(sdata, str) and len(sdata) > 0:
        items = list(sdata)
        check_distinct(items)
        return items
    what = "a SpatialData, an AnnData or a non-empty list of them"
    raise TypeError(expected("sdata", what, sdata))


def load_training_slides(items: list[Any], *, layer: str | None, **keys: Any) -> list[SlideInput]:
    """Resolve every training slide (``keys``: table, image and shapes keys, microns per pixel); check counts.

    ``items`` are the slides as :func:`training_items` lists them (each given once). Slides whose shapes share a
    name get the suffix ``_<position>``.
    """
    slides: list[SlideInput] = []
    for i, data in enumerate(items):
        slide = load_slide(data, **keys)
        if any(s.name == slide.name for s in slides):
            slide.name = f"{slide.name}_{i}"
        check_counts(slide, layer)
        slides.append(slide)
    return slides


def prepare_cohort(
    slides: list[SlideInput],
    genes: list[str],
    cfg: HyperSTConfig,
    extractor: FeatureExtractor | None,
    *,
    layer: str | None,
    cache: bool | str | os.PathLike,
    batch_size: int,
    store: Path | None = None,
) -> tuple[dict[str, SlideArrays], list[np.ndarray]]:
    """Arrays of every slide (gene inputs and targets, and with ``extractor`` its cached features), and the rows used.

    With ``store`` (a folder), each slide's gene arrays are written there and read back by rows, as the
    features are from their cache: nothing of the cohort stays in memory. Without it (``cache=False``), both
    stay in memory. Spots without a count of any model gene are left out of training.
    """
    from ..pp import niche_graph

    arrays, rows = {}, []
    for i, s in enumerate(slides):
        conn, _ = niche_graph(s.sdata, table_key=s.layout.elements.table_key, n_rings=cfg.n_rings, inplace=False)
        spot_gene, niche_gene, target = slide_gene_arrays(s, genes, cfg, layer=layer, connectivities=conn)
        keep = np.flatnonzero(spot_gene.sum(1) > 0).astype(np.int32)  # kept for the whole fit: 4 bytes a spot
        if len(keep) < len(s.layout.centres_px):
            n_left_out = len(s.layout.centres_px) - len(keep)
            logger.info("Slide `%s`: %d spots without counts of the model genes are not used", s.name, n_left_out)
        rows.append(keep)
        spot = niche = None
        if extractor is not None:
            spot, niche = extract_features(
                s.sdata,
                s.layout,
                extractor,
                geometry=geometry_from(cfg),
                views=cfg.views,
                batch_size=batch_size,
                cache=cache,
                desc=f"features {s.name}",
                lazy=True,
            )
        gene_arrays = {"spot_gene": spot_gene, "niche_gene": niche_gene, "target": target}
        if store is None:
            sources = {k: RowSource(v) for k, v in gene_arrays.items()}
        else:
            chunk = (
                spot.chunk_len
                if spot is not None and not spot.in_memory
                else chunk_rows(spot_gene[0].nbytes, len(keep))
            )
            sources = write_rows(store / f"slide{i}.zarr", gene_arrays, chunk)
        arrays[s.name] = SlideArrays((sources["spot_gene"], sources["niche_gene"], sources["target"]), spot, niche)
    return arrays, rows


@contextmanager
def training_store(cache: bool | str | os.PathLike) -> Iterator[Path | None]:  # noqa: FBT001
    """Hold a temporary folder for the fit's gene arrays, beside the feature caches; ``None`` with ``cache=False``.

    The folder (``.fit-*`` in the cache folder) is removed when the fit ends, and the chunks read from it
    and from the feature caches are dropped from memory.
    """
    if cache is False:
        yield None
        return
    import tempfile
    from pathlib import Path

    root = Path(settings.cache_dir) / "features" if cache is True else Path(cache)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".fit-", dir=root) as folder:
            yield Path(folder)
    finally:
        chunk_cache.clear()


def choose_genes(slides: list[SlideInput], genes: int | Sequence[str], layer: str | None) -> list[str]:
    """Choose the model's genes: the top ``genes`` HMHVG genes of the training slides, or check the names given."""
    if isinstance(genes, int) and not isinstance(genes, bool):
        if genes < 1:
            raise ValueError(expected("genes", "a positive integer or a list of gene names", genes))
        return select_hmhvg([s.table for s in slides], genes, layer=layer)
    if isinstance(genes, str) or not isinstance(genes, Sequence) or len(genes) == 0:
        raise ValueError(expected("genes", "a positive integer or a non-empty list of gene names", genes))
    names = [str(g) for g in genes]
    if len(set(names)) != len(names):
        raise ValueError(expected("genes", "distinct gene names", [g for g in names if names.count(g) > 1][:5]))
    for s in slides:
        missing = [g for g in names if g not in s.table.var_names]
        if missing:
            msg = (
                f"{len(missing)} requested genes are missing from the table of slide `{s.name}` (e.g. "
                f"{missing[:5]}). Use genes measured on every training slide."
            )
            raise KeyError(msg)
    return names


def split_slides(slides: list[SlideInput], rows: list[np.ndarray], cfg: HyperSTConfig) -> tuple[list, list]:
    """(slide, rows) pairs for training and validation: by slide, or spatial blocks of a single slide."""
    rng = np.random.default_rng(cfg.random_state)
    used = [i for i, r in enumerate(rows) if len(r)]  # a slide without usable spots can neither train nor validate
    slides, rows = [slides[i] for i in used], [rows[i] for i in used]
    if len(slides) > 1:
        n_val = min(max(1, round(cfg.val_fraction * len(slides))), len(slides) - 1)
        val_ids = set(rng.permutation(len(slides))[:n_val].tolist())
        train_part = [(s, r) for i, (s, r) in enumerate(zip(slides, rows, strict=True)) if i not in val_ids]
        val_part = [(s, r) for i, (s, r) in enumerate(zip(slides, rows, strict=True)) if i in val_ids]
        return train_part, val_part
    slide, r = slides[0], rows[0]
    x = slide.layout.centres_px[r, 0]
    cut = np.quantile(x, 1 - cfg.val_fraction)  # a contiguous vertical band: no neighbour leaks across
    if not (x < cut).any():  # every spot in one column: nothing left to train on beside the band
        return [(slide, r)], []
    return [(slide, r[x < cut])], [(slide, r[x >= cut])]


def checkpoint_folder(
    checkpoint_dir: str | os.PathLike | None,
    resume: bool,  # noqa: FBT001
    cfg: HyperSTConfig,
    genes: list[str],
    slides: list[SlideInput],
    n_features: int,
) -> Path | None:
    """Prepare ``checkpoint_dir`` (its ``fit.json`` records what is trained); refuse to resume a different fit."""
    if checkpoint_dir is None:
        if resume:
            msg = "`resume=True` needs the `checkpoint_dir` of the interrupted fit."
            raise ValueError(msg)
        return None
    from pathlib import Path

    root = Path(checkpoint_dir)
    record = {
        "config": cfg.to_dict(),
        "genes": genes,
        "slides": {s.name: int(len(s.layout.centres_px)) for s in slides},
        "n_features": n_features,
    }
    record = json.loads(json.dumps(record))
    marker = root / "fit.json"
    if marker.is_file():
        if not resume:
            msg = (
                f"`checkpoint_dir` `{root}` holds checkpoints of an earlier fit: pass `resume=True` to continue it, "
                "or name an empty folder."
            )
            raise ValueError(msg)
        if json.loads(marker.read_text()) != record:
            msg = (
                f"The checkpoints in `{root}` belong to a fit with other data, genes or settings; resume with the "
                "same arguments, or name an empty folder to start afresh."
            )
            raise ValueError(msg)
    else:
        if resume:
            logger.info("No checkpoint in `%s` yet: starting the fit from the beginning", root)
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(record))
    return root
