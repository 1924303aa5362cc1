"""``hyperst_retrieval`` of ``accuracy.py``: the decoder blended with retrieval in the aligned Lorentz space.

An experiment, not a package option. HyperST is fitted exactly as the ``hyperst`` method fits it (``hst.tl.fit``
with defaults and ``refit=True``); the held-out run (trained on the training sections minus the validation one,
epochs chosen on the validation one) and the refit are both kept, by wrapping ``train_and_refit`` for the call.

Retrieval: a query spot's *image* embedding (spot stream, view-0 features) is compared with the *gene*
embeddings (spot stream) of reference spots by Lorentz geodesic distance; the ``TOP_K`` nearest are weighted by
``softmax(-distance * logit_scale)`` (the model's learned contrastive logit scale, so the weights are the
contrastive loss's own) and their targets averaged. Prediction = ``w * decoder + (1 - w) * retrieved``.

``w`` is chosen with the held-out run only: queries = the validation section's spots, references = the spots
of the other training sections (what that run trained on), lowest validation MSE over ``MIXES`` (0..1 step
0.05, ties to the decoder: ``hyperst.tl._readout``'s rule for ``readout="blend"``). The final prediction uses
the refit (the model ``tl.fit`` returns) with all training spots (validation section included: what the refit
trained on) as references and the same ``w``. The held-out section enters no choice. ``TOP_K`` and the weighting
were fixed before any held-out score was seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hyperst.nn import HyperSTModule

#: Reference spots averaged per query (as the BLEEP baseline).
TOP_K = 50


def fit_keeping_runs(fit_slides: list, genes: list[str], fit_kw: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``hst.tl.fit(fit_slides, genes=genes, **fit_kw)`` and its held-out run and refit (``TrainedRun``)."""
    import hyperst as hst
    import hyperst.tl._fit as fit_module

    original = fit_module.train_and_refit
    kept: dict[str, Any] = {}

    def keeping(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        kept["run"], kept["refit"] = original(*args, **kwargs)
        return kept["run"], kept["refit"]

    fit_module.train_and_refit = keeping
    try:
        model = hst.tl.fit(fit_slides, genes=genes, **fit_kw)
    finally:
        fit_module.train_and_refit = original
    return model, kept["run"], kept["refit"]


def _streams(module: HyperSTModule, x: np.ndarray, gene: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """Spot-stream space components (image, and gene when ``gene`` is given) and the decoder, by batches."""
    import torch

    n_feat = module.n_features
    module = module.cpu().eval()
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for i in range(0, len(x), 512):
            t = torch.from_numpy(np.ascontiguousarray(x[i : i + 512], dtype=np.float32))
            g = () if gene is None else tuple(torch.from_numpy(a[i : i + 512].astype(np.float32)) for a in gene)
            out = module(t[:, :n_feat], t[:, n_feat:], *g)
            out["decoder"] = module.predict(t[:, :n_feat], t[:, n_feat:])
            for k in ("spot_image", "spot_gene", "decoder"):
                if k in out:
                    parts.setdefault(k, []).append(out[k].float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def retrieve(module: HyperSTModule, query: np.ndarray, ref: np.ndarray, ref_y: np.ndarray) -> np.ndarray:
    """Softmax(-distance x logit scale)-weighted mean target of each query's ``TOP_K`` nearest references."""
    import torch

    from hyperst.lorentz import pairwise_dist

    with torch.inference_mode():
        curv, scale = module.curv.detach().double(), module.logit_scale.detach().double()
        d = pairwise_dist(torch.from_numpy(query).double(), torch.from_numpy(ref).double(), curv)
        top, idx = (-d).topk(min(TOP_K, len(ref)), dim=1)
        w = torch.softmax(top * scale, dim=1).numpy()
    return (w[:, :, None] * ref_y[idx.numpy()]).sum(1)


def _spots(sections: list[str], data: dict) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Features, gene inputs and targets of the sections' spots with counts (the spots ``tl.fit`` uses)."""
    x, gs, gn, y = (np.concatenate([data[s][k][data[s]["keep"]] for s in sections]) for k in ("x", "gs", "gn", "y"))
    return x, (gs, gn), y


def retrieval_fold(
    model_runs: tuple[Any, Any, Any],
    data: dict[str, dict[str, np.ndarray]],
    train: list[str],
    val: set[str],
    test: str,
    decoder_test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Blend of the decoder and retrieval for the held-out section; also the retrieval alone, and what was chosen.

    ``data[section]``: ``x`` (concat spot, niche view-0 features), ``gs``/``gn`` (spot and niche gene inputs),
    ``y`` (target), ``keep`` (spots with counts). ``decoder_test``: the returned model's prediction of ``test``
    (``hst.tl.predict``, as the ``hyperst`` method scores it).
    """
    from hyperst.tl._evaluate import gene_pearson
    from hyperst.tl._readout import _choose_mix

    model, run, refit = model_runs
    if refit is None or run.validation is None:
        msg = "hyperst_retrieval needs the held-out run and its refit (a validation section and refit=True)"
        raise ValueError(msg)
    select_ref = [s for s in train if s not in val]
    x_ref, g_ref, y_ref = _spots(select_ref, data)
    x_val, _, y_val = _spots(sorted(val), data)
    ref = _streams(run.module, x_ref, g_ref)["spot_gene"]
    out_val = _streams(run.module, x_val, None)
    # the validation spots and the decoder's predictions of them are tl.fit's (it keeps their per-gene PCC)
    pcc = gene_pearson(y_val, out_val["decoder"])
    assert np.allclose(pcc, run.validation.pcc, atol=1e-4, equal_nan=True), "validation differs from tl.fit's"
    retr_val = retrieve(run.module, out_val["spot_image"], ref, y_ref)
    w = _choose_mix(out_val["decoder"], retr_val, y_val)
    mse = lambda p: float(np.mean((p - y_val) ** 2))  # noqa: E731

    x_all, g_all, y_all = _spots(train, data)
    ref_all = _streams(model.module, x_all, g_all)["spot_gene"]
    query = _streams(model.module, data[test]["x"], None)["spot_image"]
    retr_test = retrieve(model.module, query, ref_all, y_all)
    info = {
        "retrieval_decoder_share": w,
        "top_k": TOP_K,
        "n_reference_select": len(x_ref),
        "n_reference_final": len(x_all),
        "logit_scale_select": float(run.module.logit_scale),
        "logit_scale_final": float(model.module.logit_scale),
        "curvature_select": float(run.module.curv),
        "curvature": float(model.module.curv),
        "val_mse_decoder": mse(out_val["decoder"]),
        "val_mse_retrieval": mse(retr_val),
        "val_mse_blend": mse(w * out_val["decoder"] + (1 - w) * retr_val),
        "best_epoch": model.training.best_epoch,
        "epochs": len(model.history),
        "refit_epochs": model.training.refit_epochs,
    }
    return w * decoder_test + (1 - w) * retr_test, retr_test, info
