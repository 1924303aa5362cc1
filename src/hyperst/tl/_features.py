"""Image features of every spot's spot and niche patches, for all dihedral views, cached on disk.

The cache is a zarr group per (slide, encoder, patch geometry, views), under ``settings.cache_dir/features``
unless another folder is given; later fits and predictions on the same slide reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._data import PatchGeometry, PatchReader, dihedral
from .._data._store import RowSource, chunk_rows
from .._settings import settings
from .._utils import quiet_third_party

if TYPE_CHECKING:
    import torch
    from spatialdata import SpatialData

    from .._data import SlideLayout
    from .._records import EncoderRecord

__all__ = ["FeatureExtractor", "extract_features"]

logger = logging.getLogger(__name__)

#: Bump when the meaning of cached features changes, so stale caches are not reused.
_CACHE_VERSION = 1


@dataclass
class FeatureExtractor:
    """Turns ``(B, 3, H, W)`` uint8 patches into ``(B, F)`` float32 features.

    Build one with :func:`hyperst.tl._encoder.make_extractor` (for a fit) or
    :func:`hyperst.tl._encoder.extractor_for` (from a model's :class:`~hyperst._records.EncoderRecord`).
    """

    record: EncoderRecord
    module: torch.nn.Module | None = None
    device: str = "cpu"

    @property
    def name(self) -> str:
        """The encoder's name."""
        return self.record.name

    @property
    def n_features(self) -> int:
        """Width ``F`` of the features."""
        return self.record.n_features

    @property
    def invariant(self) -> bool:
        """Features do not change under the 8 dihedral transforms, so one view is computed and repeated."""
        return self.module is None

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Compute features of a batch of patches."""
        if self.module is None:
            from .._data._handcrafted import handcrafted_features

            return handcrafted_features(patches).astype(np.float32)
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device)
            return self.module(x).float().cpu().numpy()


def _slide_fingerprint(reader: PatchReader) -> str:
    """Identify a slide by its geometry and the pixels of a few of its patches (cheap, reads 3 patches)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(reader.layout.centres_px, dtype=np.float64).tobytes())
    h.update(repr(reader.layout.image_shape).encode())
    n = len(reader)
    probe = sorted({0, n // 2, n - 1})
    spot, niche = reader.read(probe)
    h.update(spot.tobytes())
    h.update(niche.tobytes())
    return h.hexdigest()[:20]


def _cache_path(root: Path, reader: PatchReader, extractor: FeatureExtractor, views: int) -> Path:
    key = {
        "version": _CACHE_VERSION,
        "slide": _slide_fingerprint(reader),
        "encoder": extractor.record.fingerprint,
        "sides_px": [round(s, 3) for s in reader.sides],
        "out_px": reader.geometry.out_px,
        "views": views,
    }
    key |= reader.geometry.cache_key()  # keys of lanczos caches stay as they were before the option
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root / f"{extractor.name.replace('/', '_').replace(':', '_')}-{digest}.zarr"


def _lookup(
    cache: bool | str | Path,  # noqa: FBT001
    reader: PatchReader,
    extractor: FeatureExtractor,
    views: int,
) -> Path | None:
    """Return the slide's cache folder (``None`` without a cache)."""
    if cache is False:
        return None
    root = Path(settings.cache_dir) / "features" if cache is True else Path(cache)
    return _cache_path(root, reader, extractor, views)


def _is_complete(path: Path | None) -> bool:
    import zarr

    return (
        path is not None
        and (path / "zarr.json").exists()
        and bool(zarr.open_group(str(path), mode="r").attrs.get("complete"))
    )


def _compute(
    reader: PatchReader, extractor: FeatureExtractor, views: int, batch_size: int, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    n, f = len(reader), extractor.n_features
    spot_out = np.empty((n, views, f), dtype=np.float32)
    niche_out = np.empty((n, views, f), dtype=np.float32)
    for idx, spot, niche in reader.iter_batches(batch_size, desc=desc):
        for v in range(views):
            if v > 0 and extractor.invariant:
                spot_out[idx, v] = spot_out[idx, 0]
                niche_out[idx, v] = niche_out[idx, 0]
                continue
            spot_out[idx, v] = extractor(dihedral(spot, v))
            niche_out[idx, v] = extractor(dihedral(niche, v))
    bad = ~(np.isfinite(spot_out).all((1, 2)) & np.isfinite(niche_out).all((1, 2)))
    if bad.any():  # never cached: a fixed encoder must not leave NaN features on disk for later fits
        msg = (
            f"The encoder `{extractor.name}` gave non-finite features for {int(bad.sum())} of {n} spots "
            f"(first: spot {int(np.flatnonzero(bad)[0])}): check its weights and that it maps "
            "`(B, 3, 224, 224)` float images to finite `(B, F)` features."
        )
        raise ValueError(msg)
    return spot_out, niche_out


def _write(path: Path, spot: np.ndarray, niche: np.ndarray, extractor: FeatureExtractor, views: int) -> None:
    """Write the cache, chunked by spots (all views of a spot in one chunk) for reads by rows."""
    import zarr

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = chunk_rows(spot[0].nbytes if len(spot) else 1, len(spot))
    with quiet_third_party():
        group = zarr.open_group(str(path), mode="w")
        group.create_array("spot", data=spot, chunks=(rows, *spot.shape[1:]))
        group.create_array("niche", data=niche, chunks=(rows, *niche.shape[1:]))
    group.attrs.update({"encoder": extractor.record.to_dict(), "views": views, "complete": True})
    logger.info("Cached features in `%s`", path)


def extract_features(
    sdata: SpatialData,
    layout: SlideLayout,
    extractor: FeatureExtractor,
    *,
    geometry: PatchGeometry,
    views: int = 8,
    batch_size: int = 32,
    cache: bool | str | Path = True,
    desc: str = "features",
    lazy: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[RowSource, RowSource]:
    """Spot and niche features of every spot of one slide, for ``views`` dihedral views.

    Parameters
    ----------
    sdata, layout
        The slide and its layout.
    extractor
        From :func:`make_extractor`.
    geometry
        Patch sizes.
    views
        Dihedral views per patch (1 to 8; view 0 is the identity).
    batch_size
        Spots per batch (memory is bounded by one batch).
    cache
        ``True``: the cache under ``hyperst.settings.cache_dir``; a path: that folder; ``False``: no cache.
    desc
        Progress-bar label.
    lazy
        Return the features as :class:`~hyperst._data._store.RowSource`: the cache on disk, read by rows later
        (computed and written first if missing; in memory with ``cache=False``).

    Returns
    -------
    ``(N, views, F)`` float32 spot features and niche features, in table row order.
    """
    import zarr

    reader = PatchReader(sdata, layout, geometry)
    path = _lookup(cache, reader, extractor, views)
    if _is_complete(path):
        logger.info("Reusing cached features `%s`", path)
        if lazy:
            return RowSource(path=path, name="spot"), RowSource(path=path, name="niche")
        group = zarr.open_group(str(path), mode="r")
        return np.asarray(group["spot"]), np.asarray(group["niche"])
    spot_out, niche_out = _compute(reader, extractor, views, batch_size, desc)
    if path is None:
        return (RowSource(spot_out), RowSource(niche_out)) if lazy else (spot_out, niche_out)
    _write(path, spot_out, niche_out, extractor, views)
    if lazy:  # the arrays are freed: training reads the cache by rows
        return RowSource(path=path, name="spot"), RowSource(path=path, name="niche")
    return spot_out, niche_out
