"""Why hyperst's training defaults differ from the authors': each change measured, leave one HER2ST section out.

Runs ``hst.tl.fit`` with the authors' settings and then with hyperst's changes added one at a time, on the same
squidpy features, genes and target as ``benchmarks/accuracy.py``, and prints mean PCC and PCC@50 over the six
folds next to ridge on the same features::

    python benchmarks/training_choices.py                      # HMHVG 200, log2(1 + counts)
    python benchmarks/training_choices.py --target log2_cp10k
    python benchmarks/training_choices.py --target log2_cp10k --variants 3 5   # defaults vs a stronger entailment
    python benchmarks/training_choices.py --genes hist2st --target log2_cp10k --variants 3 7   # early stopping on MSE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A

import hyperst as hst

VARIANTS = {
    "authors (lr 1e-4, decoder LayerNorm, no refit)": {"lr": 1e-4, "decoder_norm": True, "refit": False},
    "lr 1e-3": {"lr": 1e-3, "decoder_norm": True, "refit": False},
    "lr 1e-3, no decoder LayerNorm": {"lr": 1e-3, "decoder_norm": False, "refit": False},
    "lr 1e-3, no decoder LayerNorm, refit (defaults)": {},
    "defaults + weight decay 0.1": {"weight_decay": 0.1},
    "defaults + entailment x5 (entail_weight 2.0)": {"entail_weight": 2.0},
    "defaults + alignment /4 (alignment_weight 0.05)": {"alignment_weight": 0.05},
    "defaults + early stopping on validation MSE": {"monitor": "mse"},
    "early stopping on MSE + embedding 256": {"monitor": "mse", "embed_dim": 256},
    "early stopping on MSE + alignment /4": {"monitor": "mse", "alignment_weight": 0.05},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--target", default="log2", choices=["log2", "log2_cp10k"])
    parser.add_argument("--genes", default="hmhvg200")
    parser.add_argument("--cache", default="/tmp/hyperst_accuracy_cache")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--variants",
        nargs="+",
        type=int,
        default=None,
        help="indices of the variants to run (default: all): "
        + "; ".join(f"{i} = {name}" for i, name in enumerate(VARIANTS)),
    )
    args = parser.parse_args()
    names = list(VARIANTS) if args.variants is None else [list(VARIANTS)[i] for i in args.variants]
    variants = {name: VARIANTS[name] for name in names}
    out = Path(args.out or Path(__file__).with_name("results") / f"training_choices_{args.target}.json")

    from conftest import her2st_slide
    from hyperst import HyperSTConfig
    from hyperst.tl._encoder import make_extractor

    hst.settings.progress_bar = False
    cfg = HyperSTConfig.build(None, views=8, target=args.target)
    data = Path(args.data)
    slides = {s: her2st_slide(s, data) for s in A.SECTIONS}
    inputs = A._slide_inputs(slides, make_extractor("squidpy"), cfg, 8, args.cache)
    rows: dict[str, list[dict]] = {}
    for test in A.SECTIONS:
        train = [s for s in A.SECTIONS if s != test]
        genes = A._genes(args.genes, slides, train, data)
        xs = {s: A._xy(inputs[s], genes, cfg) for s in A.SECTIONS}
        keep = {s: xs[s][1].sum(1) > 0 for s in train}
        xtr = np.concatenate([xs[s][0][keep[s]] for s in train])
        ytr = np.concatenate([xs[s][1][keep[s]] for s in train])
        pred, _ = A._ridge(xtr, ytr, xs[test][0], 0)
        rows.setdefault("ridge (same features)", []).append(A._metrics(slides[test], genes, pred, args.target))
        for name, kw in variants.items():
            model = hst.tl.fit(
                [slides[s] for s in train],
                genes=genes,
                encoder="squidpy",
                views=8,
                cache=args.cache,
                target=args.target,
                accelerator="cpu",
                **kw,
            )
            pred = hst.tl.predict(slides[test], model, inplace=False, cache=args.cache, coverage=None).X
            metrics = A._metrics(slides[test], genes, np.asarray(pred), args.target)
            rows.setdefault(name, []).append({**metrics, "best_epoch": model.training.best_epoch})
        print(test, " | ".join(f"{k[:24]} {v[-1]['pcc_mean']:.3f}" for k, v in rows.items()), flush=True)
    print(f"\nHER2ST leave-one-section-out, squidpy features, {args.genes}, target {args.target}; mean over 6 folds")
    print(f"{'variant':<52}{'mean PCC':>10}{'PCC@50':>10}")
    summary = {}
    for name, r in rows.items():
        summary[name] = {k: float(np.mean([x[k] for x in r])) for k in ("pcc_mean", "pcc_at_50")}
        print(f"{name:<52}{summary[name]['pcc_mean']:>10.3f}{summary[name]['pcc_at_50']:>10.3f}")
    result = {
        "command": " ".join(["python", *sys.argv]),
        "settings": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "variants": variants,
        "summary": summary,
        "folds": {name: r for name, r in rows.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
