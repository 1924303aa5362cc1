"""Patch reading: spots/s on a slide in memory, from zarr and on real sections; a stand-in encoder; large-slide memory.

Prints a table and writes JSON (default ``benchmarks/results/patches.json``)::

    git worktree add /tmp/hyperst_base <old commit>          # the reader to compare with, measured in the same run
    python benchmarks/patches.py --baseline /tmp/hyperst_base/src
    python benchmarks/patches.py --spots 4000 --stand-in 300 600 --data ../shared/data/her2st --sections C3 B4

Every rate counts spots per second with both patches (spot 112 µm + niche) read and resized to 224 px, through
``PatchReader.iter_batches`` (batches of ``--batch-size``, one batch read ahead), measured in one run:

- ``synthetic``: ``hst.datasets.synthetic`` at 1 µm/px (the slide of ``benchmarks/speed.py``), image in memory;
- ``synthetic-zarr``: the same slide written to zarr and read back lazily, as a slide on disk is read;
- ``her2st-<section>``: a real section (``--data``), when present;
- ``large``: a 40,000 x 40,000 px slide in zarr (2048 px chunks) with 400 Visium spots at 0.25 µm/px, its table
  rows shuffled (spatialdata-io's barcode order is spatially random): rate and peak memory (the rise of the
  resident set and the tracemalloc peak).

Readers: ``squidpy`` (``ImageContainer.crop_corner`` per patch, the reference pixels), and ``direct`` (the
chunked reader) with ``hyperst.settings.read_workers`` = 1 and = the CPU count. ``--baseline SRC`` measures the
``direct`` reader of another checkout (its ``src`` folder) on the same cases in a subprocess, in this run.
``bilinear`` is the direct reader with ``resample="bilinear"`` (an opt-in filter of ``tl.fit``; its pixels differ
from squidpy's LANCZOS ones).

``--stand-in R ...`` times :func:`hyperst.tl._features.extract_features` (what ``fit`` and ``predict`` run) with a
stand-in encoder that takes exactly ``1 / R`` s per spot and releases the GIL meanwhile, as a GPU does: the
pipeline keeps the encoder fed when it delivers close to ``R`` spots/s.
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
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _measure import measure_memory

HERE = Path(__file__).resolve().parent


def _import_hyperst(src: str | None):
    if src is not None:
        sys.path.insert(0, src)
    sys.path.insert(0, str(HERE.parent / "tests"))  # conftest's slide builders
    import hyperst

    hyperst.settings.progress_bar = False
    return hyperst


def _rate(reader, batch_size: int) -> float:
    t0 = time.perf_counter()
    n = sum(len(idx) for idx, _, _ in reader.iter_batches(batch_size))
    return n / (time.perf_counter() - t0)


def _write_zarr(sdata, path: Path):
    from spatialdata import read_zarr

    shutil.rmtree(path, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notice about a future default
        sdata.write(path)
    return read_zarr(path)


def _large_slide(tmp: Path, side: int = 40_000):
    import dask.array as da
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    from conftest import hex_centres, make_slide

    arr = da.full((3, side, side), 255, dtype=np.uint8, chunks=(3, 2048, 2048))
    tissue = da.from_array(np.random.default_rng(0).integers(0, 255, (3, 8192, 16384), dtype=np.uint8))
    arr[:, 14336:22528, 14336:30720] = tissue.rechunk((3, 2048, 2048))
    img = Image2DModel.parse(DataArray(arr, dims=("c", "y", "x")), transformations={"s": Identity()})
    lazy = _write_zarr(SpatialData(images={"he": img}), tmp / "large.zarr")
    centres = hex_centres(10, 40, 400, (15000, 15000))
    centres = centres[np.random.default_rng(1).permutation(len(centres))]
    sdata = make_slide(np.zeros((3, 8, 8), dtype=np.uint8), centres, 110, cs="s")
    sdata.images["s_full_image"] = lazy.images["he"]
    return sdata


def _cases(args: argparse.Namespace, hyperst) -> dict:
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    slide = hyperst.datasets.synthetic(n_slides=1, n_spots=args.spots, n_genes=50, microns_per_pixel=1.0, seed=0)[0]
    cases = {"synthetic": slide, "synthetic-zarr": _write_zarr(slide, tmp / "synthetic.zarr")}
    if args.data and Path(args.data, f"{args.sections[0]}.h5ad").exists():
        from conftest import her2st_slide

        for section in args.sections:
            cases[f"her2st-{section}"] = her2st_slide(section, Path(args.data))
    if not args.no_large:
        cases["large"] = _large_slide(tmp)
    return cases


def _with_memory(reader, batch_size: int) -> dict:
    """Rate, tracemalloc peak and resident-set rise of one pass (``benchmarks/_measure.py``)."""
    info, rate = measure_memory(lambda: _rate(reader, batch_size))
    return {"spots_per_s": rate, **info}


def _measure(args: argparse.Namespace, *, baseline: bool) -> list[dict]:
    hyperst = _import_hyperst(args.baseline if baseline else None)
    from hyperst._data import PatchReader, slide_layout

    rows = []
    workers = [None] if baseline else sorted({1, os.cpu_count() or 1})
    for case, sdata in _cases(args, hyperst).items():
        layout = slide_layout(sdata)
        readers = [("direct", w) for w in workers] + ([] if baseline or case == "large" else [("squidpy", 1)])
        if not baseline:  # the opt-in filter (`resample="bilinear"`), pixels not identical to squidpy's
            readers += [("bilinear", w) for w in workers]
        for method, w in readers:
            if w is not None:
                hyperst.settings.read_workers = w
            if method == "bilinear":
                from hyperst._data import PatchGeometry

                reader = PatchReader(sdata, layout, PatchGeometry(resample="bilinear"))
            else:
                reader = PatchReader(sdata, layout, method=method)
            row = {"case": case, "spots": len(reader), "reader": "baseline" if baseline else method, "workers": w}
            row |= _with_memory(reader, args.batch_size) if case == "large" else {"spots_per_s": _rate(reader, 64)}
            rows.append(row)
            print(f"  {case:<15}{row['reader']:>9}{str(w):>8}{row['spots_per_s']:>9.0f} spots/s", flush=True)
    return rows


class _StandIn:
    """A feature extractor that takes ``1 / rate`` s per spot (half per patch batch) and returns zeros."""

    def __init__(self, rate: float, record) -> None:
        self.rate, self.record = rate, record
        self.module, self.device, self.invariant = None, "cpu", False
        self.name, self.n_features = "stand-in", 8

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        time.sleep(len(patches) / self.rate / 2)  # spot and niche batches: 1 / rate per spot in all
        return np.zeros((len(patches), self.n_features), dtype=np.float32)


def stand_in_rows(rates: list[float], n_spots: int, batch_size: int) -> list[dict]:
    """Spots/s of ``extract_features`` with stand-in encoders of the given rates, read_workers 1 and all CPUs."""
    hyperst = _import_hyperst(None)
    from hyperst._data import slide_layout
    from hyperst._records import EncoderRecord
    from hyperst.tl._features import extract_features
    from hyperst.tl._prepare import geometry_from

    sdata = hyperst.datasets.synthetic(n_slides=1, n_spots=n_spots, n_genes=50, microns_per_pixel=1.0, seed=0)[0]
    layout, geometry = slide_layout(sdata), geometry_from(hyperst.HyperSTConfig())
    record = EncoderRecord(name="stand-in", n_features=8, fingerprint="stand-in")
    rows = []
    for rate in rates:
        for w in sorted({1, os.cpu_count() or 1}):
            hyperst.settings.read_workers = w
            t0 = time.perf_counter()
            extract_features(
                sdata, layout, _StandIn(rate, record), geometry=geometry, views=1, batch_size=batch_size, cache=False
            )
            got = n_spots / (time.perf_counter() - t0)
            rows.append({"stand_in_spots_per_s": rate, "workers": w, "pipeline_spots_per_s": got, "fed": got / rate})
            print(f"  stand-in {rate:>6.0f} spots/s, {w} workers: pipeline {got:>6.0f} spots/s ({got / rate:.0%})")
    return rows


def _baseline_rows(args: argparse.Namespace) -> list[dict]:
    cmd = [sys.executable, __file__, "--child-baseline", *sys.argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS_JSON ")]
    if proc.returncode or not lines:
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        msg = "the baseline subprocess failed"
        raise RuntimeError(msg)
    print("\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("ROWS_JSON ")))
    return json.loads(lines[-1].removeprefix("ROWS_JSON "))


def _print(rows: list[dict], stand_in: list[dict]) -> None:
    base = {r["case"]: r["spots_per_s"] for r in rows if r["reader"] == "baseline"}
    print(f"\n{'case':<15}{'spots':>7}{'reader':>9}{'workers':>8}{'spots/s':>9}{'x baseline':>11}{'peak MiB':>9}")
    for r in rows:
        ratio = f"{r['spots_per_s'] / base[r['case']]:.2f}" if r["case"] in base else ""
        peak = f"{r['tracemalloc_peak_bytes'] / 2**20:.0f}" if "tracemalloc_peak_bytes" in r else ""
        print(
            f"{r['case']:<15}{r['spots']:>7}{r['reader']:>9}{r['workers']!s:>8}{r['spots_per_s']:>9.0f}{ratio:>11}{peak:>9}"
        )
    for r in stand_in:
        print(f"stand-in {r['stand_in_spots_per_s']:.0f} spots/s, {r['workers']} workers: fed {r['fed']:.0%}")


def cpu_rows(n_spots: int, batch_size: int) -> list[dict]:
    """CPU time per spot of ``PatchReader.read`` with one read thread, per resize filter, twice each.

    CPU time is what two free cores divide: ``2 / cpu`` is the rate two idle cores could reach, a projection
    that holds under load, where wall-clock rates do not.
    """
    import hyperst
    from hyperst._data import PatchGeometry, PatchReader, slide_layout

    hyperst.settings.read_workers = 1
    slide = hyperst.datasets.synthetic(n_slides=1, n_spots=n_spots, n_genes=50, microns_per_pixel=1.0, seed=0)[0]
    layout = slide_layout(slide)
    rows = []
    for resample in ("lanczos", "bilinear") * 2:
        reader = PatchReader(slide, layout, PatchGeometry(resample=resample))
        reader.read(np.arange(batch_size))  # warm the tile cache
        t0 = time.process_time()
        for a in range(0, n_spots, batch_size):
            reader.read(np.arange(a, min(a + batch_size, n_spots)))
        ms = (time.process_time() - t0) / n_spots * 1e3
        rows.append({"resample": resample, "cpu_ms_per_spot": ms, "two_free_cores_spots_per_s": 2e3 / ms})
        print(f"  {resample:<9}{ms:6.2f} ms CPU/spot  -> {2e3 / ms:5.0f} spots/s on two free cores", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spots", type=int, default=2000, help="spots of the synthetic slide")
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared/data/her2st"))
    parser.add_argument("--sections", nargs="+", default=["C3"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline", help="`src` folder of another checkout whose direct reader to measure")
    parser.add_argument("--stand-in", nargs="*", type=float, default=[], help="stand-in encoder rates, spots/s")
    parser.add_argument("--no-large", action="store_true", help="skip the 40,000 px slide")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU time per spot of each resize filter")
    parser.add_argument("--out", default=str(HERE / "results" / "patches.json"))
    parser.add_argument("--tmp", default="/tmp/hyperst_patches")
    parser.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_baseline:
        args.tmp += "_baseline"
        print("ROWS_JSON " + json.dumps(_measure(args, baseline=True)))
        return
    started = datetime.now(UTC).isoformat(timespec="seconds")
    rows, stand_in = [], []
    if not args.cpu_only:
        rows = _baseline_rows(args) if args.baseline else []
        rows += _measure(args, baseline=False)
        stand_in = stand_in_rows(args.stand_in, args.spots, args.batch_size) if args.stand_in else []
        _print(rows, stand_in)
    cpu = cpu_rows(min(args.spots, 1000), args.batch_size)
    import hyperst

    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "hyperst": hyperst.__version__,
        "started_utc": started,
        "args": vars(args),
        "rows": rows,
        "stand_in": stand_in,
        "cpu_per_spot": cpu,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
