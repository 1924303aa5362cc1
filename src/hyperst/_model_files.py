"""The files of a model folder: names, the manifest that covers every byte of them, safe reading and writing.

``manifest.json`` lists the sha256 of ``config.json``, ``weights.safetensors`` and (when present)
``encoder.safetensors``, with a digest of that list. :func:`check_manifest` refuses a folder in which any listed
file is missing or changed, naming the file; folders saved before the manifest (format version 1) are read with a
warning that changes to their ``config.json`` cannot be detected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._utils import file_sha256

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONFIG",
    "ENCODER",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "RECOPY",
    "WEIGHTS",
    "check_manifest",
    "check_unsigned",
    "json_default",
    "read_state",
    "remove_path",
    "replaceable",
    "write_manifest",
]

logger = logging.getLogger(__name__)

FORMAT = "hyperst-model"
FORMAT_VERSION = 2
CONFIG, WEIGHTS, ENCODER, MANIFEST = "config.json", "weights.safetensors", "encoder.safetensors", "manifest.json"
MANIFEST_FORMAT = "hyperst-model-manifest"
#: Fix-it sentence for a damaged model folder.
RECOPY = "Copy the model folder again from where it was saved, or save the model again with `HyperST.save`."


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write ``manifest.json``: the sha256 of every file of a model folder, and a digest of that list."""
    folder = Path(folder)
    names = [n for n in (CONFIG, WEIGHTS, ENCODER) if (folder / n).exists()]
    files = {n: file_sha256(folder / n) for n in names}
    manifest = {"format": MANIFEST_FORMAT, "files": files, "digest": _digest(files)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folder / MANIFEST


def check_manifest(path: Path) -> dict[str, str] | None:
    """Check every file of ``path`` against its ``manifest.json``; return the checked sha256 by file name.

    ``None`` if there is no manifest.

    A listed file that is missing or changed is refused, naming it. Files the manifest does not list are never
    read, and are named in a warning. A listed file may be a symbolic link (as git-annex or DVC leave them):
    its content is what is checked.
    """
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
        files = dict(manifest["files"])
        ok = manifest.get("format") == MANIFEST_FORMAT and manifest.get("digest") == _digest(files)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        msg = f"`{file}` is damaged or was modified (its digest does not match its list of files). {RECOPY}"
        raise ValueError(msg)
    for name, sha in files.items():
        listed = path / name
        if not listed.is_file():
            msg = f"`{name}` not found in `{path}`, but `{MANIFEST}` lists it as part of the model. {RECOPY}"
            raise FileNotFoundError(msg)
        if file_sha256(listed) != sha:
            msg = (
                f"`{name}` in `{path}` does not match its sha256 in `{MANIFEST}`: the file was modified or "
                f"damaged after the model was saved, and is refused. {RECOPY}"
            )
            raise ValueError(msg)
    extra = sorted(p.name for p in path.iterdir() if p.name not in files and p.name != MANIFEST)
    if extra:
        logger.warning("`%s` also holds %s, which are not part of the model and are not read", path, extra)
    return files


def check_unsigned(path: Path, version: Any, written_by: str) -> None:
    """Refuse a current-format folder without its manifest; read an older one with a warning."""
    if isinstance(version, int) and version >= FORMAT_VERSION:
        msg = f"`{path / MANIFEST}` not found: the model folder is incomplete. {RECOPY}"
        raise FileNotFoundError(msg)
    logger.warning(
        "The model at `%s` was saved by hyperst %s without a manifest: changes to `%s` cannot be detected. "
        "Save it again (`HyperST.load(path).save(path)`) to add one.",
        path,
        written_by,
        CONFIG,
    )


def replaceable(path: Path) -> bool:
    """Whether ``save`` may replace ``path``: an empty folder or a hyperst model folder."""
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        meta = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def read_state(
    path: Path, name: str, expected_sha: str | None, checked: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Read ``name`` of ``path``, refusing it unless its sha256 is ``expected_sha`` (when given).

    ``checked`` holds sha256 digests already computed (by :func:`check_manifest`), so a large file is hashed once.
    """
    file = path / name
    if file.exists():
        actual = (checked or {}).get(name) if expected_sha is not None else None
        if expected_sha is not None and (actual or file_sha256(file)) != expected_sha:
            msg = f"`{file}` does not match the checksum in `{CONFIG}`: the file is truncated or was modified. {RECOPY}"
            raise ValueError(msg)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            msg = f"`{file}` is not a readable safetensors file ({err}). {RECOPY}"
            raise ValueError(msg) from err
    msg = f"No weights in `{path}`: `{name}` not found. {RECOPY}"
    raise FileNotFoundError(msg)


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    msg = f"Cannot store {type(obj).__name__} in config.json"
    raise TypeError(msg)
