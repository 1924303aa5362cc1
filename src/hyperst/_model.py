"""``HyperST``: a trained model (config, torch module, genes, encoder and training records, history), and its files.

A model folder holds ``config.json`` (everything but tensors) and ``weights.safetensors`` (the module), plus
``encoder.safetensors`` when the image encoder cannot be rebuilt from its name (random, local-file, custom or
fine-tuned weights), and ``manifest.json``: the sha256 of each of those files and a digest of that list, so
that a change to any byte of any file is refused, naming the file. Loading never unpickles: safetensors only.

Format versions: 2 stores the typed :class:`~hyperst._records.EncoderRecord` and
:class:`~hyperst._records.TrainingRecord`; files of version 1 (hyperst before the records) are read through
:func:`_from_v1`, and predict the same numbers.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._config import HyperSTConfig
from ._model_files import (
    CONFIG,
    ENCODER,
    FORMAT,
    FORMAT_VERSION,
    RECOPY,
    WEIGHTS,
    check_manifest,
    check_unsigned,
    json_default,
    read_state,
    remove_path,
    replaceable,
    write_manifest,
)
from ._records import EncoderRecord, TrainingRecord
from ._utils import file_sha256, state_fingerprint
from ._version import __version__
from .nn import HyperSTModule

__all__ = ["FORMAT_VERSION", "HyperST"]

logger = logging.getLogger(__name__)


def _from_v1(meta: dict[str, Any]) -> dict[str, Any]:
    """Read ``config.json`` of format version 1: the encoder and training entries were untyped dicts.

    Version 1 wrote the encoder as the spec of :class:`hyperst.nn.EncoderSpec` (plus ``"lora"``), without a
    weights fingerprint, and the training dict with a subset of :class:`~hyperst._records.TrainingRecord`'s
    fields; both read as records with the missing fields unset. Nothing that predictions use changes.
    """
    out = dict(meta)
    out["encoder"] = {**meta.get("encoder", {}), "fingerprint": None, "weights_sha256": None}
    out["training"] = dict(meta.get("training", {}))
    out["format_version"] = 2
    logger.info(
        "Reading a model file of format version 1 (hyperst %s); `save` writes version %d",
        meta.get("hyperst_version", "?"),
        FORMAT_VERSION,
    )
    return out


#: Readers of older format versions, each returning the metadata in the next version's layout.
_MIGRATIONS = {1: _from_v1}


@dataclass
class HyperST:
    """A trained HyperST model.

    Create one with :func:`hyperst.tl.fit`, use it with :func:`hyperst.tl.predict`, store it with
    :meth:`save` and :meth:`load`.

    Attributes
    ----------
    module
        The pure-torch network (:class:`hyperst.nn.HyperSTModule`), reading image features.
    config
        The hyperparameters of the fit.
    genes
        Names of the predicted genes, in output order.
    encoder
        The image encoder: name, weights and their provenance, feature width, LoRA settings, and the weights
        stored with the model (:class:`~hyperst._records.EncoderRecord`).
    training
        What the model saw and what its fit decided: slides, spots, microns per pixel, patch sides, best epoch,
        validation metrics, calibration, QC reference (:class:`~hyperst._records.TrainingRecord`).
    history
        Per-epoch losses, curvature and scales of the held-out run.
    """

    module: HyperSTModule
    config: HyperSTConfig
    genes: list[str]
    encoder: EncoderRecord
    training: TrainingRecord = field(default_factory=TrainingRecord)
    history: list[dict[str, float]] = field(default_factory=list)

    def __repr__(self) -> str:
        curv = self.curvature
        return (
            f"HyperST({len(self.genes)} genes, encoder={self.encoder.name!r}, "
            f"embed_dim={self.config.module.embed_dim}, geometry={self.config.module.geometry!r}"
            + (f", curv={curv:.3g}" if curv is not None else "")
            + f", epochs={len(self.history)}"
            + (f", best_epoch={self.training.best_epoch}" if self.training.best_epoch >= 0 else "")
            + (f", refit_epochs={self.training.refit_epochs}" if self.training.refit_epochs is not None else "")
            + ")"
        )

    @property
    def curvature(self) -> float | None:
        """Learned curvature magnitude ``c`` (the space has curvature ``-c``), or ``None`` without one."""
        if not self.config.module.alignment or self.config.module.geometry != "lorentz":
            return None
        return float(self.module.curv.detach())

    @property
    def device(self) -> torch.device:
        """Device of the module's parameters."""
        return next(self.module.parameters()).device

    # ------------------------------------------------------------------ files
    def _metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hyperst_version": __version__,
            "config": self.config.to_dict(),
            "n_features": self.module.n_features,
            "genes": list(self.genes),
            "encoder": self.encoder.to_dict(),
            "training": self.training.to_dict(),
            "history": self.history,
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write the model to the folder ``path`` atomically.

        Everything is written to a temporary folder beside ``path`` and moved into place at the end, so a
        crash leaves any previous model at ``path`` intact.

        Parameters
        ----------
        path
            Target folder (created).
        overwrite
            Replace an existing model folder (an existing folder that holds something else is never replaced).

        Returns
        -------
        The folder written.

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is false, or ``path`` is neither empty nor a model folder.
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() or path.is_symlink():
            if not overwrite:
                msg = f"`{path}` exists. Pass `overwrite=True` or choose another folder."
                raise FileExistsError(msg)
            if not replaceable(path):
                msg = (
                    f"`{path}` is not a hyperst model folder (no `{CONFIG}` with `format: {FORMAT!r}`) and not "
                    "empty; it is left untouched. Choose another folder."
                )
                raise FileExistsError(msg)
        path.parent.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = path.with_name(f".{path.name}.tmp-{token}")
        tmp.mkdir()  # not mkdtemp: the folder keeps the user's umask (mkdtemp makes it private, 0o700)
        old = None
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS))
            meta = self._metadata()
            meta["weights_sha256"] = file_sha256(tmp / WEIGHTS)
            if self.encoder.state is not None:
                enc = {k: v.detach().cpu().contiguous() for k, v in self.encoder.state.items()}
                save_file(enc, str(tmp / ENCODER))
                meta["encoder_sha256"] = file_sha256(tmp / ENCODER)
            (tmp / CONFIG).write_text(json.dumps(meta, indent=1, default=json_default))
            write_manifest(tmp)
            if path.exists() or path.is_symlink():
                old = path.with_name(f".{path.name}.old-{token}")
                os.replace(path, old)
            os.replace(tmp, path)
        except BaseException:
            if old is not None and not (path.exists() or path.is_symlink()):
                os.replace(old, path)  # the new model never arrived: put the previous one back
                old = None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old is not None:
                remove_path(old)
        logger.info("Saved model to `%s`", path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, encoder: torch.nn.Module | None = None) -> HyperST:
        """Read a model folder written by :meth:`save`.

        Parameters
        ----------
        path
            The folder.
        encoder
            The image encoder module, for models trained with a custom ``nn.Module`` encoder.

        Returns
        -------
        The model, on CPU, in evaluation mode.

        Raises
        ------
        FileNotFoundError
            If ``path`` holds no model.
        ValueError
            If the files are corrupt, foreign, or from an incompatible hyperst version.
        """
        path = Path(path)
        cfg_file = path / CONFIG
        checked = check_manifest(path)  # sha256 by file name, or None without a manifest
        if not cfg_file.is_file():
            if not path.exists():
                why = "the folder does not exist"
            elif path.is_file():
                why = "it is a file, not a model folder"
            else:
                why = f"`{CONFIG}` not found"
            msg = f"No hyperst model at `{path}`: {why}. Pass the folder written by `HyperST.save` (with `{CONFIG}`)."
            raise FileNotFoundError(msg)
        try:
            meta = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            msg = f"`{cfg_file}` is not valid JSON ({err}); the model folder is corrupt. {RECOPY}"
            raise ValueError(msg) from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            msg = (
                f"`{cfg_file}` is not a hyperst model file (no `format: {FORMAT!r}`). Pass the folder written by "
                "`HyperST.save`."
            )
            raise ValueError(msg)
        version = meta.get("format_version")
        if checked is None:
            check_unsigned(path, version, meta.get("hyperst_version", "?"))
        while version in _MIGRATIONS:
            meta = _MIGRATIONS[version](meta)
            version = meta["format_version"]
        if version != FORMAT_VERSION:
            readable = ", ".join(str(v) for v in (*_MIGRATIONS, FORMAT_VERSION))
            msg = (
                f"The model at `{path}` was written by hyperst {meta.get('hyperst_version', '?')} in format "
                f"version {version!r}; this is hyperst {__version__}, which reads format versions {readable}. "
                "Load it with the hyperst version that wrote it."
            )
            raise ValueError(msg)
        try:
            config = HyperSTConfig.from_dict(meta["config"])
            genes = [str(g) for g in meta["genes"]]
            module = HyperSTModule(int(meta["n_features"]), len(genes), config.module)
            training = TrainingRecord.from_dict(meta.get("training", {}))
            encoder_data = dict(meta["encoder"])
        except (KeyError, TypeError, ValueError) as err:
            msg = f"`{cfg_file}` does not describe a valid model ({type(err).__name__}: {err}). {RECOPY}"
            raise ValueError(msg) from err
        state = read_state(path, WEIGHTS, meta.get("weights_sha256"), checked)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
            detail = " ".join(line.strip() for line in str(err).splitlines())  # one line, for the CLI
            msg = f"The weights in `{path}` do not fit the architecture described in `{CONFIG}` ({detail}). {RECOPY}"
            raise ValueError(msg) from err
        module.eval()
        # a recorded encoder file is required: without it a random-weight encoder would be silently redrawn
        has_encoder = meta.get("encoder_sha256") is not None or (path / ENCODER).exists()
        enc_state = read_state(path, ENCODER, meta.get("encoder_sha256"), checked) if has_encoder else None
        try:
            record = EncoderRecord.from_dict(encoder_data, state=enc_state, module=encoder)
        except (KeyError, TypeError, ValueError) as err:
            msg = f"`{cfg_file}` does not describe a valid encoder ({type(err).__name__}: {err}). {RECOPY}"
            raise ValueError(msg) from err
        return cls(
            module=module,
            config=config,
            genes=genes,
            encoder=record,
            training=training,
            history=meta.get("history", []),
        )

    def fingerprint(self) -> str:
        """Short sha256 of the module weights (provenance in ``uns``)."""
        return state_fingerprint(self.module.state_dict())
