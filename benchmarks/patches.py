"""Patch throughput on real HER2ST sections and peak memory on a large lazily read slide.

Prints a table and writes JSON (default ``benchmarks/results/patches.json``)::

    python benchmarks/patches.py --data ../shared/data/her2st --sections C3 B4

Throughput counts spots per second with both patches (spot + niche) read and resized to 224 px, for the
squidpy ``ImageContainer`` path and the direct-slicing path, measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hyperst
from hyperst._data import PatchReader, slide_layout


def _rate(reader: PatchReader, batch_size: int) -> float:
    t0 = time.perf_counter()
    n = sum(len(idx) for idx, _, _ in reader.iter_batches(batch_size))
    return n / (time.perf_counter() - t0)


def _large_slide_peak(tmp: Path, side: int = 40_000) -> dict:
    import dask.array as da
    from spatialdata import SpatialData, read_zarr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    from conftest import hex_centres, make_slide

    arr = da.full((3, side, side), 255, dtype=np.uint8, chunks=(3, 2048, 2048))
    path = tmp / "large.zarr"
    img = Image2DModel.parse(DataArray(arr, dims=("c", "y", "x")), transformations={"s": Identity()})
    SpatialData(images={"he": img}).write(path, overwrite=True)
    sdata = make_slide(np.zeros((3, 8, 8), dtype=np.uint8), hex_centres(10, 40, 400, (15000, 15000)), 110, cs="s")
    sdata.images["s_full_image"] = read_zarr(path).images["he"]
    reader = PatchReader(sdata, slide_layout(sdata))
    tracemalloc.start()
    n = sum(len(i) for i, _, _ in reader.iter_batches(32))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"image_px": f"{side}x{side}", "image_bytes": 3 * side * side, "spots": n, "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--sections", nargs="+", default=["C3"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "patches.json"))
    parser.add_argument("--tmp", default="/tmp/hyperst_bench")
    args = parser.parse_args()
    from conftest import her2st_slide

    hyperst.settings.progress_bar = False
    rows = []
    for section in args.sections:
        sdata = her2st_slide(section, Path(args.data))
        layout = slide_layout(sdata)
        for method in ("direct", "squidpy"):
            reader = PatchReader(sdata, layout, method=method)
            rate = _rate(reader, args.batch_size)
            rows.append({"section": section, "spots": len(reader), "method": method, "spots_per_s": rate})
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    large = _large_slide_peak(tmp)
    print(f"{'section':<8}{'spots':>7}{'method':>9}{'spots/s':>10}")
    for r in rows:
        print(f"{r['section']:<8}{r['spots']:>7}{r['method']:>9}{r['spots_per_s']:>10.1f}")
    ratio = large["peak_bytes"] / large["image_bytes"]
    print(
        f"large slide {large['image_px']} ({large['image_bytes'] / 2**30:.2f} GiB RGB): "
        f"peak traced memory {large['peak_bytes'] / 2**20:.0f} MiB = {ratio:.2%} of the image"
    )
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "hyperst": hyperst.__version__,
        "throughput": rows,
        "large_slide": large,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
