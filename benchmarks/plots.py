"""Time ``hst.pl.spatial`` on a HER2ST section (9.3k x 9.9k px H&E): drawn from a small copy vs the full image.

The predictions layer is filled with the measured log2 counts: what is timed is the drawing, not a model::

    python benchmarks/plots.py            # both, in one run, and the large slide
    python benchmarks/plots.py --no-full  # only the current behaviour
    python benchmarks/plots.py --no-full --large-side 0  # ... and no large slide

``--large-side N`` (default 40,000) also draws a slide of ``N x N`` px written to zarr (2048 px chunks, one
pyramid level, as spatialdata-io leaves a Visium full-resolution image) and read back lazily, with 400 spots:
its time and peak memory (the rise of the resident set, ``VmHWM`` reset through ``/proc/self/clear_refs``).

Writes ``benchmarks/results/plots.json``. "full image" hands spatialdata-plot the whole-resolution image, as
``pl.spatial`` did before it drew from a block-averaged copy of about ``DISPLAY_SIDE`` pixels.
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
from _measure import measure_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hyperst as hst
from hyperst.pl import _spatial


def _time(sdata, genes) -> float:
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    fig = hst.pl.spatial(sdata, genes, show=False)
    seconds = time.perf_counter() - t0
    plt.close(fig)
    return seconds


def _large(side: int, tmp: Path, genes: list[str]) -> dict:
    """Draw a lazily read ``side x side`` px zarr slide; return seconds, peak RSS rise and the image's bytes."""
    import shutil
    import warnings

    import dask.array as da
    from spatialdata import SpatialData, read_zarr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    from conftest import hex_centres, make_slide

    arr = da.full((3, side, side), 230, dtype=np.uint8, chunks=(3, 2048, 2048))
    block = min(8192, side // 2)
    tissue = da.random.default_rng(0).integers(0, 255, (3, block, block), dtype=np.uint8, chunks=(3, 2048, 2048))
    arr[:, side // 4 : side // 4 + block, side // 4 : side // 4 + block] = tissue
    path = tmp / "large_plot.zarr"
    shutil.rmtree(path, ignore_errors=True)
    img = Image2DModel.parse(DataArray(arr, dims=("c", "y", "x")), transformations={"s": Identity()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notice about a future default
        SpatialData(images={"he": img}).write(path)
    centres = hex_centres(20, 20, side / 50, origin=(side / 4, side / 4))
    sdata = make_slide(np.zeros((3, 8, 8), dtype=np.uint8), centres, side / 200, cs="s", n_genes=len(genes))
    sdata.images["s_full_image"] = read_zarr(path).images["he"]
    table = sdata.tables["table"]
    table.var_names = genes
    table.layers["hyperst"] = np.log2(1 + np.asarray(table.X)).astype(np.float32)
    info, seconds = measure_memory(lambda: _time(sdata, genes), trace=False)
    rise = info["rss_rise_bytes"]
    return {"image_px": [side, side], "image_bytes": 3 * side * side, "seconds": seconds, "rss_rise_bytes": rise}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--section", default="C3")
    parser.add_argument("--genes", nargs="+", default=["ERBB2", "KRT19"])
    parser.add_argument("--no-full", action="store_true", help="skip the full-image baseline (minutes)")
    parser.add_argument("--large-side", type=int, default=40_000, help="side of the zarr slide; 0 skips it")
    parser.add_argument("--tmp", default="/tmp/hyperst_plots")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "plots.json"))
    args = parser.parse_args()
    from conftest import her2st_slide

    hst.settings.progress_bar = False
    sdata = her2st_slide(args.section, Path(args.data))
    table = sdata.tables["table"]
    table.layers["hyperst"] = np.log2(1 + table.X.toarray()).astype(np.float32)
    h, w = (int(n) for n in sdata.images[next(iter(sdata.images))]["scale0"]["image"].shape[1:])
    rows = {"display copy": _time(sdata, args.genes)}
    if not args.no_full:
        display = _spatial._display_image
        _spatial._display_image = lambda image, cs: image  # the behaviour before the display copy
        try:
            rows["full image"] = _time(sdata, args.genes)
        finally:
            _spatial._display_image = display
    large = None
    if args.large_side:
        Path(args.tmp).mkdir(parents=True, exist_ok=True)
        large = _large(args.large_side, Path(args.tmp), args.genes)
    print(f"pl.spatial, HER2ST {args.section} ({w} x {h} px), {len(args.genes)} genes x 2 panels")
    for name, seconds in rows.items():
        print(f"{name:<14}{seconds:>8.1f} s")
    if "full image" in rows:
        print(f"speed-up {rows['full image'] / rows['display copy']:.0f}x")
    if large is not None:
        side = large["image_px"][0]
        print(
            f"zarr slide {side} x {side} px ({large['image_bytes'] / 2**30:.1f} GiB RGB), read lazily: "
            f"{large['seconds']:.1f} s, peak RSS rise {large['rss_rise_bytes'] / 2**20:.0f} MiB"
        )
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "hyperst": hst.__version__,
        "section": args.section,
        "image_px": [w, h],
        "display_side": _spatial.DISPLAY_SIDE,
        "seconds": rows,
        "large": large,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
