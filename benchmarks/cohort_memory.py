"""Peak memory of ``hst.tl.fit`` on cohorts of 10, 40 and 160 slides: training streams from the feature caches.

Prints a table and writes JSON (default ``benchmarks/results/cohort_memory.json``)::

    nice -n 10 python benchmarks/cohort_memory.py                       # 10, 40, 160 slides of 2,000 spots
    nice -n 10 python benchmarks/cohort_memory.py --baseline /tmp/hyperst_old/src --baseline-slides 10 40
    nice -n 10 python benchmarks/cohort_memory.py --quick                # 4 and 8 slides of 300 spots
    nice -n 10 python benchmarks/cohort_memory.py --repeats 3 --baseline /tmp/base/src --baseline-label "0d151d2"

Slides: ``hst.datasets.synthetic`` at 10 µm/px (small images), ``--templates`` of them made and the rest copied
from those with their pixels changed (so every slide has its own fingerprint, hence its own feature cache),
all written to zarr under ``--data`` and read back lazily, as slides on disk are. Features: the caches are
written directly (random float32, 8 views of the 55 squidpy features), at the paths
:func:`hyperst.tl._features.extract_features` looks them up, so ``fit(encoder="squidpy")`` reads them through
the real cache path and computes none. Everything under ``--data`` is reused by later runs.

Each cohort is fitted in a fresh subprocess (``max_epochs=1`` and the refit epoch, 1 torch thread): the
resident set after the slides are read (``loaded``), the peak resident set of the process (``peak``, from
``getrusage``), and their difference (``fit``: what ``fit`` itself adds; the libraries ``fit`` imports on first
use are imported before ``loaded``). ``--baseline SRC`` fits with another
checkout's ``src`` (the code before streaming) on ``--baseline-slides`` cohorts, in the same run.
``hyperst.settings.feature_cache_mb`` is ``--cache-mb`` (default 32, below the features of the smallest
cohort, so that every cohort streams).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = {
    "genes": 50,
    "encoder": "squidpy",
    "max_epochs": 1,
    "batch_size": 256,
    "embed_dim": 32,
    "random_state": 0,
}

_WORKER = r"""
import gc, json, resource, sys, time
import torch
torch.set_num_threads(1)
import spatialdata
import hyperst as hst

paths, cache, cache_mb, fit_kw = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
hst.settings.progress_bar = False
hst.settings.verbosity = "warning"
if hasattr(hst.settings, "feature_cache_mb"):
    hst.settings.feature_cache_mb = cache_mb

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))

slides = [spatialdata.read_zarr(p) for p in paths]
import lightning.pytorch, scanpy, squidpy  # what fit imports on first use: not counted as fit's memory
gc.collect()
loaded = rss()
t0 = time.perf_counter()
model = hst.tl.fit(slides, cache=cache, **fit_kw)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"loaded_mib": loaded, "peak_mib": peak, "seconds": seconds,
                  "best_epoch": model.training.best_epoch, "n_spots": sum(model.training.n_spots.values())}))
"""


def _machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(int(mem) / 2**20, 1),
        "python": sys.version.split()[0],
    }


def _perturb(path: Path, k: int) -> None:
    """Change every pixel of every image of the slide at ``path`` (XOR ``k``), in place."""
    import zarr

    for level in sorted(p for p in (path / "images").rglob("zarr.json") if p.parent.name.isdigit()):
        a = zarr.open_array(str(level.parent), mode="r+")
        a[:] = a[:] ^ (k % 255 + 1)


def make_slides(data: Path, n: int, n_spots: int, templates: int) -> list[Path]:
    """Write (or find) ``n`` distinct slides of ``n_spots`` spots under ``data``."""
    import hyperst as hst

    out = [data / f"slides-{n_spots}" / f"slide{i:03d}.zarr" for i in range(n)]
    missing = [i for i, p in enumerate(out) if not (p / "zarr.json").exists()]
    if not missing:
        return out
    base = data / f"slides-{n_spots}" / "templates"
    made = [base / f"t{t}.zarr" for t in range(templates)]
    if not all((p / "zarr.json").exists() for p in made):
        slides = hst.datasets.synthetic(n_slides=templates, n_spots=n_spots, n_genes=60, microns_per_pixel=10.0, seed=0)
        for s, p in zip(slides, made, strict=True):
            for key in [k for k in s.images if not k.endswith("_full_image")]:  # at 10 µm/px all are full size
                del s.images[key]
            shutil.rmtree(p, ignore_errors=True)
            s.write(p)
    for i in missing:
        shutil.rmtree(out[i], ignore_errors=True)
        shutil.copytree(made[i % templates], out[i])
        if i >= templates:
            _perturb(out[i], i // templates)
    return out


def write_caches(paths: list[Path], cache: Path, seed: int = 0) -> None:
    """Write random feature caches of every slide where ``fit(encoder="squidpy")`` looks them up."""
    import numpy as np
    import spatialdata

    import hyperst as hst
    from hyperst._data import PatchReader
    from hyperst.tl._encoder import make_extractor
    from hyperst.tl._features import _cache_path, _is_complete, _write
    from hyperst.tl._prepare import geometry_from, load_slide

    cfg = hst.HyperSTConfig.build(None, **{k: v for k, v in FIT.items() if k not in ("genes", "encoder")})
    extractor, geometry = make_extractor("squidpy", weights=None, device="cpu"), geometry_from(cfg)
    rng = np.random.default_rng(seed)
    for p in paths:
        slide = load_slide(
            spatialdata.read_zarr(p), table_key=None, image_key=None, shapes_key=None, microns_per_pixel=None
        )
        reader = PatchReader(slide.sdata, slide.layout, geometry)
        target = _cache_path(cache, reader, extractor, cfg.views)
        if _is_complete(target):
            continue
        shape = (len(reader), cfg.views, extractor.n_features)
        spot = rng.standard_normal(shape, dtype=np.float32)
        niche = rng.standard_normal(shape, dtype=np.float32)
        _write(target, spot, niche, extractor, cfg.views)


def measure(paths: list[Path], cache: Path, cache_mb: int, src: Path, fit_kw: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "HYPERST_DATA_DIR": str(cache.parent)}
    cmd = [sys.executable, "-c", _WORKER, ",".join(map(str, paths)), str(cache), str(cache_mb), json.dumps(fit_kw)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["fit_mib"] = row["peak_mib"] - row["loaded_mib"]
    return row


def _median_row(tries: list[dict]) -> dict:
    """One row from repeated fits: the median of each memory and time figure (a fit's RSS varies by ~20 MiB)."""
    import numpy as np

    out = dict(tries[0])
    for key in ("loaded_mib", "peak_mib", "fit_mib", "seconds"):
        out[key] = float(np.median([t[key] for t in tries]))
    return out


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="zarr v3 autosharding")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[10, 40, 160])
    parser.add_argument("--spots", type=int, default=2000)
    parser.add_argument("--templates", type=int, default=10)
    parser.add_argument("--cache-mb", type=int, default=32)
    parser.add_argument("--data", type=Path, default=Path("/tmp/hyperst_cohort_memory"))
    parser.add_argument("--baseline", type=Path, default=None, help="`src` of a checkout to compare with")
    parser.add_argument("--baseline-slides", type=int, nargs="+", default=[10, 40, 160])
    parser.add_argument("--baseline-label", default="in memory (baseline)", help="the baseline's rows in the table")
    parser.add_argument("--quick", action="store_true", help="4 and 8 slides of 300 spots")
    parser.add_argument("--repeats", type=int, default=1, help="fits per cohort; the table shows their median")
    parser.add_argument(
        "--gene-list", action="store_true", help="pass the first 50 genes by name (no HMHVG selection over the cohort)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cohort_memory.json")
    args = parser.parse_args()
    if args.quick:
        args.slides, args.spots, args.templates, args.cache_mb = [4, 8], 300, 2, 1
        args.baseline_slides = [4, 8]
        args.out = args.out.with_name("cohort_memory_quick.json")
    cache = args.data / "features"
    t0 = time.perf_counter()
    paths = make_slides(args.data, max(args.slides), args.spots, args.templates)
    write_caches(paths, cache)
    setup_s = time.perf_counter() - t0
    fit_kw = dict(FIT)
    if args.gene_list:
        import spatialdata

        fit_kw["genes"] = [str(g) for g in spatialdata.read_zarr(paths[0]).tables["table"].var_names[: FIT["genes"]]]
        args.out = args.out.with_name(args.out.stem + "_gene_list.json")
    runs = [("streaming", ROOT / "src", n) for n in args.slides]
    if args.baseline is not None:
        runs += [(args.baseline_label, args.baseline, n) for n in args.baseline_slides]
    rows = []
    print(f"{'code':<22}{'slides':>7}{'spots':>9}{'loaded MiB':>12}{'peak MiB':>10}{'fit MiB':>9}{'s':>8}")
    for code, src, n in runs:
        tries = [measure(paths[:n], cache, args.cache_mb, src, fit_kw) for _ in range(args.repeats)]
        row = {"code": code, "slides": n, **_median_row(tries)}
        if args.repeats > 1:
            row["repeats"] = {k: [t[k] for t in tries] for k in ("loaded_mib", "peak_mib", "fit_mib", "seconds")}
        rows.append(row)
        print(
            f"{code:<22}{n:>7}{row['n_spots']:>9}{row['loaded_mib']:>12.0f}{row['peak_mib']:>10.0f}"
            f"{row['fit_mib']:>9.0f}{row['seconds']:>8.0f}",
            flush=True,
        )
    stream = [r for r in rows if r["code"] == "streaming"]
    result = {
        "machine": _machine(),
        "spots_per_slide": args.spots,
        "feature_cache_mb": args.cache_mb,
        "fit": {**fit_kw, "genes": fit_kw["genes"] if isinstance(fit_kw["genes"], int) else "list of 50"},
        "setup_seconds": round(setup_s, 1),
        "repeats": args.repeats,
        "rows": rows,
        "peak_ratio_largest_to_smallest": stream[-1]["peak_mib"] / stream[0]["peak_mib"],
        "fit_ratio_largest_to_smallest": stream[-1]["fit_mib"] / max(1.0, stream[0]["fit_mib"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"peak {result['peak_ratio_largest_to_smallest']:.2f}x, fit {result['fit_ratio_largest_to_smallest']:.2f}x "
        f"from {stream[0]['slides']} to {stream[-1]['slides']} slides"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
