"""``hyperst.datasets.her2st``: HER2-positive breast cancer sections on legacy Spatial Transcriptomics arrays.

Files are fetched with :mod:`pooch` from the authors' repository at a pinned commit, checked against pinned
SHA-256 checksums (:mod:`hyperst.datasets._registry`), and laid out per section as
:func:`spatialdata_io.visium` lays out a Visium sample. Legacy ST spots are 100 µm wide on a 200 µm square
grid; the pixel size is fitted from the spots' pixel positions against their array coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._constants import GRID_PITCH_UM, SPOT_DIAMETER_UM
from .._settings import settings
from .._validation import expected
from ._images import LazyPil as _LazyJpeg
from ._registry import (
    HER2ST_COMMIT,
    HER2ST_IMAGE_NAMES,
    HER2ST_SHA256,
    download_failed,
    her2st_files,
    her2st_registry,
    her2st_url,
    her2st_verified_sections,
)

if TYPE_CHECKING:
    import os

    from spatialdata import SpatialData

__all__ = ["her2st"]

logger = logging.getLogger(__name__)

_SOURCE = "https://github.com/almaan/her2st"
_CHUNK_PX = 256  # spatialdata's own chunking of parsed images, so no rechunk layer is added
#: Extra download attempts after a failure (network error or checksum mismatch).
_RETRIES = 2


def her2st(
    sections: str | Sequence[str] = ("C3",),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> SpatialData | list[SpatialData]:
    """Load sections of the HER2-positive breast cancer cohort HER2ST as spatialdata-io lays out a sample.

    The data are those of Andersson et al., *Nat. Commun.* 12, 6012 (2021); cite them when you use them.
    The counts, the spot file and the full-resolution H&E JPEG of each section are downloaded once from
    https://github.com/almaan/her2st at commit ``85df741`` and checked against pinned SHA-256 checksums; files
    already in the cache with the right checksum are used as they are. A cached file whose checksum does not
    match is downloaded again, and a download whose checksum does not match raises. The cache holds, per
    section ``S``::

        <cache_dir>/ST-cnts/<S>.tsv.gz             # spots x genes counts, index "<x>x<y>"
        <cache_dir>/ST-spotfiles/<S>_selection.tsv # array x, y, adjusted new_x, new_y, pixel_x, pixel_y, selected
        <cache_dir>/ST-imgs/<S>.jpg                # the H&E image, byte for byte as upstream

    Spots are those of the spot file with ``selected == 1`` that have counts, in the order of the counts file.
    Legacy ST spots are 100 µm wide on a 200 µm grid, so the pixel size is fitted from the spots: a
    least-squares line of pixel position against adjusted array coordinate gives pixels per 200 µm in x and
    y (about 290 px for patients B–H, about 0.688 µm/px; about 217 px for patient A).

    Parameters
    ----------
    sections
        One section name (``"A1"`` … ``"H3"``) or several. Only sections whose files have pinned checksums
        can be loaded; the error for any other lists them.
    cache_dir
        Where the files are stored; ``None`` uses ``hyperst.settings.cache_dir / "her2st"`` (which follows
        ``$HYPERST_DATA_DIR``).
    progress
        Show download progress bars; ``None`` follows ``hyperst.settings.progress_bar``.

    Returns
    -------
    A :class:`~spatialdata.SpatialData` for a single section name, a list of them (in the order given) for a
    sequence. For section ``S``, in coordinate system ``S`` (full-resolution image pixels):

    - ``images[f"{S}_full_image"]``: the ``(c, y, x)`` uint8 H&E image, multiscale (downsampled 2, 4 and 8
      times). It is read lazily: the JPEG is decoded on first pixel access (about 0.3 GB for a
      10,000 x 9,000 px section) and then kept with the element; write the slide to zarr with
      :meth:`~spatialdata.SpatialData.write` for chunked out-of-memory access;
    - ``shapes[S]``: the spot circles at ``(pixel_x, pixel_y)``, index ``spot_id``, ``radius`` 50 µm in pixels;
    - ``tables["table"]``: raw counts in ``X`` (CSR int32), ``obs_names`` ``f"{S}_{x}x{y}"``, ``var_names``
      gene symbols as upstream, annotating the circles through ``region``/``spot_id``. ``obs`` holds
      ``spot_id`` (int), ``in_tissue``, ``array_col``, ``array_row`` (upstream ``x``, ``y``),
      ``array_col_adj``, ``array_row_adj`` (upstream ``new_x``, ``new_y``), ``patient`` and ``region``;
      ``obsm["spatial"]`` the pixel ``(x, y)``; ``uns["spatial"][S]["scalefactors"]`` holds
      ``microns_per_pixel``, ``spot_diameter_fullres``, ``px_per_array_unit_x`` and ``px_per_array_unit_y``,
      and ``uns["spatial"][S]["metadata"]`` the source URLs and commit.

    Raises
    ------
    ValueError
        If a section is unknown or has no pinned checksum, or if a downloaded file's checksum does not match.
    ConnectionError
        If a file is neither in the cache nor downloadable; the message names the cache folder and the files that
        make the section load offline.

    Notes
    -----
    The repository has no licence file; HEST-1k lists the data as CC BY 4.0 (Zenodo record 4751624). Cite
    Andersson et al., *Nat. Commun.* 12, 6012 (2021), doi:10.1038/s41467-021-26271-2.

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.her2st("C3")  # doctest: +SKIP
    >>> sdata.tables["table"].n_obs  # doctest: +SKIP
    180
    """
    single = isinstance(sections, str)
    names = _check_sections([sections] if single else sections)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(settings.cache_dir) / "her2st"
    show = settings.progress_bar if progress is None else bool(progress)
    slides = [_section(name, _fetch(name, cache, progress=show)) for name in names]
    return slides[0] if single else slides


def _check_sections(sections: Any) -> list[str]:
    if isinstance(sections, str) or not isinstance(sections, Sequence) or not sections:
        raise ValueError(expected("sections", "a section name or a non-empty sequence of them", sections))
    available = her2st_verified_sections()
    unknown = [s for s in sections if s not in HER2ST_IMAGE_NAMES]
    if unknown:
        msg = (
            f"Unknown HER2ST section(s) {unknown!r}. HER2ST has sections {sorted(HER2ST_IMAGE_NAMES)}; "
            f"hyperst can load {available}."
        )
        raise ValueError(msg)
    unpinned = [s for s in sections if s not in available]
    if unpinned:
        msg = (
            f"HER2ST section(s) {unpinned!r} have no pinned SHA-256 checksum in hyperst, and hyperst never "
            f"downloads unchecked files. Available sections: {available}."
        )
        raise ValueError(msg)
    return list(sections)


def _fetch(section: str, cache: Path, *, progress: bool) -> dict[str, Path]:
    """Paths of a section's checked files, downloading those missing or whose checksum does not match."""
    import pooch

    registry, urls = her2st_registry()
    pup = pooch.create(path=cache, base_url="", registry=registry, urls=urls, retry_if_failed=_RETRIES)
    downloader = pooch.HTTPDownloader(progressbar=progress)
    files = her2st_files(section)
    out = {}
    for kind, fname in files.items():
        try:
            out[kind] = Path(pup.fetch(fname, downloader=downloader))
        except OSError as err:  # requests' connection errors are OSErrors; a checksum mismatch stays a ValueError
            raise download_failed(
                err, dataset=f"HER2ST section {section}", fname=fname, cache=cache, files=files.values()
            ) from err
    return out


def _read_spots(path: Path) -> pd.DataFrame:
    spots = pd.read_csv(path, sep="\t")
    spots = spots[spots["selected"] == 1]
    spots.index = pd.Index([f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)])
    return spots


def _fit_scale(spots: pd.DataFrame) -> tuple[float, float, float]:
    """Pixels per array unit in x and y (least squares over the spots) and the implied µm per pixel."""
    px_x = float(np.polyfit(spots["new_x"], spots["pixel_x"], 1)[0])
    px_y = float(np.polyfit(spots["new_y"], spots["pixel_y"], 1)[0])
    mpp = GRID_PITCH_UM["st"] / ((px_x + px_y) / 2)
    if not (np.isfinite(mpp) and mpp > 0):
        msg = f"Cannot fit the pixel size from {len(spots)} spots (found {px_x:.3g} x {px_y:.3g} px per unit)."
        raise ValueError(msg)
    return px_x, px_y, mpp


def _table(section: str, counts_path: Path, spots: pd.DataFrame) -> AnnData:
    counts = pd.read_csv(counts_path, sep="\t", index_col=0)
    keep = counts.index.isin(spots.index)
    if not keep.all():
        logger.debug("HER2ST %s: %d spots with counts are not selected; dropped.", section, int((~keep).sum()))
    counts = counts[keep]
    spots = spots.loc[counts.index]
    n = len(counts)
    obs = pd.DataFrame(
        {
            "spot_id": np.arange(n),
            "in_tissue": np.ones(n, dtype=np.int64),
            "array_col": spots["x"].to_numpy(dtype=np.int64),
            "array_row": spots["y"].to_numpy(dtype=np.int64),
            "array_col_adj": spots["new_x"].to_numpy(dtype=float),
            "array_row_adj": spots["new_y"].to_numpy(dtype=float),
            "patient": pd.Categorical([section[0]] * n),
            "region": pd.Categorical([section] * n),
        },
        index=pd.Index([f"{section}_{spot}" for spot in counts.index]),
    )
    x = sparse.csr_matrix(counts.to_numpy(dtype=np.int32))
    adata = AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(counts.columns.astype(str))))
    adata.obsm["spatial"] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    return adata


def _image(section: str, path: Path) -> Any:
    import dask.array as da
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    lazy = _LazyJpeg(path)
    chunks = (3, _CHUNK_PX, _CHUNK_PX)
    data = da.from_array(
        lazy,
        chunks=chunks,
        name=f"her2st-{section}-{HER2ST_SHA256[her2st_files(section)['image']][:16]}",
        meta=np.empty((0, 0, 0), np.uint8),
    )
    return Image2DModel.parse(
        DataArray(data, dims=("c", "y", "x")),
        scale_factors=[2, 2, 2],
        transformations={section: Identity()},
        rgb=None,
    )


def _section(section: str, paths: dict[str, Path]) -> SpatialData:
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    spots = _read_spots(paths["spots"])
    px_x, px_y, mpp = _fit_scale(spots)
    diameter_px = SPOT_DIAMETER_UM["st"] / mpp
    adata = _table(section, paths["counts"], spots)
    files = her2st_files(section)
    adata.uns["spatial"] = {
        section: {
            "scalefactors": {
                "microns_per_pixel": mpp,
                "spot_diameter_fullres": diameter_px,
                "px_per_array_unit_x": px_x,
                "px_per_array_unit_y": px_y,
            },
            "metadata": {
                "source": _SOURCE,
                "commit": HER2ST_COMMIT,
                "urls": {kind: her2st_url(fname) for kind, fname in files.items()},
                "technology": "Spatial Transcriptomics (legacy ST, 100 um spots, 200 um pitch)",
            },
        }
    }
    circles = ShapesModel.parse(
        adata.obsm["spatial"],
        geometry=0,
        radius=np.full(adata.n_obs, diameter_px / 2),
        index=adata.obs["spot_id"].copy(),
        transformations={section: Identity()},
    )
    table = TableModel.parse(adata, region=section, region_key="region", instance_key="spot_id")
    return SpatialData(
        images={f"{section}_full_image": _image(section, paths["image"])},
        shapes={section: circles},
        tables={"table": table},
    )
