"""Time ``hst.pl.spatial`` on a HER2ST section (9.3k x 9.9k px H&E): drawn from a small copy vs the full image.

The predictions layer is filled with the measured log2 counts: what is timed is the drawing, not a model::

    python benchmarks/plots.py            # both, in one run
    python benchmarks/plots.py --no-full  # only the current behaviour

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


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--section", default="C3")
    parser.add_argument("--genes", nargs="+", default=["ERBB2", "KRT19"])
    parser.add_argument("--no-full", action="store_true", help="skip the full-image baseline (minutes)")
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
    print(f"pl.spatial, HER2ST {args.section} ({w} x {h} px), {len(args.genes)} genes x 2 panels")
    for name, seconds in rows.items():
        print(f"{name:<14}{seconds:>8.1f} s")
    if "full image" in rows:
        print(f"speed-up {rows['full image'] / rows['display copy']:.0f}x")
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "hyperst": hst.__version__,
        "section": args.section,
        "image_px": [w, h],
        "display_side": _spatial.DISPLAY_SIDE,
        "seconds": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
