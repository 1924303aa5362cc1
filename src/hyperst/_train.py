"""The one training loop, on PyTorch Lightning: AdamW, validation by slide, early stopping, best weights."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ._settings import settings
from ._utils import quiet_loggers, quiet_third_party

if TYPE_CHECKING:
    from ._config import HyperSTConfig
    from ._data._dataset import ViewDataset
    from .nn import HyperSTModule, ImageEncoder

__all__ = ["TrainerSettings", "train"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerSettings:
    """How and where training runs, built once by :func:`hyperst.tl.fit` (the Lightning ``Trainer`` settings).

    Attributes
    ----------
    accelerator, devices, num_nodes, strategy
        Passed to :class:`lightning.pytorch.Trainer`.
    precision
        Passed to the Trainer; ``None``: 16-bit mixed on a GPU, 32-bit on CPU.
    checkpoint_dir
        Folder of this run's checkpoints (``last.ckpt``, then ``done.*``), or ``None``.
    resume
        Continue from ``checkpoint_dir``.
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False

    @property
    def device(self) -> str:
        """Where work outside the Trainer (feature extraction, LoRA statistics) runs: ``"cuda"`` or ``"cpu"``."""
        gpu = self.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return "cuda" if gpu else "cpu"

    @property
    def resolved_precision(self) -> str:
        """The precision the Trainer gets."""
        if self.precision is not None:
            return self.precision
        return "16-mixed" if self.device == "cuda" else "32-true"

    def in_folder(self, name: str) -> TrainerSettings:
        """Return these settings with checkpoints in ``checkpoint_dir.parent / name`` (one folder per run)."""
        if self.checkpoint_dir is None:
            return self
        return replace(self, checkpoint_dir=self.checkpoint_dir.parent / name)


class _LitHyperST(L.LightningModule):
    """Train a :class:`HyperSTModule` on batches of precomputed image features."""

    def __init__(self, module: HyperSTModule, config: HyperSTConfig) -> None:
        super().__init__()
        self.module = module
        self.cfg = config

    def _features(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Spot and niche image features, gene inputs and target of a batch."""
        return batch

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copy (on CPU) of every weight that training changes."""
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`snapshot`."""
        self.module.load_state_dict(state)

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> torch.Tensor:
        spot, niche, spot_gene, niche_gene, target = self._features(batch)
        out = self.module(spot, niche, spot_gene, niche_gene)
        loss = self.module.loss(out, target)
        bs = len(target)
        self.log(
            f"{stage}_loss",
            loss.total,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=bs,
            sync_dist=True,
        )
        for name, value in loss.terms.items():
            self.log(f"{stage}_{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss.total

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise FloatingPointError(_diverged("training", loss.item(), self.current_epoch))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.module.clamp_parameters_()

    def on_train_epoch_start(self) -> None:
        self.trainer.train_dataloader.dataset.set_epoch(self.current_epoch)  # a ViewDataset

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]  # the module's, then a LoRA encoder's
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)


class _LitFinetune(_LitHyperST):
    """Train a :class:`HyperSTModule` together with the LoRA adapters of the image encoder, on uint8 patches.

    Batches hold ``(B, 3, P, P)`` spot and niche patches instead of features; the encoder (shared by spot and
    niche, as in the paper) runs on both in one pass. Only its trainable parameters (the adapters) are
    optimised and snapshotted; its batch-norm layers stay in eval mode (:meth:`ImageEncoder.train`).
    """

    def __init__(self, module: HyperSTModule, config: HyperSTConfig, encoder: ImageEncoder) -> None:
        super().__init__(module, config)
        self.encoder = encoder

    def _features(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        spot_px, niche_px, *rest = batch
        feats = self.encoder(torch.cat([spot_px, niche_px])).float()
        return (feats[: len(spot_px)], feats[len(spot_px) :], *rest)

    def _trainable(self) -> list[str]:
        return [n for n, p in self.encoder.named_parameters() if p.requires_grad]

    def snapshot(self) -> dict[str, torch.Tensor]:
        params = dict(self.encoder.named_parameters())
        encoder = {f"encoder.{n}": params[n].detach().cpu().clone() for n in self._trainable()}
        return {**super().snapshot(), **encoder}

    @torch.no_grad()
    def restore(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.encoder.named_parameters())
        for name in self._trainable():
            params[name].copy_(state[f"encoder.{name}"])
        super().restore({k: v for k, v in state.items() if not k.startswith("encoder.")})


def _diverged(loss: str, value: float, epoch: int) -> str:
    return (
        f"The {loss} loss became {value} at epoch {epoch}. Likely causes: a learning rate too high for this "
        "encoder (try `lr=1e-5`), non-finite features or counts, or fp16 overflow (try `precision='32-true'`)."
    )


class _Recorder(L.Callback):
    """Keep the per-epoch metrics and the weights of the best (or, with ``keep_last``, the last) epoch in memory."""

    def __init__(self, monitor: str, *, keep_last: bool = False, spool: Path | None = None) -> None:
        self.monitor = monitor
        self.keep_last = keep_last
        self.spool = spool
        self._pid = os.getpid()
        self.history: list[dict[str, float]] = []
        self.best = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        row = {"epoch": trainer.current_epoch, **metrics}
        self.history.append(row)
        value = metrics.get(self.monitor, math.inf)
        if value < self.best or self.keep_last:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.best_state = pl_module.snapshot()

    def state_dict(self) -> dict[str, Any]:
        """Return what a checkpoint must hold to resume: the history so far and the best weights."""
        return {
            "history": self.history,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (when resuming from a checkpoint)."""
        self.history = list(state_dict["history"])
        self.best, self.best_epoch = float(state_dict["best"]), int(state_dict["best_epoch"])
        self.best_state = state_dict["best_state"]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # restore here too, inside the worker, so that strategies that train in spawned or forked processes
        # ("ddp_spawn", "ddp_notebook") hand the best weights, not the last ones, back to the main process
        if self.best_state is not None:
            pl_module.restore(self.best_state)
        if self.spool is not None and os.getpid() != self._pid and trainer.is_global_zero:
            # a forked or spawned process ("ddp_notebook", "ddp_spawn"): Lightning returns its weights to the
            # main process, not this callback's record, so rank 0 writes the record for `take_spool`
            meta = {"history": self.history, "best": self.best, "best_epoch": self.best_epoch}
            self.spool.write_text(json.dumps(meta))

    def take_spool(self) -> None:
        """Take the history and best epoch written by the training process, when training ran in another one."""
        if self.history or self.spool is None or not self.spool.is_file():
            return
        meta = json.loads(self.spool.read_text())
        self.history, self.best, self.best_epoch = meta["history"], float(meta["best"]), int(meta["best_epoch"])


_DONE_JSON, _DONE_WEIGHTS = "done.json", "done.safetensors"


def _save_done(lit: _LitHyperST, checkpoint_dir: Path, recorder: _Recorder) -> None:
    from safetensors.torch import save_file

    save_file(lit.snapshot(), checkpoint_dir / _DONE_WEIGHTS)
    meta = {"history": recorder.history, "best_epoch": recorder.best_epoch, "best": recorder.best}
    (checkpoint_dir / _DONE_JSON).write_text(json.dumps(meta))


def _load_done(
    lit: _LitHyperST, checkpoint_dir: Path, module: HyperSTModule, encoder: ImageEncoder | None
) -> tuple[list[dict[str, float]], int]:
    from safetensors.torch import load_file

    lit.restore(load_file(checkpoint_dir / _DONE_WEIGHTS))
    meta = json.loads((checkpoint_dir / _DONE_JSON).read_text())
    module.cpu().eval()
    if encoder is not None:
        encoder.cpu().eval()
    logger.info("Reusing the finished training run in `%s`", checkpoint_dir)
    return meta["history"], int(meta["best_epoch"])


def _loader(ds: Dataset, cfg: HyperSTConfig, *, train: bool, world_size: int = 1) -> DataLoader:
    """Batches of ``ds``: shuffled for training, by the dataset's chunk-aware sampler when it has one.

    Under DDP each of the ``world_size`` processes gets its share of the spots, so the batch is at most that
    share: a batch larger than a process's share, with ``drop_last``, would drop every batch and train nothing.
    """
    gen = torch.Generator().manual_seed(cfg.random_state)
    share = -(-len(ds) // max(1, world_size))
    bs = min(cfg.batch_size, share)
    sampler = ds.sampler() if train and hasattr(ds, "sampler") else None
    return DataLoader(
        ds,
        batch_size=bs,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and share > bs,
        generator=gen,
        num_workers=settings.num_workers,
    )


def train(
    module: HyperSTModule,
    train_data: ViewDataset,
    val_data: ViewDataset | None,
    config: HyperSTConfig,
    trainer_settings: TrainerSettings,
    *,
    encoder: ImageEncoder | None = None,
    keep_last: bool = False,
) -> tuple[list[dict[str, float]], int]:
    """Train ``module`` in place and restore the weights of the best epoch (``keep_last``: of the last one).

    Without ``encoder``, the datasets hold precomputed features (:class:`~hyperst._data._dataset.FeatureDataset`).
    With a LoRA-adapted ``encoder``, they hold patches (:class:`~hyperst._data._dataset.PatchDataset`), and the
    encoder's adapters are trained (and restored) too.

    With ``trainer_settings.checkpoint_dir``, ``last.ckpt`` there is rewritten after every epoch and, once
    training ends, the final weights and history are written as ``done.safetensors`` and ``done.json``.
    ``resume=True`` returns a finished run from those, or continues an interrupted one from ``last.ckpt``
    (loaded with ``weights_only=True``: tensors and plain containers only).

    Returns
    -------
    The per-epoch history and the best epoch.
    """
    checkpoint_dir, resume = trainer_settings.checkpoint_dir, trainer_settings.resume
    lit = _LitHyperST(module, config) if encoder is None else _LitFinetune(module, config, encoder)
    if resume and checkpoint_dir is not None and (checkpoint_dir / _DONE_JSON).is_file():
        return _load_done(lit, checkpoint_dir, module, encoder)
    last = checkpoint_dir / "last.ckpt" if checkpoint_dir is not None else None
    ckpt_path = str(last) if resume and last is not None and last.is_file() else None
    if ckpt_path is not None:
        logger.info("Resuming training from `%s`", ckpt_path)
    with quiet_loggers("lightning.pytorch", "lightning.fabric", "lightning", level=logging.ERROR):
        L.seed_everything(config.random_state, workers=True, verbose=False)
        monitor = f"{'val' if val_data is not None else 'train'}_{config.monitor}"
        spool = Path(tempfile.mkdtemp(prefix="hyperst-recorder-")) / "record.json"
        recorder = _Recorder(monitor, keep_last=keep_last, spool=spool)
        callbacks: list[L.Callback] = [recorder]
        if not keep_last:  # a fixed budget of epochs (a refit) runs to its end
            callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor, patience=config.patience, mode="min"))
        if checkpoint_dir is not None:
            callbacks.append(
                L.pytorch.callbacks.ModelCheckpoint(  # one file, `last.ckpt`, rewritten every epoch
                    dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
                )
            )
        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        trainer = L.Trainer(
            accelerator=trainer_settings.accelerator,
            devices=trainer_settings.devices,
            num_nodes=trainer_settings.num_nodes,
            strategy=trainer_settings.strategy,
            precision=trainer_settings.resolved_precision,
            max_epochs=config.max_epochs,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=checkpoint_dir is not None,
            enable_model_summary=False,
            enable_progress_bar=settings.progress_bar,
            num_sanity_val_steps=0,
            deterministic="warn",
            log_every_n_steps=1,
        )
        val_loader = _loader(val_data, config, train=False) if val_data is not None else None
        # Lightning keeps modules in the mode it finds them: training mode here, except the batch-norm (and any
        # frozen) layers of an encoder, which `ImageEncoder.train` keeps in eval mode on purpose
        lit.train()
        with quiet_third_party(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
            if encoder is not None:
                warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            try:
                trainer.fit(
                    lit,
                    _loader(train_data, config, train=True, world_size=trainer.world_size),
                    val_loader,
                    ckpt_path=ckpt_path,
                    weights_only=True,
                )
                recorder.take_spool()
            finally:
                shutil.rmtree(spool.parent, ignore_errors=True)
    if recorder.best_epoch < 0 and recorder.history:  # early stopping ends a fit whose monitor is never finite
        stage = "validation" if monitor.startswith("val_") else "training"
        raise FloatingPointError(_diverged(stage, recorder.history[-1].get(monitor, math.nan), 0))
    if recorder.best_state is not None:
        lit.restore(recorder.best_state)
    if checkpoint_dir is not None:
        _save_done(lit, checkpoint_dir, recorder)
    module.cpu().eval()
    if encoder is not None:
        encoder.cpu().eval()
    logger.info(
        "Trained %d epochs; best epoch %d (%s %.4f)", len(recorder.history), recorder.best_epoch, monitor, recorder.best
    )
    return recorder.history, recorder.best_epoch
