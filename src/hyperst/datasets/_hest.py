"""``hyperst.datasets.hest``: samples of a local HEST-1k download, one SpatialData per sample.

HEST-1k (Jaume et al., NeurIPS 2024) is gated on Hugging Face, so hyperst never downloads it. A download keeps,
per sample ``<id>``, the expression in ``st/<id>.h5ad`` (pixel coordinates in ``obsm["spatial"]``, in the frame of
the whole-slide image), the H&E in ``wsis/<id>.tif`` (pyramidal TIFF) and the metadata in ``metadata/<id>.json``
(``pixel_size_um_estimated``, ``spot_diameter``, ``inter_spot_dist``, ...); ``HEST_v1_1_0.csv`` at the root
describes every sample.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import SPOT_DIAMETER_UM
from .._validation import check_positive, expected, expected_in, key_not_found, raise_collected
from ._images import image_element

if TYPE_CHECKING:
    import os

    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["hest"]

logger = logging.getLogger(__name__)

#: Spot diameter in µm by HEST's ``st_technology`` (lower case), used when the metadata gives none.
_DIAMETER_BY_TECHNOLOGY = {
    "visium": SPOT_DIAMETER_UM["visium"],
    "spatial transcriptomics": SPOT_DIAMETER_UM["st"],
    "st": SPOT_DIAMETER_UM["st"],
}
#: Nominal cell diameter in µm for cell-level data (Xenium and other imaging-based technologies).
NOMINAL_CELL_DIAMETER_UM = 10.0
_CELL_LEVEL = ("xenium", "cosmx", "merfish", "merscope")
_IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png")
_DOWNLOAD_HINT = (
    "Download HEST-1k samples (a gated dataset: accept its terms on Hugging Face and log in first) with "
    "`huggingface_hub.snapshot_download('MahmoodLab/hest', repo_type='dataset', local_dir=path, "
    "allow_patterns=[f'*{id}[_.]**' for id in ids] + ['HEST_v1_1_0.csv'])`."
)


def hest(
    path: str | os.PathLike[str],
    ids: str | Sequence[str] | None = None,
    *,
    spot_diameter_um: float | None = None,
) -> SpatialData | dict[str, SpatialData]:
    """Load samples of a local HEST-1k download as SpatialData, one per sample.

    HEST-1k is a gated dataset on Hugging Face (``MahmoodLab/hest``, CC BY-NC-SA 4.0): accept its terms there,
    log in (``huggingface-cli login``) and download the samples you need, for instance::

        from huggingface_hub import snapshot_download

        ids = ["TENX95", "NCBI783"]
        snapshot_download(
            "MahmoodLab/hest",
            repo_type="dataset",
            local_dir="hest_data",
            allow_patterns=[f"*{i}[_.]**" for i in ids] + ["HEST_v1_1_0.csv"],
        )

    This reads, for each sample ``<id>``::

        <path>/st/<id>.h5ad         # counts; obsm["spatial"]: spot (x, y) in whole-slide-image pixels
        <path>/wsis/<id>.tif        # the H&E whole-slide image (pyramidal TIFF; .jpg or .png also read)
        <path>/metadata/<id>.json   # pixel_size_um_estimated, spot_diameter, st_technology, ...
        <path>/HEST_v1_1_0.csv      # optional: HEST's table of samples, merged under the JSON metadata

    The spot radius is half the spot diameter in pixels: ``spot_diameter_um`` if given, else the metadata's
    ``spot_diameter`` (µm), else 55 µm for Visium, 100 µm for legacy ST and a nominal 10 µm cell for cell-level
    technologies (Xenium, CosMx, MERFISH) by the metadata's ``st_technology``. The pixel size is the metadata's
    ``pixel_size_um_estimated`` (else ``pixel_size_um_embedded``).

    Parameters
    ----------
    path
        The HEST download folder (holding ``st/``, ``wsis/`` and ``metadata/``).
    ids
        One sample id, several, or ``None`` for every ``st/*.h5ad`` in ``path``.
    spot_diameter_um
        Spot (or cell) diameter in µm for every sample, overriding the metadata.

    Returns
    -------
    A :class:`~spatialdata.SpatialData` for a single id, else a dict from id to SpatialData (in the order given,
    or sorted for ``ids=None``). For sample ``<id>``, in coordinate system ``<id>`` (whole-slide-image pixels):

    - ``images[f"{id}_full_image"]``: the ``(c, y, x)`` uint8 H&E image, read lazily (TIFF tile by tile; a JPEG
      on first pixel access), downsampled by 2 until its longer side is at most 2048 px;
    - ``shapes[id]``: the spot circles at ``obsm["spatial"]``, index ``spot_id``, ``radius`` in pixels;
    - ``tables["table"]``: the h5ad's ``X`` (HEST stores raw counts), ``obs``, ``var``, ``obsm`` and ``layers``,
      annotating the circles through ``region``/``spot_id`` (both added to ``obs``);
      ``uns["spatial"][id]["scalefactors"]`` holds ``microns_per_pixel`` and ``spot_diameter_fullres``, and
      ``uns["spatial"][id]["metadata"]`` the sample's scalar metadata. HEST's own ``uns["spatial"]`` (a
      thumbnail) is replaced.

    Raises
    ------
    KeyError
        If an id has no ``st/<id>.h5ad``.
    ValueError
        If ``path`` is not a HEST folder, or a sample lacks its image, its metadata, a pixel size, spot
        coordinates or a spot diameter (the message lists every problem of every sample at once).

    Notes
    -----
    Cite HEST-1k (Jaume et al., "HEST-1k: A Dataset for Spatial Transcriptomics and Histology Image Analysis",
    NeurIPS 2024) and each sample's original study (``dataset_title`` in the metadata).

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.hest("hest_data", "TENX95")  # doctest: +SKIP
    >>> slides = hst.datasets.hest("hest_data")  # every sample downloaded, as {id: SpatialData}  # doctest: +SKIP
    """
    root = Path(path).expanduser()
    if not (root / "st").is_dir():
        msg = f"{expected('path', 'a HEST-1k folder holding `st/`', str(root))} It has no `st/`. {_DOWNLOAD_HINT}"
        raise ValueError(msg)
    available = sorted(p.stem for p in (root / "st").glob("*.h5ad"))
    single = isinstance(ids, str)
    names = _check_ids(ids, available, root)
    if spot_diameter_um is not None:
        check_positive(spot_diameter_um, "spot_diameter_um")
    table = _hest_table(root)

    problems: list[str] = []
    plans = {name: _plan(root, name, table, spot_diameter_um, problems) for name in names}
    raise_collected(problems, f"HEST folder `{root}`")
    slides = {name: _sample(name, **plan) for name, plan in plans.items()}
    return slides[names[0]] if single else slides


def _check_ids(ids: Any, available: list[str], root: Path) -> list[str]:
    if ids is None:
        if not available:
            msg = f"No samples in `{root / 'st'}` (no `*.h5ad` files). {_DOWNLOAD_HINT}"
            raise ValueError(msg)
        return available
    names = [ids] if isinstance(ids, str) else ids
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(expected("ids", "a sample id, a non-empty sequence of them, or None", ids))
    for name in names:
        if name not in available:
            raise KeyError(key_not_found(name, f"{root / 'st'}", available, _DOWNLOAD_HINT))
    return list(dict.fromkeys(names))


def _hest_table(root: Path) -> pd.DataFrame | None:
    """HEST's table of samples (the newest ``HEST_v*.csv`` at the root), indexed by id, if present."""
    found = sorted(root.glob("HEST_v*.csv"))
    if not found:
        return None
    frame = pd.read_csv(found[-1])
    if "id" not in frame.columns:
        logger.warning("Ignoring `%s`: it has no `id` column.", found[-1].name)
        return None
    return frame.drop_duplicates("id").set_index("id")


def _metadata(root: Path, name: str, table: pd.DataFrame | None, problems: list[str]) -> dict[str, Any] | None:
    """Merge the sample's row of HEST's table (if any) with its ``metadata/<id>.json`` (if any; it wins)."""
    meta: dict[str, Any] = {}
    in_table = table is not None and name in table.index
    if in_table:
        meta.update({k: v for k, v in table.loc[name].items() if not (isinstance(v, float) and math.isnan(v))})
    file = root / "metadata" / f"{name}.json"
    if not file.is_file():
        if in_table:
            return meta
        problems.append(f"`metadata/{name}.json` not found (it gives the pixel size). {_DOWNLOAD_HINT}")
        return None
    try:
        meta.update(json.loads(file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"`metadata/{name}.json` is not valid JSON ({err}).")
        return None
    return meta


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _plan(
    root: Path, name: str, table: pd.DataFrame | None, spot_diameter_um: float | None, problems: list[str]
) -> dict[str, Any]:
    """Check one sample's files and metadata; return what :func:`_sample` needs (appending any problems)."""
    images = [root / "wsis" / f"{name}{ext}" for ext in _IMAGE_SUFFIXES]
    image = next((p for p in images if p.is_file()), None)
    if image is None:
        problems.append(f"`wsis/{name}.tif` not found (nor {[p.name for p in images[1:]]}). {_DOWNLOAD_HINT}")
    meta = _metadata(root, name, table, problems)
    mpp = diameter = None
    if meta is not None:
        mpp = _number(meta.get("pixel_size_um_estimated")) or _number(meta.get("pixel_size_um_embedded"))
        if mpp is None:
            problems.append(
                f"no positive `pixel_size_um_estimated` (nor `pixel_size_um_embedded`) for `{name}` in "
                f"`metadata/{name}.json` or HEST's table; add the whole-slide image's µm per pixel to the JSON."
            )
        technology = str(meta.get("st_technology", "")).strip().lower()
        if spot_diameter_um is not None:
            diameter = float(spot_diameter_um)
        elif _number(meta.get("spot_diameter")) is not None:
            diameter = _number(meta.get("spot_diameter"))
        elif technology in _DIAMETER_BY_TECHNOLOGY:
            diameter = _DIAMETER_BY_TECHNOLOGY[technology]
        elif technology.startswith(_CELL_LEVEL):
            diameter = NOMINAL_CELL_DIAMETER_UM
        else:
            problems.append(
                f"`{name}`: the metadata gives neither `spot_diameter` nor a known `st_technology` "
                f"(found {meta.get('st_technology')!r}); pass `spot_diameter_um=`."
            )
    return {"counts": root / "st" / f"{name}.h5ad", "image": image, "meta": meta, "mpp": mpp, "diameter": diameter}


def _coordinates(adata: AnnData, name: str) -> np.ndarray:
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=float)
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    else:
        msg = (
            f"`st/{name}.h5ad` has no spot coordinates: expected `obsm['spatial']` (x, y in whole-slide-image "
            f"pixels) or `obs['pxl_col_in_fullres']`/`obs['pxl_row_in_fullres']`. Found obsm keys "
            f"{sorted(adata.obsm)}."
        )
        raise ValueError(msg)
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy[:, :2]).all():
        where = f"`obsm['spatial']` of `st/{name}.h5ad`"
        raise ValueError(expected_in("finite (x, y) pixels", where, f"shape {xy.shape}"))
    return xy[:, :2]


def _warn_if_not_counts(adata: AnnData, name: str) -> None:
    from scipy import sparse

    values = adata.X.data if sparse.issparse(adata.X) else np.asarray(adata.X).ravel()
    values = values[:100_000]
    if values.size and (np.any(values < 0) or not np.allclose(values, np.round(values))):
        logger.warning("`st/%s.h5ad` X does not hold non-negative integers; hyperst expects raw counts.", name)


def _scalar_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep the metadata values that an AnnData ``uns`` can store and write (strings, numbers, booleans)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | int | float | str):
            out[str(key)] = value
    return out


def _sample(name: str, *, counts: Path, image: Path, meta: dict[str, Any], mpp: float, diameter: float) -> SpatialData:
    import anndata as ad
    from dask.base import tokenize
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    adata = ad.read_h5ad(counts)
    xy = _coordinates(adata, name)
    _warn_if_not_counts(adata, name)
    n = adata.n_obs
    for column in ("region", "spot_id"):
        if column in adata.obs.columns:
            logger.info("`st/%s.h5ad` obs column `%s` is replaced (hyperst's region/instance key).", name, column)
    adata.obs["spot_id"] = np.arange(n)
    adata.obs["region"] = pd.Categorical([name] * n)
    adata.obsm["spatial"] = xy
    diameter_px = diameter / mpp
    adata.uns["spatial"] = {
        name: {
            "scalefactors": {"microns_per_pixel": mpp, "spot_diameter_fullres": diameter_px},
            "metadata": {**_scalar_metadata(meta), "spot_diameter_um": diameter, "source": "HEST-1k"},
        }
    }

    stat = image.stat()
    full = image_element(
        image,
        name,
        name=f"hest-{name}-{tokenize(str(image.resolve()), stat.st_size, stat.st_mtime_ns)}",
        scale_factors="auto",
    )
    level0 = full["scale0"]["image"] if hasattr(full, "children") and "scale0" in full.children else full
    height, width = int(level0.sizes["y"]), int(level0.sizes["x"])
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    if outside.any():
        logger.warning(
            "%d of %d spots of HEST sample %s lie outside its image (%d x %d px).",
            int(outside.sum()),
            n,
            name,
            width,
            height,
        )
    circles = ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(n, diameter_px / 2),
        index=adata.obs["spot_id"].copy(),
        transformations={name: Identity()},
    )
    table = TableModel.parse(adata, region=name, region_key="region", instance_key="spot_id")
    return SpatialData(images={f"{name}_full_image": full}, shapes={name: circles}, tables={"table": table})
