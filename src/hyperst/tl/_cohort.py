"""``hst.tl.cache_features``: the feature caches of a cohort, built ahead of training, slide by slide.

Every slide is one task: read the slide (a path is read where the task runs), build the frozen encoder as
:func:`hyperst.tl.fit` builds it, and write the slide's cache with :func:`~hyperst.tl._features.extract_features`.
Tasks run one after another in this process, or on a :mod:`dask.distributed` cluster (processes of one
machine, or the nodes behind a user's ``Client``). A task never raises: it reports what it did.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import HyperSTConfig
from .._docs import doc_params
from .._settings import settings
from .._train import TrainerSettings
from .._utils import kept_random_state, progress, quiet_third_party
from .._validation import expected

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from anndata import AnnData
    from distributed import Client
    from spatialdata import SpatialData

    from ._features import FeatureExtractor

__all__ = ["cache_features"]

logger = logging.getLogger(__name__)

#: Columns of the summary, in order.
COLUMNS = ("slide", "store", "status", "spots", "seconds", "cache", "error")


@dataclass(frozen=True)
class _Job:
    """What every task needs (picklable, sent once per task)."""

    encoder: Any  # a registry name or a torch.nn.Module
    weights: str | None
    keys: dict[str, Any]
    config: HyperSTConfig
    root: Path
    batch_size: int
    accelerator: str
    threads: int | None  # torch intra-op threads of a worker (None: leave as they are)
    bars: bool  # per-slide progress bars (off on workers)
    token: str  # identifies the encoder of this call, so that a worker builds it once


_EXTRACTOR: dict[str, FeatureExtractor] = {}


def _extractor(job: _Job) -> FeatureExtractor:
    """Build the frozen encoder as :func:`hyperst.tl.fit` does (seeded), once per process and call."""
    if job.token not in _EXTRACTOR:
        import torch

        from ._encoder import make_extractor

        with kept_random_state():
            torch.manual_seed(job.config.random_state)  # a randomly initialised encoder (`weights=None`) is seeded
            device = TrainerSettings(accelerator=job.accelerator).device
            extractor = make_extractor(job.encoder, weights=job.weights, device=device)
        _EXTRACTOR.clear()
        _EXTRACTOR[job.token] = extractor
    return _EXTRACTOR[job.token]


def _is_complete(path: Path) -> bool:
    import zarr

    return (path / "zarr.json").exists() and bool(zarr.open_group(str(path), mode="r").attrs.get("complete"))


def _cache_slide(item: Any, job: _Job) -> dict[str, Any]:
    """Build (or find) one slide's cache; return its summary row, with the error if it failed."""
    t0 = time.perf_counter()
    store = str(item) if isinstance(item, str | os.PathLike) else None
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(slide=Path(store).name if store else None, store=store, status="failed")
    bars = settings.progress_bar
    try:
        import spatialdata as sd
        import torch

        from .._data import PatchReader
        from ._features import _cache_path, extract_features
        from ._prepare import geometry_from, load_slide

        if job.threads is not None:
            torch.set_num_threads(job.threads)
        settings.progress_bar = bars and job.bars
        with quiet_third_party():  # on workers too, where the caller's filters do not reach
            data = sd.read_zarr(store) if store is not None else item
            slide = load_slide(data, **job.keys)
        row.update(slide=slide.name, spots=len(slide.layout.centres_px))
        extractor, geometry = _extractor(job), geometry_from(job.config)
        path = _cache_path(job.root, PatchReader(slide.sdata, slide.layout, geometry), extractor, job.config.views)
        row["cache"] = str(path)
        if _is_complete(path):
            row["status"] = "skipped"
        else:
            with quiet_third_party():
                extract_features(
                    slide.sdata,
                    slide.layout,
                    extractor,
                    geometry=geometry,
                    views=job.config.views,
                    batch_size=job.batch_size,
                    cache=job.root,
                    desc=f"features {slide.name}",
                )
            row["status"] = "cached"
    except Exception as err:  # reported in the summary; the other slides go on
        row["error"] = f"{type(err).__name__}: {err}"
    finally:
        settings.progress_bar = bars
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _as_items(sdata: Any) -> list[Any]:
    from anndata import AnnData
    from spatialdata import SpatialData

    one = (SpatialData, AnnData, str, os.PathLike)
    if isinstance(sdata, one):
        return [sdata]
    if isinstance(sdata, Sequence) and len(sdata) > 0 and all(isinstance(s, one) for s in sdata):
        return list(sdata)
    what = "a SpatialData, an AnnData, a path to a `.zarr` store, or a non-empty list of them"
    raise TypeError(expected("sdata", what, type(sdata).__name__))


def _cache_root(cache: bool | str | os.PathLike) -> Path:  # noqa: FBT001
    if cache is False or cache is None:
        msg = "`cache_features` writes caches: pass `cache=True` (under `hyperst.settings.cache_dir`) or a folder."
        raise ValueError(msg)
    return Path(settings.cache_dir) / "features" if cache is True else Path(cache)


def _run_serial(items: list[Any], job: _Job) -> list[dict[str, Any]]:
    return [_cache_slide(item, job) for item in progress(items, total=len(items), desc="slides", unit="slide")]


def _run_distributed(items: list[Any], job: _Job, client: Client) -> list[dict[str, Any]]:
    """One task per slide on ``client``; a task lost with its worker is reported as failed."""
    from distributed import as_completed

    futures = {client.submit(_cache_slide, item, job, pure=False): i for i, item in enumerate(items)}
    rows: list[dict[str, Any] | None] = [None] * len(items)
    for future in progress(as_completed(futures), total=len(items), desc="slides", unit="slide"):
        i = futures[future]
        try:
            rows[i] = future.result()
        except Exception as err:  # the worker died (KilledWorker, CommClosedError...)
            store = str(items[i]) if isinstance(items[i], str | os.PathLike) else None
            rows[i] = dict.fromkeys(COLUMNS) | {
                "store": store,
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
            }
    return rows


#: The variable dask's nanny sets in the workers it starts (to hand freed memory back to the system). It also turns
#: off glibc's adaptive mmap threshold, so every batch's activations are mapped and unmapped afresh: a torch encoder
#: spent about 40 % more CPU time per spot with it (``benchmarks/extraction.py --dask-env``). A task's memory is set
#: by its batch, so the workers :func:`cache_features` starts keep glibc's default.
TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"


@contextmanager
def worker_environment() -> Iterator[None]:
    """Start dask workers without ``MALLOC_TRIM_THRESHOLD_`` inside this block.

    dask's config sets it in the workers, and a nanny also leaves it in this process's environment (which new
    workers inherit) once any cluster has been started here; both are undone for the block.
    """
    import dask
    import distributed  # noqa: F401  (loads its config, which this block overrides)

    saved = os.environ.pop(TRIM_VARIABLE, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM_VARIABLE}": None}):
            yield
    finally:
        if saved is not None:
            os.environ[TRIM_VARIABLE] = saved


def _local_client(n_workers: int) -> Client:
    """Start a cluster of ``n_workers`` single-threaded processes on this machine."""
    from distributed import Client, LocalCluster

    with worker_environment():
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    return Client(cluster)


def _summary(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["spots"] = table["spots"].astype("Int64")
    counts = table["status"].value_counts()
    logger.info(
        "Feature caches of %d slide(s): %d cached, %d skipped (already cached), %d failed",
        len(table),
        counts.get("cached", 0),
        counts.get("skipped", 0),
        counts.get("failed", 0),
    )
    for _, row in table[table["status"] == "failed"].iterrows():
        logger.warning("Slide `%s` failed: %s", row["slide"] or row["store"], row["error"])
    return table


@doc_params
def cache_features(
    sdata: SpatialData | AnnData | str | os.PathLike | Sequence[SpatialData | AnnData | str | os.PathLike],
    *,
    encoder: str | torch.nn.Module = "resnet50",
    weights: str | os.PathLike | None = "DEFAULT",
    table_key: str | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    microns_per_pixel: float | None = None,
    config: HyperSTConfig | None = None,
    cache: bool | str | os.PathLike = True,
    batch_size: int = 32,
    accelerator: str = "auto",
    n_workers: int = 1,
    client: Client | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Build the feature caches of many slides ahead of training, one slide per task, on one or many processes.

    Each slide's spot and niche features (all ``views`` dihedral views) are computed by the frozen encoder and
    written to the same cache that :func:`hyperst.tl.fit` and :func:`hyperst.tl.predict` read: a later fit
    with the same encoder, weights, patch geometry, views and ``cache`` reuses them instead of computing
    them. Slides already cached are skipped; a slide that fails is reported and the others go on.

    Parameters
    ----------
    sdata
        A slide or a list of slides: SpatialData (or AnnData) objects, or paths to SpatialData ``.zarr``
        stores. Paths suit workers best: each worker reads its own store.
    encoder
        Image encoder, as for :func:`hyperst.tl.fit`.
    weights
        Encoder weights, as for :func:`hyperst.tl.fit`. ``None`` (random) weights are seeded with
        ``random_state``, as in a fit, so that the fit finds these caches.
    {table_key}
    {image_key}
    {shapes_key}
    microns_per_pixel
        Pixel size of the images; derived from the spot diameter when ``None``.
    config
        A :class:`hyperst.HyperSTConfig`; ``kwargs`` override its fields. Pass what the fit will get: the
        caches depend on ``spot_um``, ``niche_um``, ``n_rings``, ``patch_px``, ``views`` and, for random
        weights, ``random_state``.
    cache
        ``True`` (under ``hyperst.settings.cache_dir``) or a folder; on a cluster, a folder every worker can
        write and the fit can read.
    batch_size
        Spots per batch when computing features (a fit's ``feature_batch_size``).
    accelerator
        Where each task computes: ``"auto"`` (a GPU if the task's process sees one) or ``"cpu"``.
    n_workers
        Processes of a local :mod:`dask.distributed` cluster (one thread each) started for this call and closed
        after it; ``1`` computes here, one slide after another. Ignored with ``client``.
    client
        A :class:`distributed.Client` of a running cluster (over nodes, or GPUs with one worker each): every
        slide is one task of it. The cluster is left running.
    **kwargs
        Fields of :class:`hyperst.HyperSTConfig`, as for :func:`hyperst.tl.fit` (the same keywords may be
        passed: the ones that do not shape features are ignored).

    Returns
    -------
    One row per slide, in the order given: ``slide`` (its name, as in a fit), ``store`` (the path, if given
    as one), ``status`` (``"cached"``: computed now, ``"skipped"``: already cached, ``"failed"``), ``spots``,
    ``seconds``, ``cache`` (the slide's cache folder) and ``error`` (type and message of a failure).

    Raises
    ------
    TypeError
        If ``sdata`` is not slides, or ``kwargs`` names no config field.
    ValueError
        If ``cache`` is ``False``, ``n_workers`` or ``batch_size`` is not a positive integer, or a slide is
        given twice (the same object, or the same store).

    Examples
    --------
    >>> import hyperst as hst
    >>> slides = hst.datasets.synthetic(n_slides=3, n_spots=200)
    >>> summary = hst.tl.cache_features(slides, encoder="squidpy", cache="features/")  # doctest: +SKIP
    >>> model = hst.tl.fit(slides, encoder="squidpy", cache="features/")  # doctest: +SKIP
    """
    cfg = HyperSTConfig.build(config, **kwargs)
    for name, value in (("n_workers", n_workers), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(expected(name, "a positive integer", value))
    from ._prepare import check_distinct

    items, root = _as_items(sdata), _cache_root(cache)
    check_distinct(items)  # before any cluster starts
    keys = {"table_key": table_key, "image_key": image_key, "shapes_key": shapes_key}
    job = _Job(
        encoder=encoder,
        weights=None if weights is None else str(weights),
        keys={**keys, "microns_per_pixel": microns_per_pixel},
        config=cfg,
        root=root,
        batch_size=batch_size,
        accelerator=accelerator,
        threads=max(1, (os.cpu_count() or 1) // n_workers) if client is None and n_workers > 1 else None,
        bars=client is None and n_workers == 1,
        token=uuid.uuid4().hex,
    )
    if client is None and n_workers == 1:
        return _summary(_run_serial(items, job))
    own = _local_client(n_workers) if client is None else None
    try:
        rows = _run_distributed(items, job, own or client)
    finally:
        if own is not None:
            cluster = own.cluster
            own.close()
            cluster.close()
    return _summary(rows)
