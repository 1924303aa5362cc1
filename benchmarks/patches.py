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


def stand_in_rows(
    rates: list[float],
    n_spots: int,
    batch_size: int,
    *,
    filters: tuple[str, ...] = ("lanczos",),
    workers: tuple[int, ...] | None = None,
    zarr_dir: str | None = None,
    src: str | None = None,
) -> list[dict]:
    """Spots/s of ``extract_features`` fed to stand-in encoders of the given rates.

    For each case (the synthetic slide in memory; also written to ``zarr_dir`` and read back lazily, when given),
    resize filter and ``read_workers`` (default 1 and all CPUs). ``src``: another checkout's ``src`` to import.
    """
    hyperst = _import_hyperst(src)
    from hyperst._data import slide_layout
    from hyperst._records import EncoderRecord
    from hyperst.tl._features import extract_features
    from hyperst.tl._prepare import geometry_from

    sdata = hyperst.datasets.synthetic(n_slides=1, n_spots=n_spots, n_genes=50, microns_per_pixel=1.0, seed=0)[0]
    cases = {"synthetic": sdata}
    if zarr_dir is not None:
        cases["synthetic-zarr"] = _write_zarr(sdata, Path(zarr_dir) / "stand_in.zarr")
    record = EncoderRecord(name="stand-in", n_features=8, fingerprint="stand-in")
    rows = []
    for case, slide in cases.items():
        layout = slide_layout(slide)
        for resample in filters:
            geometry = geometry_from(hyperst.HyperSTConfig(resample=resample))
            for rate in rates:
                for w in workers or sorted({1, os.cpu_count() or 1}):
                    hyperst.settings.read_workers = w
                    t0, c0 = time.perf_counter(), time.process_time()
                    extract_features(
                        slide, layout, _StandIn(rate, record), geometry=geometry, views=1, batch_size=batch_size,
                        cache=False,
                    )  # fmt: skip
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    got = n_spots / wall
                    rows.append(
                        {
                            "case": case, "resample": resample, "stand_in_spots_per_s": rate, "workers": w,
                            "pipeline_spots_per_s": got, "fed": got / rate, "cpu_ms_per_spot": cpu / n_spots * 1e3,
                        }
                    )  # fmt: skip
                    print(
                        f"  {case:<15}{resample:<9} stand-in {rate:>6.0f} spots/s, {w} workers: pipeline "
                        f"{got:>6.0f} spots/s ({got / rate:.0%}), {cpu / n_spots * 1e3:.2f} ms CPU/spot",
                        flush=True,
                    )
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
        print(
            f"stand-in {r['stand_in_spots_per_s']:.0f} spots/s, {r['resample']}, {r['workers']} workers: "
            f"fed {r['fed']:.0%}"
        )


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


def _stand_in(args: argparse.Namespace, src: str | None = None) -> list[dict]:
    zarr_dir = args.tmp + ("_baseline" if src else "") if args.stand_in_zarr else None
    kw = {"filters": tuple(args.filters), "workers": tuple(args.workers) if args.workers else None}
    return stand_in_rows(args.stand_in, args.spots, args.batch_size, zarr_dir=zarr_dir, src=src, **kw)


def _print_stand_in(rows: list[dict]) -> None:
    base = {(r["case"], r["resample"], r["stand_in_spots_per_s"], r["workers"]): r for r in rows if r.get("baseline")}
    print(f"\n{'case':<15}{'filter':<9}{'stand-in':>9}{'workers':>8}{'before':>13}{'now':>13}{'CPU ms/spot':>13}")
    for r in rows:
        if r.get("baseline"):
            continue
        b = base.get((r["case"], r["resample"], r["stand_in_spots_per_s"], r["workers"]))
        before = f"{b['pipeline_spots_per_s']:.0f} ({b['fed']:.0%})" if b else ""
        now = f"{r['pipeline_spots_per_s']:.0f} ({r['fed']:.0%})"
        cpu = (f"{b['cpu_ms_per_spot']:.2f} -> " if b else "") + f"{r['cpu_ms_per_spot']:.2f}"
        print(f"{r['case']:<15}{r['resample']:<9}{r['stand_in_spots_per_s']:>9.0f}{r['workers']:>8}{before:>13}{now:>13}"
              f"  {cpu}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spots", type=int, default=2000, help="spots of the synthetic slide")
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared/data/her2st"))
    parser.add_argument("--sections", nargs="+", default=["C3"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline", help="`src` folder of another checkout whose direct reader to measure")
    parser.add_argument("--stand-in", nargs="*", type=float, default=[], help="stand-in encoder rates, spots/s")
    parser.add_argument("--stand-in-only", action="store_true", help="only the stand-in feed (and its baseline)")
    parser.add_argument("--stand-in-zarr", action="store_true", help="feed also from the slide read from zarr")
    parser.add_argument("--filters", nargs="+", default=["lanczos"], help="resize filters of the stand-in feed")
    parser.add_argument("--workers", nargs="+", type=int, help="read_workers of the stand-in feed (default 1, CPUs)")
    parser.add_argument("--no-large", action="store_true", help="skip the 40,000 px slide")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU time per spot of each resize filter")
    parser.add_argument("--out", default=str(HERE / "results" / "patches.json"))
    parser.add_argument("--tmp", default="/tmp/hyperst_patches")
    parser.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_baseline:
        args.tmp += "_baseline"
        rows = _stand_in(args, args.baseline) if args.stand_in_only else _measure(args, baseline=True)
        print("ROWS_JSON " + json.dumps(rows))
        return
    started, load_before = datetime.now(UTC).isoformat(timespec="seconds"), os.getloadavg()
    rows, stand_in, cpu = [], [], []
    if args.stand_in_only:
        stand_in = [{**r, "baseline": True} for r in _baseline_rows(args)] if args.baseline else []
        stand_in += _stand_in(args)
        _print_stand_in(stand_in)
    elif not args.cpu_only:
        rows = _baseline_rows(args) if args.baseline else []
        rows += _measure(args, baseline=False)
        stand_in = _stand_in(args) if args.stand_in else []
        _print(rows, stand_in)
    if not args.stand_in_only:
        cpu = cpu_rows(min(args.spots, 1000), args.batch_size)
    import hyperst

    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": load_before,
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
