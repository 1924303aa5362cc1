"""How far predictions can be trusted, leave one HER2ST section out: interval coverage and width, and whether a
per-spot score tracks the error.

For each held-out section, ``hst.tl.fit`` trains on the other five (its validation section calibrates the
intervals) and ``hst.tl.predict`` writes 90 % split-conformal intervals, plain and radius-normalised. On the
held-out section the script measures:

- empirical coverage: the share of (spot, gene) pairs whose measured value lies inside the interval;
- mean interval width (upper - lower), on the target scale;
- Spearman correlation, over spots, between a per-spot score and the spot's error (root mean squared error over
  the model's genes): the hyperbolic radius (``obs["hyperst_radius"]``), the feature distance to the training
  standardisation (RMS z-score, what the domain-shift check uses) and the negated mean predicted expression::

    python benchmarks/trust.py                          # squidpy features, 200 HMHVG genes, log2(1 + counts)
    python benchmarks/trust.py --target log2_cp10k
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import hyperst as hst

SECTIONS = ["B4", "C2", "C3", "C4", "C5", "C6"]
SCORES = ["radius", "feature_distance", "neg_mean_prediction"]


def _fold(slides: dict, test: str, args, cache: str) -> dict:
    import torch
    from scipy.stats import spearmanr

    from hyperst._data._genes import select_hmhvg
    from hyperst._data._target import measured_expression
    from hyperst.tl._encoder import make_extractor
    from hyperst.tl._features import extract_features
    from hyperst.tl._prepare import geometry_from, load_slide
    from hyperst.tl._trust import feature_distance

    train = [s for s in SECTIONS if s != test]
    genes = select_hmhvg([slides[s].tables["table"] for s in train], args.genes)
    kw = {"encoder": "squidpy", "views": 8, "cache": cache, "target": args.target, "accelerator": "cpu"}
    model = hst.tl.fit([slides[s] for s in train], genes=genes, random_state=args.seed, **kw)
    table = slides[test].tables["table"]
    cols = table.var_names.get_indexer(model.genes)
    measured = measured_expression(table, "table", None, args.target, cols)
    out: dict = {"test": test, "validation": model.training.validation_slides}
    for kind, normalised in (("plain", False), ("normalised", True)):
        res = hst.tl.predict(
            slides[test], model, inplace=False, cache=cache, coverage=args.coverage, normalised=normalised
        )
        lower, upper = res.layers["hyperst_lower"], res.layers["hyperst_upper"]
        out[kind] = {
            "coverage": float(((measured >= lower) & (measured <= upper)).mean()),
            "width": float((upper - lower).mean()),
        }
    pred = np.asarray(res.X)
    error = np.sqrt(((pred - measured) ** 2).mean(1))
    s = load_slide(slides[test], table_key=None, image_key=None, shapes_key=None, microns_per_pixel=None)
    spot, _ = extract_features(  # the cached features predict used (8 views; view 0 is the patch as is)
        s.sdata, s.layout, make_extractor("squidpy"), geometry=geometry_from(model.config), views=8, cache=cache
    )
    with torch.no_grad():
        fdist = feature_distance(model.module, spot[:, 0])
    scores = {
        "radius": res.obs["hyperst_radius"].to_numpy(),
        "feature_distance": fdist,
        "neg_mean_prediction": -pred.mean(1),
    }
    out["spearman_score_error"] = {k: float(spearmanr(v, error)[0]) for k, v in scores.items()}
    out["mean_pcc_validation"] = model.training.val_mean_pcc
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--target", default="log2", choices=["log2", "log2_cp10k"])
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="/tmp/hyperst_accuracy_cache")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or Path(__file__).with_name("results") / f"trust_squidpy_{args.target}.json")

    from conftest import her2st_slide

    hst.settings.progress_bar = False
    slides = {s: her2st_slide(s, Path(args.data)) for s in SECTIONS}
    t0 = time.perf_counter()
    folds = []
    for test in SECTIONS:
        fold = _fold(slides, test, args, args.cache)
        folds.append(fold)
        rho = " ".join(f"{k} {v:+.2f}" for k, v in fold["spearman_score_error"].items())
        print(
            f"[{test}] coverage plain {fold['plain']['coverage']:.3f} (width {fold['plain']['width']:.2f}), "
            f"normalised {fold['normalised']['coverage']:.3f} (width {fold['normalised']['width']:.2f}); "
            f"Spearman(score, error): {rho}",
            flush=True,
        )

    def stat(get) -> str:
        a = np.array([get(f) for f in folds])
        return f"{a.mean():.3f}±{a.std(ddof=1):.3f}"

    summary = {
        kind: {
            m: [float(np.mean([f[kind][m] for f in folds])), float(np.std([f[kind][m] for f in folds], ddof=1))]
            for m in ("coverage", "width")
        }
        for kind in ("plain", "normalised")
    }
    summary["spearman_score_error"] = {
        k: [
            float(np.mean([f["spearman_score_error"][k] for f in folds])),
            float(np.std([f["spearman_score_error"][k] for f in folds], ddof=1)),
        ]
        for k in SCORES
    }
    print(
        f"\nHER2ST leave-one-section-out (squidpy features, {args.genes} HMHVG genes, target {args.target}); "
        f"target coverage {args.coverage:.0%}; mean±std over 6 folds"
    )
    print(f"{'intervals':<12}{'coverage':>14}{'mean width':>14}")
    for kind in ("plain", "normalised"):
        print(f"{kind:<12}{stat(lambda f, k=kind: f[k]['coverage']):>14}{stat(lambda f, k=kind: f[k]['width']):>14}")
    print(f"\n{'score':<22}{'Spearman with per-spot error':>30}")
    for k in SCORES:
        print(f"{k:<22}{stat(lambda f, k=k: f['spearman_score_error'][k]):>30}")
    result = {
        "command": " ".join(["python", *sys.argv]),
        "settings": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "hyperst": hst.__version__,
        "seconds": time.perf_counter() - t0,
        "summary": summary,
        "folds": folds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
