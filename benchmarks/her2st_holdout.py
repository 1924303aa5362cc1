"""Fit on five HER2ST sections, predict the sixth; compare with a model fitted on spot-shuffled counts.

Prints a table and writes JSON (default ``benchmarks/results/her2st_holdout.json``)::

    python benchmarks/her2st_holdout.py --encoders squidpy resnet18

``resnet18`` runs with ``weights=None`` (random, offline); real users would pass ``weights="DEFAULT"``.
Target: log2(1 + counts) of the 50 HMHVG genes chosen on the training sections. The measured numbers depend on
the machine only through timings.
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

import hyperst as hst
from hyperst.tl._evaluate import gene_metrics

SECTIONS = ["B4", "C2", "C3", "C4", "C5", "C6"]


def _pcc(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return gene_metrics(truth, pred)["pearson"]


def _shuffled(sdata, seed: int):
    from spatialdata import SpatialData

    table = sdata.tables["table"].copy()
    table.X = table.X[np.random.default_rng(seed).permutation(table.n_obs)]
    return SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": table})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--encoders", nargs="+", default=["squidpy", "resnet18"])
    parser.add_argument("--test", default="C3")
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--cache", default="/tmp/hyperst_bench_cache")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "her2st_holdout.json"))
    args = parser.parse_args()
    from conftest import her2st_slide

    hst.settings.progress_bar = False
    slides = {s: her2st_slide(s, Path(args.data)) for s in SECTIONS}
    train = [slides[s] for s in SECTIONS if s != args.test]
    test = slides[args.test]
    rows = []
    for enc in args.encoders:
        kw = {
            "encoder": enc,
            "weights": None if enc != "squidpy" else "DEFAULT",
            "views": 8 if enc == "squidpy" else 1,
            "max_epochs": args.max_epochs,
            "batch_size": 64,
            "cache": args.cache,
            "random_state": 0,
        }
        cold = Path(args.cache)
        if cold.exists():
            import shutil

            shutil.rmtree(cold)
        t0 = time.perf_counter()
        model = hst.tl.fit(train, genes=args.genes, **kw)
        t_fit = time.perf_counter() - t0
        control = hst.tl.fit([_shuffled(s, i) for i, s in enumerate(train)], genes=model.genes, **kw)
        truth = np.log2(1 + test.tables["table"][:, model.genes].X.toarray())
        t0 = time.perf_counter()
        pred = hst.tl.predict(test, model, inplace=False, cache=False).X
        t_pred = time.perf_counter() - t0
        ctrl = hst.tl.predict(test, control, inplace=False, cache=args.cache).X
        p, c = _pcc(pred, truth), _pcc(ctrl, truth)
        rows.append(
            {
                "encoder": enc,
                "weights": kw["weights"],
                "fit_s": t_fit,
                "predict_s": t_pred,
                "train_spots": int(sum(len(s.tables["table"]) for s in train)),
                "test_spots": int(len(test.tables["table"])),
                "epochs": len(model.history),
                "best_epoch": model.training.best_epoch,
                "mean_pcc": float(np.nanmean(p)),
                "pcc_at_10": float(np.sort(np.nan_to_num(p, nan=-1))[::-1][:10].mean()),
                "control_mean_pcc": float(np.nanmean(c)),
                "curvature": model.curvature,
            }
        )
    print(f"held-out section {args.test}, {args.genes} HMHVG genes, log2(1 + counts)")
    print(f"{'encoder':<10}{'fit s':>8}{'pred s':>8}{'epochs':>8}{'mean PCC':>10}{'PCC@10':>8}{'shuffled':>10}")
    for r in rows:
        print(
            f"{r['encoder']:<10}{r['fit_s']:>8.0f}{r['predict_s']:>8.1f}{r['epochs']:>8}{r['mean_pcc']:>10.3f}"
            f"{r['pcc_at_10']:>8.3f}{r['control_mean_pcc']:>10.3f}"
        )
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "hyperst": hst.__version__,
        "test_section": args.test,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
