"""Speed and memory on synthetic slides of growing size: patches, features, bare encoder, fit, predict.

Prints a table and writes JSON (default ``benchmarks/results/speed.json``)::

    python benchmarks/speed.py --sizes 1000 4000 16000 --encoder resnet18
    python benchmarks/speed.py --sizes 1000 4000 16000 --encoder squidpy --memory-only   # peak memory only
    python benchmarks/speed.py --sizes 1000 4000 16000 --encoder squidpy --no-memory     # all but peak memory

For each size (one synthetic Visium slide, 1 µm/px) and each encoder, measured in one run on one machine:

- ``patch``: spots/s of reading both patches (spot + niche) resized to 224 px, no encoder;
- ``pipeline``: spots/s of :func:`hyperst.tl.extract_features` (patches + encoder, no cache), ``--views`` views;
- ``forward``: spots/s of the encoder alone on the same batches, patches already in memory (the first
  ``--forward-spots`` spots); ``forward / pipeline`` is the data pipeline's overhead;
- ``epoch``: seconds per epoch of :func:`hyperst.tl.fit` on cached features, ``(t(E) - t(1)) / (E - 1)`` from two
  warm fits of 1 and ``--epochs`` epochs (``patience`` larger than the epochs, so none stops early);
- ``predict``: spots/s of :func:`hyperst.tl.predict` with the features cached and without a cache;
- ``peak``: memory of feature extraction and of predict (no cache), measured in a fresh subprocess per size on
  the slide written to zarr and read back lazily (as a slide on disk is read): the rise of the resident set
  (``VmHWM`` reset through ``/proc/self/clear_refs``, else ``ru_maxrss``) and the ``tracemalloc`` peak
  (numpy/Python allocations only; torch's allocator is not traced).

``--stand-in R ...`` adds the feed test of ``benchmarks/patches.py``: the pipeline with a stand-in encoder that
takes exactly ``1 / R`` s per spot and releases the GIL (as a GPU does), with ``read_workers`` 1 and all CPUs.

Growth is reported as ratios between consecutive sizes: time ratios (``t(4k)/t(1k)``; 4.0 is linear) and
memory ratios. ``resnet18`` runs with ``weights=None`` (random, offline). ``--views 1`` by default: a default
``hst.tl.fit`` caches 8 dihedral views, 8x the feature cost of a CNN encoder (``squidpy`` features are
view-invariant and computed once).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _measure import measure_memory

import hyperst as hst


def _slide(n_spots: int):
    return hst.datasets.synthetic(n_slides=1, n_spots=n_spots, n_genes=300, microns_per_pixel=1.0, seed=0)[0]


def _prepare(sdata, encoder: str):
    import torch

    from hyperst._data import slide_layout
    from hyperst.tl._encoder import make_extractor

    torch.manual_seed(0)  # as `hst.tl.fit(random_state=0)`, so its cache key matches
    extractor = make_extractor(encoder, weights=None)
    return slide_layout(sdata), extractor


def _geometry():
    from hyperst import HyperSTConfig
    from hyperst.tl._prepare import geometry_from

    return geometry_from(HyperSTConfig())


def _extract(sdata, layout, extractor, views: int, batch_size: int, cache):
    from hyperst.tl._features import extract_features

    return extract_features(
        sdata, layout, extractor, geometry=_geometry(), views=views, batch_size=batch_size, cache=cache
    )


def _fit(sdata, encoder: str, epochs: int, views: int, batch_size: int, cache: Path):
    return hst.tl.fit(
        sdata,
        genes=50,
        encoder=encoder,
        weights=None,
        views=views,
        max_epochs=epochs,
        patience=epochs + 10,
        cache=str(cache),
        feature_batch_size=batch_size,
        accelerator="cpu",
        random_state=0,
    )


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _measure_memory(fn) -> dict:
    """Run ``fn()``; return the rise of the resident set and the tracemalloc peak, in bytes."""
    return measure_memory(fn)[0]


def _memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: peak memory of feature extraction, then of predict (no cache), for one size.

    The slide is read from the zarr store the parent wrote, so its image is read lazily, tile by tile, as a
    user's slide on disk is: the rise of the resident set is what hyperst holds, not the image.
    """
    import spatialdata as sd

    hst.settings.progress_bar = False
    sdata = sd.read_zarr(args.child_store)
    layout, extractor = _prepare(sdata, args.child_encoder)
    out = {"features": _measure_memory(lambda: _extract(sdata, layout, extractor, args.views, args.batch_size, False))}
    model = hst.HyperST.load(args.child_model)
    t0 = time.perf_counter()
    out["predict"] = _measure_memory(
        lambda: hst.tl.predict(sdata, model, inplace=False, batch_size=args.batch_size, cache=False)
    )
    out["predict"]["seconds"] = time.perf_counter() - t0
    print("MEMORY_JSON " + json.dumps(out))


def _store(sdata, path: Path) -> int:
    """Write ``sdata`` to a fresh zarr store; return the bytes of its largest image (full resolution)."""
    import warnings

    shutil.rmtree(path, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notice about a future default
        sdata.write(path)
    arrays = [el["scale0"].image if hasattr(el, "children") else el for el in sdata.images.values()]
    return max(int(a.size * a.dtype.itemsize) for a in arrays)


def _memory(store: Path, encoder: str, model_path: Path, args: argparse.Namespace) -> dict:
    """Peak memory of features and predict for the store, measured in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--child-store", str(store), "--child-encoder", encoder]
    cmd += ["--child-model", str(model_path), "--views", str(args.views), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY_JSON ")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        msg = f"memory subprocess failed for `{store}`"
        raise RuntimeError(msg)
    mem = json.loads(lines[-1].removeprefix("MEMORY_JSON "))
    return {f"{stage}_{k}": v for stage, d in mem.items() for k, v in d.items()}


def _bench(n_spots: int, encoder: str, args: argparse.Namespace, tmp: Path) -> dict:
    from hyperst._data import PatchReader, dihedral

    sdata = _slide(n_spots)
    layout, extractor = _prepare(sdata, encoder)
    n = sdata.tables["table"].n_obs
    row: dict = {"spots": n, "encoder": encoder, "views": args.views, "batch_size": args.batch_size}

    reader = PatchReader(sdata, layout, _geometry())
    t, _ = _timed(lambda: sum(len(i) for i, _, _ in reader.iter_batches(args.batch_size)))
    row["patch_s"], row["patch_spots_per_s"] = t, n / t

    # Bare forward on the first batches, patches already in memory (the same batches the pipeline encodes).
    batches = []
    for idx, spot, niche in reader.iter_batches(args.batch_size):
        batches.append((spot, niche))
        if (idx[-1] + 1) >= min(args.forward_spots, n):
            break
    m = sum(len(s) for s, _ in batches)
    extractor(batches[0][0][:2])  # warm-up
    t0 = time.perf_counter()
    for spot, niche in batches:
        for v in range(1 if extractor.invariant else args.views):
            extractor(dihedral(spot, v))
            extractor(dihedral(niche, v))
    t = time.perf_counter() - t0
    row["forward_spots"], row["forward_s"], row["forward_spots_per_s"] = m, t, m / t
    del batches
    gc.collect()

    cache = tmp / f"cache_{encoder}_{n_spots}"
    shutil.rmtree(cache, ignore_errors=True)
    t, _ = _timed(_extract, sdata, layout, extractor, args.views, args.batch_size, cache)
    row["pipeline_s"], row["pipeline_spots_per_s"] = t, n / t
    row["pipeline_overhead"] = row["forward_spots_per_s"] / row["pipeline_spots_per_s"]

    # The cache written above is the one fit reads (same encoder seed, geometry, views): both fits are warm.
    t1, _ = _timed(_fit, sdata, encoder, 1, args.views, args.batch_size, cache)
    te, model = _timed(_fit, sdata, encoder, args.epochs, args.views, args.batch_size, cache)
    row["fit_1_epoch_s"], row[f"fit_{args.epochs}_epochs_s"] = t1, te
    row["epoch_s"] = (te - t1) / (args.epochs - 1)
    row["fit_fixed_s"] = t1 - row["epoch_s"]

    t, _ = _timed(hst.tl.predict, sdata, model, inplace=False, batch_size=args.batch_size, cache=False)
    row["predict_nocache_s"], row["predict_nocache_spots_per_s"] = t, n / t
    # predict uses 1 view: with `--views 1` the fit's cache already holds it; otherwise the first call fills it.
    hst.tl.predict(sdata, model, inplace=False, batch_size=args.batch_size, cache=str(cache))
    t, _ = _timed(hst.tl.predict, sdata, model, inplace=False, batch_size=args.batch_size, cache=str(cache))
    row["predict_cached_s"], row["predict_cached_spots_per_s"] = t, n / t

    if args.no_memory:
        return row
    model_path = tmp / f"model_{encoder}_{n_spots}"
    model.save(model_path, overwrite=True)
    store = tmp / f"slide_{n_spots}.zarr"
    row["image_bytes"] = _store(sdata, store)
    del sdata, model
    gc.collect()
    row |= _memory(store, encoder, model_path, args)
    return row


def _bench_memory(sizes: list[int], encoder: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """``--memory-only``: one model fitted on the smallest slide, then peak memory of features and predict per size."""
    model_path = tmp / f"model_{encoder}_memory"
    sdata = _slide(min(sizes))
    _fit(sdata, encoder, 2, args.views, args.batch_size, tmp / f"cache_{encoder}_memory").save(
        model_path, overwrite=True
    )
    rows = []
    for n_spots in sizes:
        t0 = time.perf_counter()
        sdata = _slide(n_spots)
        row = {"spots": sdata.tables["table"].n_obs, "encoder": encoder, "views": args.views}
        row["batch_size"] = args.batch_size
        store = tmp / f"slide_{n_spots}.zarr"
        row["image_bytes"] = _store(sdata, store)
        del sdata
        gc.collect()
        row |= _memory(store, encoder, model_path, args)
        rows.append(row)
        print(f"[{encoder} {n_spots} spots: memory done in {time.perf_counter() - t0:.0f} s]", flush=True)
    return rows


_TIME_KEYS = ["patch_s", "pipeline_s", "forward_s", "epoch_s", "predict_nocache_s", "predict_cached_s"]
_MEM_KEYS = [
    "features_rss_rise_bytes",
    "features_tracemalloc_peak_bytes",
    "predict_rss_rise_bytes",
    "predict_tracemalloc_peak_bytes",
]


def _growth(rows: list[dict]) -> list[dict]:
    out = []
    for enc in dict.fromkeys(r["encoder"] for r in rows):
        rs = sorted((r for r in rows if r["encoder"] == enc), key=lambda r: r["spots"])
        for a, b in zip(rs, rs[1:], strict=False):
            g = {"encoder": enc, "from": a["spots"], "to": b["spots"], "work_ratio": b["spots"] / a["spots"]}
            for k in _TIME_KEYS:  # forward: per spot, so the rate ratio is the meaningful one
                if k not in a:
                    continue
                if k == "forward_s":
                    g["forward_rate_ratio"] = b["forward_spots_per_s"] / a["forward_spots_per_s"]
                else:
                    g[k.removesuffix("_s") + "_time_ratio"] = b[k] / a[k]
            for k in _MEM_KEYS:  # absent with --no-memory
                if k in a:
                    g[k.removesuffix("_bytes") + "_ratio"] = b[k] / a[k] if a[k] > 0 else None
            if "predict_seconds" in a:
                g["predict_child_time_ratio"] = b["predict_seconds"] / a["predict_seconds"]
            out.append(g)
    return out


def _mib(x: float) -> str:
    return f"{x / 2**20:.0f}"


def _print_memory(rows: list[dict], growth: list[dict]) -> None:
    print("peak memory, slide read lazily from zarr (MiB): RSS rise and tracemalloc peak; image = its full-resolution")
    print(f"{'encoder':<10}{'spots':>7}{'image':>8}{'featMiB':>9}{'featTM':>8}{'predMiB':>9}{'predTM':>8}{'pred s':>8}")
    for r in rows:
        print(
            f"{r['encoder']:<10}{r['spots']:>7}{_mib(r['image_bytes']):>8}{_mib(r['features_rss_rise_bytes']):>9}"
            f"{_mib(r['features_tracemalloc_peak_bytes']):>8}{_mib(r['predict_rss_rise_bytes']):>9}"
            f"{_mib(r['predict_tracemalloc_peak_bytes']):>8}{r['predict_seconds']:>8.0f}"
        )
    if growth:
        print("\ngrowth between sizes (work ratio = spots; memory ratios near 1 = bounded):")
        print(f"{'encoder':<10}{'sizes':>12}{'work':>6}{'featMem':>9}{'predMem':>9}{'predTime':>9}")
        for g in growth:
            fm, pm = g["features_rss_rise_ratio"], g["predict_rss_rise_ratio"]
            print(
                f"{g['encoder']:<10}{str(g['from']) + '->' + str(g['to']):>12}{g['work_ratio']:>6.1f}"
                f"{'n/a' if fm is None else f'{fm:.2f}':>9}{'n/a' if pm is None else f'{pm:.2f}':>9}"
                f"{g['predict_child_time_ratio']:>9.2f}"
            )


def _print(rows: list[dict], growth: list[dict], epochs: int) -> None:
    head = (
        f"{'encoder':<10}{'spots':>7}{'patch/s':>9}{'pipe/s':>8}{'fwd/s':>8}{'ovh':>6}"
        f"{'epoch s':>9}{'pred/s':>8}{'predC/s':>9}{'featMiB':>9}{'featTM':>8}{'predMiB':>9}{'predTM':>8}"
    )
    print("spots/s unless marked; ovh = forward/pipeline; epoch s = fit seconds per epoch on cached features;")
    print("pred/s without cache, predC/s with cached features; MiB = peak RSS rise, TM = tracemalloc peak")
    print(head)

    def mem(r: dict, k: str) -> str:
        return _mib(r[k]) if k in r else "n/a"  # absent with --no-memory

    for r in rows:
        print(
            f"{r['encoder']:<10}{r['spots']:>7}{r['patch_spots_per_s']:>9.1f}{r['pipeline_spots_per_s']:>8.1f}"
            f"{r['forward_spots_per_s']:>8.1f}{r['pipeline_overhead']:>6.2f}{r['epoch_s']:>9.3f}"
            f"{r['predict_nocache_spots_per_s']:>8.1f}{r['predict_cached_spots_per_s']:>9.1f}"
            f"{mem(r, 'features_rss_rise_bytes'):>9}{mem(r, 'features_tracemalloc_peak_bytes'):>8}"
            f"{mem(r, 'predict_rss_rise_bytes'):>9}{mem(r, 'predict_tracemalloc_peak_bytes'):>8}"
        )
    if growth:
        print("\ngrowth between sizes (time ratios; equal to the work ratio = linear):")
        print(
            f"{'encoder':<10}{'sizes':>12}{'work':>6}{'patch':>7}{'pipe':>7}{'epoch':>7}{'pred':>7}{'predC':>7}"
            f"{'featMem':>9}{'predMem':>9}"
        )

        def f(x):
            return "n/a" if x is None else f"{x:.2f}"

        for g in growth:
            print(
                f"{g['encoder']:<10}{str(g['from']) + '->' + str(g['to']):>12}{g['work_ratio']:>6.1f}"
                f"{g['patch_time_ratio']:>7.2f}{g['pipeline_time_ratio']:>7.2f}{g['epoch_time_ratio']:>7.2f}"
                f"{g['predict_nocache_time_ratio']:>7.2f}{g['predict_cached_time_ratio']:>7.2f}"
                f"{f(g.get('features_rss_rise_ratio')):>9}{f(g.get('predict_rss_rise_ratio')):>9}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 4000, 16000])
    parser.add_argument("--encoder", nargs="+", default=["resnet18"], help="e.g. resnet18 squidpy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--forward-spots", type=int, default=256, help="spots whose patches time the bare encoder")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "speed.json"))
    parser.add_argument("--tmp", default="/tmp/hyperst_speed")
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only peak memory of features and predict per size (slides read lazily from zarr), and their growth",
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory subprocesses (two more feature passes per size); measure them with --memory-only",
    )
    parser.add_argument(
        "--read-ahead",
        type=int,
        default=None,
        help="hyperst.settings.read_ahead for this run (batches read while the encoder works; 0: none)",
    )
    parser.add_argument("--stand-in", nargs="*", type=float, default=[], help="stand-in encoder rates, spots/s")
    parser.add_argument("--child-store", help=argparse.SUPPRESS)
    parser.add_argument("--child-encoder", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_store is not None:
        _memory_child(args)
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (time per epoch is a difference of two fits)")
    import torch

    hst.settings.progress_bar = False
    if args.read_ahead is not None:
        hst.settings.read_ahead = args.read_ahead
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    for enc in args.encoder:
        if args.memory_only:
            rows += _bench_memory(args.sizes, enc, args, tmp)
            continue
        for n in args.sizes:
            t0 = time.perf_counter()
            rows.append(_bench(n, enc, args, tmp))
            print(f"[{enc} {n} spots done in {time.perf_counter() - t0:.0f} s]", flush=True)
    growth = _growth(rows)
    (_print_memory(rows, growth) if args.memory_only else _print(rows, growth, args.epochs))
    stand_in = []
    if args.stand_in:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from patches import stand_in_rows

        stand_in = stand_in_rows(args.stand_in, max(args.sizes), args.batch_size)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "loadavg_at_end": load,
        },
        "hyperst": hst.__version__,
        "read_ahead": hst.settings.read_ahead,
        "started_utc": started,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "rows": rows,
        "growth": growth,
        "stand_in": stand_in,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
