"""Accuracy on HER2ST, leave one section out: HyperST, its ablations and baselines on the same features and genes.

For each held-out section, every method trains on the other sections and predicts the held-out one; all methods
see the same genes, the same frozen encoder features (one feature cache shared by every fit and baseline) and
the same target. Metrics come from ``hst.tl.evaluate`` (the paper's metrics) on the held-out section: mean PCC,
PCC@10/50/200, MSE and MAE; the table gives mean ± std over folds. One invocation is one
(encoder, genes, target) combination::

    python benchmarks/accuracy.py --encoder squidpy --genes hmhvg200 --target log2
    python benchmarks/accuracy.py --encoder squidpy --genes hist2st --target log2_cp10k
    python benchmarks/accuracy.py --encoder resnet18 --genes hmhvg200 --target log2_cp10k   # weights=None offline
    python benchmarks/accuracy.py --encoder mobilenet_v2 --weights ../shared/weights/mobilenet_v2-b0353104.pth \
        --genes hmhvg200 --target log2                        # ImageNet weights from a local file, offline
    python benchmarks/accuracy.py --folds C3 --genes hmhvg200 --target log2 --max-epochs 5  # smoke run
    python benchmarks/accuracy.py --genes hist2st --target log2_cp10k --fit monitor=mse embed_dim=256 \
        --out benchmarks/results/accuracy_squidpy_hist2st_log2_cp10k_wide.json   # options for every HyperST fit
    python benchmarks/accuracy.py --genes hmhvg200 --target log2 --methods ridge mlp bleep
    python benchmarks/accuracy.py --genes hmhvg200 --target log2 --methods hyperst --add   # into the same file

``--add`` adds the methods (and folds) it runs to the results already in the output file, which must have the
same settings; methods already there are not run again, and every command is kept in the file's ``commands``.

Methods (``--methods``):

- ``hyperst``: ``hst.tl.fit`` with defaults (plus any ``--fit`` options, which every HyperST method gets);
  ``no_entailment`` (``entailment=False``), ``no_alignment`` (``alignment=False``), ``euclidean``
  (``geometry="euclidean"``), ``spot_decoder`` (``decoder_input="spot"``); ``hyperst_blend``
  (``readout="blend"``: the decoder mixed with a ridge read-out, both fitted inside ``tl.fit``, the mix chosen
  on its validation section); ``hyperst_retrieval`` (an experiment, ``benchmarks/_retrieval.py``: the
  ``hyperst`` fit, its decoder mixed with the softmax(-distance x logit scale)-weighted mean expression of the
  50 training spots whose spot gene embeddings lie nearest the spot image embedding in the Lorentz space, the
  mix chosen on the validation section with the model trained before the refit).
- ``ridge``: ``RidgeCV`` (alphas 1e-2..1e5, one alpha for all genes, efficient leave-one-out) on standardised
  concat(spot, niche) view-0 features (the HEST-Benchmark protocol fits ridge on patch embeddings).
- ``mlp``: torch MLP 2F -> 256 -> G (ReLU, dropout 0.1), Adam 1e-3, weight decay 1e-4, batch 128, MSE.
- ``bleep``: BLEEP-style retrieval. Image projector (2F -> 256 -> 128) and gene projector (G -> 256 -> 128),
  L2-normalised, trained with symmetric CLIP InfoNCE (temperature 0.1, batch 128, Adam 1e-3); a test spot is
  predicted as the softmax(similarity / 0.1)-weighted mean expression of its 50 most similar training spots
  (image query against the training spots' gene embeddings).

Training budget: every trained method (HyperST variants, MLP, BLEEP) runs at most ``--max-epochs`` epochs with
early stopping (patience 10) on the same validation section that ``hst.tl.fit`` holds out from the training
sections, then, as ``tl.fit(refit=True)`` does, trains afresh on all training sections (validation included) for
the chosen number of epochs; ridge picks its alpha by leave-one-out on all training spots. Every method thus
learns from the same spots.
Like ``hst.tl.fit``, all methods train on spots with at least one count of the model genes and are evaluated on
every spot of the held-out section. ``--encoder`` is ``squidpy`` or any torchvision classification model
(``resnet18``, ``mobilenet_v2``…), with ``--weights`` ``None`` (the default: random, offline), a torchvision
weights name (``DEFAULT``, downloaded) or the path of a local state dict (its sha256 is stored in the results).
CNN features use 1 dihedral view (8 views of a CNN on CPU are slow), squidpy's use 8 (they are
rotation-invariant, so this costs nothing); ``--views N`` sets another count (the output file then ends in
``_views<N>``), e.g. ``--encoder mobilenet_v2 --views 8`` to measure what one view costs a CNN.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

import hyperst as hst

SECTIONS = ["B4", "C2", "C3", "C4", "C5", "C6"]
ABLATIONS = {
    "hyperst": {},
    "no_entailment": {"entailment": False},
    "no_alignment": {"alignment": False},
    "euclidean": {"geometry": "euclidean"},
    "spot_decoder": {"decoder_input": "spot"},
    "hyperst_blend": {"readout": "blend"},
}
BASELINES = ["ridge", "mlp", "bleep"]
METHODS = [*ABLATIONS, "hyperst_retrieval", *BASELINES]
METRICS = ["pcc_mean", "pcc_at_10", "pcc_at_50", "pcc_at_200", "mse", "mae"]
PATIENCE = 10


# ----------------------------------------------------------------------------------------------- data and features
def _slide_inputs(slides: dict, extractor, cfg, views: int, cache: str) -> dict:
    """SlideInput per section with view-0 features read from (or written to) the shared feature cache."""
    from hyperst.pp import niche_graph
    from hyperst.tl._prepare import load_slide, slide_features

    out = {}
    for name, sdata in slides.items():
        s = load_slide(sdata, table_key=None, image_key=None, shapes_key=None, microns_per_pixel=None)
        slide_features(s, extractor, cfg, views=views, batch_size=32, cache=cache)
        s.conn, _ = niche_graph(s.sdata, table_key=s.layout.elements.table_key, n_rings=cfg.n_rings, inplace=False)
        out[name] = s
    return out


def _xy(s, genes: list[str], cfg) -> tuple[np.ndarray, np.ndarray]:
    """concat(spot, niche) view-0 features and the target of one slide, exactly as ``tl.fit`` builds them."""
    from hyperst.tl._prepare import slide_gene_arrays

    x = np.concatenate([s.spot[:, 0], s.niche[:, 0]], axis=1)
    return x, slide_gene_arrays(s, genes, cfg, layer=None, connectivities=s.conn)[2]


def _val_names(train_names: list[str], cfg) -> set[str]:
    """The validation sections ``tl.fit`` holds out (same rule as ``hyperst.tl._fit_setup.split_slides``)."""
    rng = np.random.default_rng(cfg.random_state)
    n = len(train_names)
    n_val = min(max(1, round(cfg.val_fraction * n)), n - 1)
    return {train_names[i] for i in rng.permutation(n)[:n_val]}


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--fit``: the value as JSON (numbers, true/false, null) or else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"--fit expects KEY=VALUE, found {text!r}"
        raise ValueError(msg)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# ------------------------------------------------------------------------------------------------------- baselines
def _ridge(xtr, ytr, xte, seed):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))
    model.fit(xtr, ytr)
    return model.predict(xte), {"alpha": float(model[-1].alpha_)}


def _std(xtr):
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1.0
    return mu, sd


def _epochs(step, val_loss, params, max_epochs, *, fixed=False):
    """Run ``step()`` per epoch, early-stop on ``val_loss()``; restore the best parameters; return best epoch.

    ``fixed``: run all ``max_epochs`` and keep the last parameters (a refit with a chosen budget).
    """
    import copy

    if fixed:
        for _ in range(max_epochs):
            step()
        return max_epochs - 1, max_epochs
    best, best_state, best_epoch, bad = np.inf, None, 0, 0
    for epoch in range(max_epochs):
        step()
        loss = val_loss()
        if loss < best - 1e-6:
            best, best_state, best_epoch, bad = loss, copy.deepcopy(params.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= PATIENCE:
                break
    params.load_state_dict(best_state)
    return best_epoch, epoch + 1


def _mlp(xtr, ytr, xva, yva, xte, seed, max_epochs, *, fixed=False):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mu, sd = _std(xtr)
    t = lambda a: torch.from_numpy(((a - mu) / sd).astype(np.float32))  # noqa: E731
    xtr_t, xva_t, xte_t = t(xtr), t(xva), t(xte)
    ytr_t, yva_t = torch.from_numpy(ytr), torch.from_numpy(yva)
    net = nn.Sequential(nn.Linear(xtr.shape[1], 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, ytr.shape[1]))
    with torch.no_grad():
        net[-1].bias.copy_(ytr_t.mean(0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)

    def step():
        net.train()
        for idx in torch.randperm(len(xtr_t), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.mse_loss(net(xtr_t[idx]), ytr_t[idx]).backward()
            opt.step()

    def val_loss():
        net.eval()
        with torch.no_grad():
            return float(nn.functional.mse_loss(net(xva_t), yva_t))

    best_epoch, epochs = _epochs(step, val_loss, net, max_epochs, fixed=fixed)
    net.eval()
    with torch.no_grad():
        return net(xte_t).numpy(), {"best_epoch": best_epoch, "epochs": epochs}


def _bleep(xtr, ytr, xva, yva, xte, seed, max_epochs, *, fixed=False, k=50, tau=0.1):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mu, sd = _std(xtr)
    gmu, gsd = _std(ytr)
    t = lambda a: torch.from_numpy(((a - mu) / sd).astype(np.float32))  # noqa: E731
    g = lambda a: torch.from_numpy(((a - gmu) / gsd).astype(np.float32))  # noqa: E731
    xtr_t, xva_t, xte_t, gtr_t, gva_t = t(xtr), t(xva), t(xte), g(ytr), g(yva)

    def proj(n_in):
        return nn.Sequential(nn.Linear(n_in, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 128))

    net = nn.ModuleDict({"img": proj(xtr.shape[1]), "gene": proj(ytr.shape[1])})
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)

    def clip(xb, gb):
        zi = nn.functional.normalize(net["img"](xb), dim=1)
        zg = nn.functional.normalize(net["gene"](gb), dim=1)
        logits = zi @ zg.T / tau
        lab = torch.arange(len(xb))
        return (nn.functional.cross_entropy(logits, lab) + nn.functional.cross_entropy(logits.T, lab)) / 2

    def step():
        net.train()
        for idx in torch.randperm(len(xtr_t), generator=gen).split(128):
            if len(idx) < 2:
                continue
            opt.zero_grad()
            clip(xtr_t[idx], gtr_t[idx]).backward()
            opt.step()

    def val_loss():  # InfoNCE over validation batches of 128, as in training
        net.eval()
        with torch.no_grad():
            parts = [float(clip(xva_t[i : i + 128], gva_t[i : i + 128])) for i in range(0, len(xva_t) - 1, 128)]
        return float(np.mean(parts))

    best_epoch, epochs = _epochs(step, val_loss, net, max_epochs, fixed=fixed)
    net.eval()
    ref_y, ref_g = (ytr, gtr_t) if fixed else (np.concatenate([ytr, yva]), torch.cat([gtr_t, gva_t]))
    with torch.no_grad():
        zg = nn.functional.normalize(net["gene"](ref_g), dim=1)
        zi = nn.functional.normalize(net["img"](xte_t), dim=1)
        sim = zi @ zg.T
        top, idx = sim.topk(min(k, len(zg)), dim=1)
        w = torch.softmax(top / tau, dim=1).numpy()
    pred = (w[:, :, None] * ref_y[idx.numpy()]).sum(1)
    return pred, {"best_epoch": best_epoch, "epochs": epochs, "top_k": k, "temperature": tau}


def _hyperst_retrieval(fit_slides, genes, fit_kw, inputs, train, val, test, cfg, slides, args):
    """``hyperst_retrieval`` (``benchmarks/_retrieval.py``); its info also scores the decoder and retrieval alone."""
    from _retrieval import fit_keeping_runs, retrieval_fold

    from hyperst.tl._prepare import slide_gene_arrays

    runs = fit_keeping_runs(fit_slides, genes, fit_kw)
    decoder = hst.tl.predict(slides[test], runs[0], inplace=False, cache=args.cache).X
    data = {}
    for s in [*train, test]:
        gs, gn, y = slide_gene_arrays(inputs[s], genes, cfg, layer=None, connectivities=inputs[s].conn)
        x = np.concatenate([inputs[s].spot[:, 0], inputs[s].niche[:, 0]], axis=1)
        data[s] = {"x": x, "gs": gs, "gn": gn, "y": y, "keep": gs.sum(1) > 0}
    pred, retrieved, info = retrieval_fold(runs, data, train, val, test, decoder)
    for name, alone in (("decoder_only", decoder), ("retrieval_only", retrieved)):  # diagnostics, chosen from nothing
        info[name] = _metrics(slides[test], genes, np.asarray(alone), args.target)
    return pred, info


# --------------------------------------------------------------------------------------------------------- metrics
def _metrics(test_sdata, genes: list[str], pred: np.ndarray, target: str) -> dict[str, float]:
    """``hst.tl.evaluate`` on a copy of the held-out table with ``pred`` in a layer."""
    table = test_sdata.tables["table"].copy()
    full = np.full(table.shape, np.nan, dtype=np.float32)
    full[:, table.var_names.get_indexer(genes)] = pred
    table.layers["pred"] = full
    hst.tl.evaluate(table, layer="pred", genes=genes, target=target, key_added="bench")
    m = table.uns["bench"]["metrics"]
    return {k: float(m[k]["pooled"]) for k in METRICS}


#: Settings that must agree for ``--add`` to put two runs into one file.
_SAME = ("sections", "encoder", "weights", "weights_sha256", "genes", "target", "fit_options", "max_epochs", "seed")


def _earlier(out: Path, partial: Path, header: dict) -> dict:
    """Folds already in ``out`` (or in its partial file) by held-out section, and its commands (``_commands``)."""
    path = out if out.is_file() else partial
    if not path.is_file():
        return {"_commands": []}
    old = json.loads(path.read_text())
    # files from before `fit_options` was recorded had none
    differ = [k for k in _SAME if (old["settings"].get(k) or None) != (header["settings"][k] or None)]
    if differ:
        msg = f"--add: {path} was made with other settings ({differ}); pass another --out"
        raise SystemExit(msg)
    return {"_commands": old.get("commands", [old["command"]]), **{f["test"]: f for f in old["folds"]}}


def _genes(choice: str, slides: dict, train: list[str], data: Path) -> list[str]:
    if choice == "hist2st":
        ordered = [g.strip() for g in (data / "hist2st_genes.txt").read_text().split() if g.strip()]
        return [g for g in ordered if all(g in s.tables["table"].var_names for s in slides.values())]
    from hyperst._data._genes import select_hmhvg

    n = int(choice.removeprefix("hmhvg"))
    return select_hmhvg([slides[s].tables["table"] for s in train], n)


def _fmt(vals: list[float]) -> str:
    a = np.asarray(vals, dtype=float)
    return f"{a.mean():.3f}" if len(a) < 2 else f"{a.mean():.3f}±{a.std(ddof=1):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--sections", nargs="+", default=SECTIONS)
    parser.add_argument("--folds", nargs="+", default=None, help="held-out sections to run (default: all)")
    parser.add_argument("--encoder", default="squidpy", help="squidpy or a torchvision model, e.g. mobilenet_v2")
    parser.add_argument(
        "--weights", default=None, help="encoder weights: None (default, random), a weights name, or a local file"
    )
    parser.add_argument("--genes", default="hmhvg200", help="hist2st (785 genes) or hmhvg<N> (on training folds)")
    parser.add_argument("--target", default="log2", choices=["log2", "log2_cp10k"])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="/tmp/hyperst_accuracy_cache")
    parser.add_argument(
        "--fit",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options passed to every hst.tl.fit of the HyperST methods, e.g. monitor=mse embed_dim=256",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--add", action="store_true", help="add to the results in --out (same settings)")
    parser.add_argument(
        "--views", type=int, default=None, choices=[1, 2, 4, 8], help="dihedral views (default: 8 squidpy, 1 CNN)"
    )
    args = parser.parse_args()
    try:
        fit_options = dict(_option(o) for o in args.fit)
    except ValueError as err:
        parser.error(str(err))
    if args.genes != "hist2st" and not (args.genes.startswith("hmhvg") and args.genes[5:].isdigit()):
        parser.error("--genes must be hist2st or hmhvg<N>")
    weights = None if args.weights in (None, "None", "none") else args.weights
    default_views = 8 if args.encoder == "squidpy" else 1
    views = default_views if args.views is None else args.views
    suffix = "" if views == default_views else f"_views{views}"
    name = f"accuracy_{args.encoder}_{args.genes}_{args.target}{suffix}.json"
    out = Path(args.out or Path(__file__).with_name("results") / name)
    folds = args.folds or args.sections
    data = Path(args.data)

    import torch

    from conftest import her2st_slide
    from hyperst import HyperSTConfig
    from hyperst.tl._encoder import make_extractor

    hst.settings.progress_bar = False
    cfg = HyperSTConfig.build(None, views=views, target=args.target, max_epochs=args.max_epochs, random_state=args.seed)
    slides = {s: her2st_slide(s, data) for s in args.sections}
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # as tl.fit does: a random encoder (weights=None) gets the same weights, same cache
    extractor = make_extractor(args.encoder, weights=weights, device="cpu")
    inputs = _slide_inputs(slides, extractor, cfg, views, args.cache)
    t_features = time.perf_counter() - t0
    print(f"features: {extractor.n_features} per patch, {t_features:.0f} s (cached in {args.cache})", flush=True)

    fit_kw = {
        "encoder": args.encoder,
        "weights": weights,
        "views": views,
        "max_epochs": args.max_epochs,
        "cache": args.cache,
        "random_state": args.seed,
        "target": args.target,
        "accelerator": "cpu",
        **fit_options,
    }
    header = {
        "command": " ".join(["python", *sys.argv]),
        "settings": {
            "sections": args.sections,
            "folds": folds,
            "encoder": args.encoder,
            "weights": weights,
            "weights_sha256": extractor.record.weights_sha256,
            "views": views,
            "n_features": extractor.n_features,
            "genes": args.genes,
            "target": args.target,
            "methods": args.methods,
            "fit_options": fit_options,
            "max_epochs": args.max_epochs,
            "patience": PATIENCE,
            "seed": args.seed,
            "metrics": "hst.tl.evaluate on the held-out section (pooled over its spots); std over folds ddof=1",
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "hyperst": hst.__version__,
        "feature_seconds": t_features,
    }
    partial = out.with_name(out.stem + ".partial.json")
    earlier = _earlier(out, partial, header) if args.add else {}
    if args.add:
        header["commands"] = [*earlier.pop("_commands"), header["command"]]
        done = {m for f in earlier.values() for m in f["methods"]}
        header["settings"]["methods"] = [m for m in METHODS if m in done or m in args.methods]
    new_folds = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    for test in folds:
        train = [s for s in args.sections if s != test]
        genes = _genes(args.genes, slides, train, data)
        val = _val_names(train, cfg)
        fold = earlier.get(test) or {
            "test": test,
            "train": train,
            "validation": sorted(val),
            "n_genes": len(genes),
            "methods": {},
        }
        assert fold["n_genes"] == len(genes) and fold["validation"] == sorted(val), test
        fit_slides = [slides[s] for s in train]
        xs = {s: _xy(inputs[s], genes, cfg) for s in args.sections}
        keep = {s: xs[s][1].sum(1) > 0 for s in train}  # tl.fit skips spots without counts of the model genes
        xtr = np.concatenate([xs[s][0][keep[s]] for s in train if s not in val])
        ytr = np.concatenate([xs[s][1][keep[s]] for s in train if s not in val])
        xva = np.concatenate([xs[s][0][keep[s]] for s in train if s in val])
        yva = np.concatenate([xs[s][1][keep[s]] for s in train if s in val])
        xte = xs[test][0]
        for method in (m for m in args.methods if m not in fold["methods"]):
            t0 = time.perf_counter()
            info: dict = {}
            if method in ABLATIONS:
                model = hst.tl.fit(fit_slides, genes=genes, **{**fit_kw, **ABLATIONS[method]})
                pred = hst.tl.predict(slides[test], model, inplace=False, cache=args.cache).X
                assert list(model.training.validation_slides) == sorted(  # same val section as the baselines
                    inputs[s].name for s in val
                ), model.training.validation_slides
                info = {
                    "best_epoch": model.training.best_epoch,
                    "epochs": len(model.history),
                    "refit_epochs": model.training.refit_epochs,
                }
                if model.curvature is not None:
                    info["curvature"] = float(model.curvature)
                if hasattr(model.module, "readout_mix"):
                    info["decoder_share"] = float(model.module.readout_mix)
            elif method == "hyperst_retrieval":
                pred, info = _hyperst_retrieval(fit_slides, genes, fit_kw, inputs, train, val, test, cfg, slides, args)
            elif method == "ridge":
                pred, info = _ridge(np.concatenate([xtr, xva]), np.concatenate([ytr, yva]), xte, args.seed)
            else:  # like `tl.fit(refit=True)`: choose the epochs on the validation section, then refit on all
                fn = _mlp if method == "mlp" else _bleep
                pred, info = fn(xtr, ytr, xva, yva, xte, args.seed, args.max_epochs)
                xall, yall = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
                pred, _ = fn(xall, yall, xva, yva, xte, args.seed, info["best_epoch"] + 1, fixed=True)
                info["refit_epochs"] = info["best_epoch"] + 1
            seconds = time.perf_counter() - t0
            metrics = _metrics(slides[test], genes, np.asarray(pred), args.target)
            fold["methods"][method] = {**metrics, "seconds": seconds, **info}
            print(
                f"[{test}] {method:<14} mean PCC {metrics['pcc_mean']:.3f}  PCC@50 {metrics['pcc_at_50']:.3f}  "
                f"MSE {metrics['mse']:.3f}  {seconds:.0f} s",
                flush=True,
            )
        new_folds[test] = fold
        folds_out = [new_folds.get(s) or earlier[s] for s in args.sections if s in new_folds or s in earlier]
        partial.write_text(json.dumps({**header, "folds": folds_out}, indent=2))  # survives an interrupted run

    methods = header["settings"]["methods"]
    header["settings"]["folds"] = [f["test"] for f in folds_out]
    summary = {}
    for method in methods:
        rows = [f["methods"][method] for f in folds_out if method in f["methods"]]
        summary[method] = {
            "n_folds": len(rows),
            **{
                k: {
                    "mean": float(np.mean([r[k] for r in rows])),
                    "std": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else None,
                }
                for k in METRICS
            },
            "seconds_per_fold": float(np.mean([r["seconds"] for r in rows])),
        }
    print()
    print(
        f"HER2ST leave-one-section-out, held out {header['settings']['folds']}; encoder {args.encoder} "
        f"(weights={weights}); genes "
        f"{args.genes} ({folds_out[0]['n_genes']} in fold 1); target {args.target}; max epochs {args.max_epochs}; "
        "mean±std over folds"
    )
    head = f"{'method':<15}" + "".join(f"{k:>14}" for k in METRICS) + f"{'s/fold':>9}"
    print(head)
    for method in methods:
        rows = [f["methods"][method] for f in folds_out if method in f["methods"]]
        print(
            f"{method:<15}"
            + "".join(f"{_fmt([r[k] for r in rows]):>14}" for k in METRICS)
            + f"{summary[method]['seconds_per_fold']:>9.0f}"
        )
    result = {
        **header,
        "summary": summary,
        "folds": folds_out,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    partial.unlink(missing_ok=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
