"""``hyperst.datasets.visium_10x``: public 10x Genomics Visium H&E samples, or a local Space Ranger output folder.

Files are fetched with :mod:`pooch` from 10x's server (the scverse mirror if that fails), checked against pinned
SHA-256 checksums (:mod:`hyperst.datasets._registry_10x`), and read with :func:`spatialdata_io.visium`. The
full-resolution image is added by hyperst, read through tifffile's zarr store so that a crop reads only the
tiles or strips under it (spatialdata-io's own reader decodes a whole TIFF page at once).
"""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .._constants import SPOT_DIAMETER_UM
from .._settings import settings
from .._validation import expected, raise_collected
from ._images import image_element
from ._registry import download_failed
from ._registry_10x import (
    VISIUM_10X_HASH_SOURCE,
    VISIUM_10X_SAMPLES,
    VISIUM_10X_SHA256,
    visium_10x_files,
    visium_10x_registry,
    visium_10x_url,
    visium_10x_verified_samples,
)

if TYPE_CHECKING:
    import os

    from spatialdata import SpatialData

__all__ = ["visium_10x"]

logger = logging.getLogger(__name__)

#: Extra download attempts per source after a failure (network error or checksum mismatch).
_RETRIES = 2
#: File in the extracted ``spatial/`` folder recording the checksum of the archive it came from.
_EXTRACTED_FROM = ".hyperst_extracted_from"
_IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png")
_COUNTS_FILE = "filtered_feature_bc_matrix.h5"
_POSITIONS_FILES = ("tissue_positions.csv", "tissue_positions_list.csv")


def visium_10x(
    sample: str,
    *,
    path: str | os.PathLike[str] | None = None,
    fullres_image_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> SpatialData:
    """Load a 10x Genomics Visium H&E sample as :func:`spatialdata_io.visium` lays it out.

    Without ``path``, the sample's counts, spatial folder and full-resolution H&E image are downloaded once from
    10x's public dataset server (``https://cf.10xgenomics.com/samples/spatial-exp/``) and checked against pinned
    SHA-256 checksums; if 10x's server fails, the same files are fetched from the scverse mirror
    (``https://exampledata.scverse.org/squidpy/10x_genomics/``) against the same checksums. Files already in the
    cache with the right checksum are used as they are; a download whose checksum does not match raises. The
    cache holds, per sample ``S``::

        <cache_dir>/S/filtered_feature_bc_matrix.h5  # spots x genes counts, as 10x publishes them
        <cache_dir>/S/spatial.tar.gz                 # positions, scale factors, hires/lowres images
        <cache_dir>/S/spatial/                       # the archive, extracted
        <cache_dir>/S/image.tif                      # the full-resolution H&E image (image.jpg for some)

    Samples (human, H&E; 55 µm spots on a 100 µm hexagonal grid):

    - ``"V1_Human_Lymph_Node"``: lymph node, fresh frozen (Space Ranger 1.1.0);
    - ``"V1_Breast_Cancer_Block_A_Section_1"``: breast cancer, fresh frozen (1.1.0);
    - ``"Visium_FFPE_Human_Breast_Cancer"``: invasive ductal carcinoma, FFPE (1.3.0);
    - ``"Visium_FFPE_Human_Prostate_Cancer"``: prostate adenocarcinoma, FFPE (1.3.0);
    - ``"Visium_FFPE_Human_Normal_Prostate"``: listed but refused, as its image has no published checksum;
      download it yourself and pass ``path=``.

    Parameters
    ----------
    sample
        The sample name (above). With ``path``, any name: it becomes the ``dataset_id`` that names the elements.
    path
        An existing Space Ranger output folder (``filtered_feature_bc_matrix.h5``, possibly prefixed with the
        sample name, and ``spatial/``) to read instead of downloading anything.
    fullres_image_file
        With ``path``: the full-resolution H&E image, relative to ``path`` or absolute. ``None`` looks for
        ``image.<ext>`` or ``<sample>_image.<ext>`` (``tif``, ``tiff``, ``btf``, ``jpg``, ``jpeg``, ``png``) in
        ``path``.
    cache_dir
        Where downloaded files are stored; ``None`` uses ``hyperst.settings.cache_dir / "visium_10x"`` (which
        follows ``$HYPERST_DATA_DIR``).
    progress
        Show download progress bars; ``None`` follows ``hyperst.settings.progress_bar``.

    Returns
    -------
    The sample as :func:`spatialdata_io.visium` returns it with ``dataset_id=sample``, in coordinate system
    ``sample`` (full-resolution image pixels):

    - ``images[f"{sample}_full_image"]``: the ``(c, y, x)`` uint8 H&E image, multiscale (downsampled 2, 4, 8 and
      16 times), read lazily and chunk by chunk for TIFF (a JPEG is decoded on first pixel access);
    - ``images[f"{sample}_hires_image"]``, ``images[f"{sample}_lowres_image"]``: Space Ranger's downsampled images;
    - ``shapes[sample]``: the spot circles, ``radius`` half of ``spot_diameter_fullres``;
    - ``tables["table"]``: raw counts in ``X``, annotating the circles through ``region``/``spot_id``;
      ``uns["spatial"][sample]["scalefactors"]`` holds Space Ranger's scale factors and ``microns_per_pixel``
      (55 µm over the spot diameter in pixels), ``uns["spatial"][sample]["metadata"]`` the source URLs or path.

    Raises
    ------
    ValueError
        If the sample is unknown or has no pinned checksum, if a downloaded file's checksum does not match, or if
        a ``path`` folder lacks a file that the reader needs (the message lists every missing file).
    ConnectionError
        If a file is neither in the cache nor downloadable from either source; the message names the cache
        folder and the files that make the sample load offline.

    Notes
    -----
    10x Genomics publishes these datasets under the Creative Commons Attribution licence; cite 10x Genomics and the
    dataset page. The checksums come from squidpy's dataset registry (see :mod:`hyperst.datasets._registry_10x`).

    Examples
    --------
    >>> import hyperst as hst
    >>> sdata = hst.datasets.visium_10x("V1_Human_Lymph_Node")  # doctest: +SKIP
    >>> sdata.tables["table"].n_obs  # doctest: +SKIP
    4035
    >>> mine = hst.datasets.visium_10x("s1", path="spaceranger/outs", fullres_image_file="he.tif")  # doctest: +SKIP
    """
    if not isinstance(sample, str) or not sample:
        raise ValueError(expected("sample", "a non-empty sample name", sample))
    if path is not None:
        if cache_dir is not None:
            msg = "Pass either `path=` (a local Space Ranger folder) or `cache_dir=` (where downloads go), not both."
            raise ValueError(msg)
        folder = Path(path).expanduser()
        _check_folder(folder, sample)
        image = _local_image(folder, sample, fullres_image_file)
        return _read(folder, sample, image, {"source": str(folder.resolve()), "image": str(image.resolve())})
    if fullres_image_file is not None:
        msg = "`fullres_image_file=` names the image inside a local folder; pass it together with `path=`."
        raise ValueError(msg)
    _check_sample(sample)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(settings.cache_dir) / "visium_10x"
    show = settings.progress_bar if progress is None else bool(progress)
    paths = _fetch(sample, cache, progress=show)
    folder = paths["counts"].parent
    _extract_spatial(paths["spatial"], folder, VISIUM_10X_SHA256[visium_10x_files(sample)["spatial"]])
    files = visium_10x_files(sample)
    metadata = {
        "source": "10x Genomics",
        "space_ranger": VISIUM_10X_SAMPLES[sample][0],
        "urls": {kind: visium_10x_url(fname) for kind, fname in files.items()},
        "checksums": VISIUM_10X_HASH_SOURCE,
    }
    return _read(folder, sample, paths["image"], metadata)


def _check_sample(sample: str) -> None:
    available = visium_10x_verified_samples()
    if sample not in VISIUM_10X_SAMPLES:
        msg = (
            f"Unknown 10x Visium sample {sample!r}. hyperst can download {available}; for any other Space Ranger "
            "output, download it yourself and pass `path=`."
        )
        raise ValueError(msg)
    if sample not in available:
        missing = [f for f in visium_10x_files(sample).values() if f not in VISIUM_10X_SHA256]
        msg = (
            f"10x Visium sample {sample!r} has no pinned SHA-256 checksum for {missing}, and hyperst never downloads "
            f"unchecked files. Available samples: {available}. To use it anyway, download it from 10x yourself and "
            "pass `path=`."
        )
        raise ValueError(msg)


def _fetch(sample: str, cache: Path, *, progress: bool) -> dict[str, Path]:
    """Paths of a sample's checked files, downloading those missing or whose checksum does not match."""
    import pooch

    downloader = pooch.HTTPDownloader(progressbar=progress)
    pups = []
    for mirror in (False, True):
        registry, urls = visium_10x_registry(mirror=mirror)
        pups.append(pooch.create(path=cache, base_url="", registry=registry, urls=urls, retry_if_failed=_RETRIES))
    files = visium_10x_files(sample)
    out = {}
    for kind, fname in files.items():
        try:
            out[kind] = _fetch_one(pups, fname, downloader)
        except OSError as err:  # both sources failed to answer; a checksum mismatch stays a ValueError
            raise download_failed(
                err, dataset=f"10x Visium sample {sample}", fname=fname, cache=cache, files=files.values()
            ) from err
    return out


def _fetch_one(pups: list[Any], fname: str, downloader: Any) -> Path:
    """Fetch ``fname`` from the first source that serves it with the right checksum."""
    for i, pup in enumerate(pups):
        try:
            return Path(pup.fetch(fname, downloader=downloader))
        except (OSError, ValueError) as err:  # network errors (requests' are OSErrors) and checksum mismatches
            if i == len(pups) - 1:
                raise
            logger.warning("Could not fetch `%s` from %s (%s); trying the scverse mirror.", fname, pup.urls[fname], err)
    raise AssertionError  # pragma: no cover


def _extract_spatial(archive: Path, folder: Path, digest: str) -> None:
    """Extract the regular files of ``spatial.tar.gz`` into ``folder / "spatial"``, once per archive checksum."""
    target = folder / "spatial"
    marker = target / _EXTRACTED_FROM
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".")]
            if parts and parts[0] == "spatial":
                parts = parts[1:]
            if not parts or PurePosixPath(member.name).is_absolute() or ".." in parts:
                logger.warning("Skipping `%s` in `%s`: not a plain relative path.", member.name, archive.name)
                continue
            out = target.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is not None:
                out.write_bytes(source.read())
    marker.write_text(digest)


def _local_image(folder: Path, sample: str, fullres_image_file: str | os.PathLike[str] | None) -> Path:
    if fullres_image_file is not None:
        image = Path(fullres_image_file).expanduser()
        image = image if image.is_absolute() else folder / image
        if not image.is_file():
            msg = f"Full-resolution image `{image}` not found. Pass `fullres_image_file=` (relative to `path`)."
            raise ValueError(msg)
        return image
    names = [f"{stem}{ext}" for stem in ("image", f"{sample}_image") for ext in _IMAGE_SUFFIXES]
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        msg = (
            f"No full-resolution image found in `{folder}` (looked for {names}). Pass `fullres_image_file=`: the H&E "
            "image given to Space Ranger, relative to `path` or absolute."
        )
        raise ValueError(msg)
    if len(found) > 1:
        others = [f.name for f in found[1:]]
        logger.info("Using `%s` as the full-resolution image (also found %s).", found[0].name, others)
    return found[0]


def _check_folder(folder: Path, sample: str) -> None:
    if not folder.is_dir():
        msg = f"Space Ranger folder `{folder}` not found. Pass `path=` the folder with `{_COUNTS_FILE}` and `spatial/`."
        raise ValueError(msg)
    problems = []
    if not any(folder.glob(f"*{_COUNTS_FILE}")):
        problems.append(f"no `{_COUNTS_FILE}` (or `{sample}_{_COUNTS_FILE}`): the filtered counts Space Ranger writes")
    spatial = folder / "spatial"
    if not (spatial / "scalefactors_json.json").is_file():
        problems.append("no `spatial/scalefactors_json.json`: extract `<sample>_spatial.tar.gz` into the folder")
    if not any((spatial / name).is_file() for name in _POSITIONS_FILES):
        problems.append(f"no `spatial/{_POSITIONS_FILES[0]}` or `spatial/{_POSITIONS_FILES[1]}`: the spot positions")
    raise_collected(problems, f"Space Ranger folder `{folder}`")


def _read(folder: Path, sample: str, image: Path, metadata: dict[str, Any]) -> SpatialData:
    import spatialdata_io
    from dask.base import tokenize

    sdata = spatialdata_io.visium(folder, dataset_id=sample, fullres_image_file=None)
    stat = image.stat()
    name = f"visium10x-{sample}-{tokenize(str(image.resolve()), stat.st_size, stat.st_mtime_ns)}"
    sdata.images[f"{sample}_full_image"] = image_element(image, sample, name=name, scale_factors=[2, 2, 2, 2])

    table = sdata.tables["table"]
    scalefactors = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    scalefactors["microns_per_pixel"] = SPOT_DIAMETER_UM["visium"] / float(scalefactors["spot_diameter_fullres"])
    spatial = table.uns.setdefault("spatial", {}).setdefault(sample, {})
    spatial["scalefactors"] = scalefactors
    spatial.setdefault("metadata", {}).update(metadata)
    return sdata
