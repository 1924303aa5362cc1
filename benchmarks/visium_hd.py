"""Scale on Visium HD: a full 6.5 mm x 6.5 mm capture area of 8 µm bins (about 660,000), end to end.

Prints a table and writes JSON (default ``benchmarks/results/visium_hd.json``)::

    python benchmarks/visium_hd.py                                # 41k, 165k and 660k bins
    python benchmarks/visium_hd.py --bins 41000 165000 --genes 200

For each size, in a fresh subprocess (so that peak memory is this size's own), one synthetic slide laid out as
``spatialdata_io.visium_hd`` lays one out: a square lattice of 8 µm bins filling the capture area (table
``square_008um``, squares ``<id>_square_008um``), sparse counts (``--genes`` genes, about ``--counts`` per
bin), and an H&E at ``--mpp`` µm/px tiled from a :func:`hyperst.datasets.synthetic_visium_hd` image, written
to a zarr store and read back (so the image is read lazily from disk, as a slide is). A model is trained first,
in the same process, on a small synthetic Visium HD slide with the same genes. Then, timed and with the rise of
the resident set measured (``VmHWM`` after a reset through ``/proc/self/clear_refs``):

- ``pseudospots``: :func:`hyperst.pp.pseudospots` (bins summed into 56 µm pseudo-spots, 49 bins each);
- ``predict``: :func:`hyperst.tl.predict` with an empty feature cache (patches read and encoded);
- ``predict_cached``: the same again, features read from the cache (inference, niche, QC and writes only);
- ``to_bins``: :func:`hyperst.tl.to_bins`, every bin given its pseudo-spot's prediction.

Throughput is bins per second of each step. The encoder is a tiny stand-in (the mean colour of 4 x 4 blocks of
each patch: 48 features) so that the figures measure hyperst's pipeline, not a backbone; a real encoder costs
per pseudo-spot what it costs per Visium spot (see ``benchmarks/speed.py``), and there are 49 times fewer
pseudo-spots than bins. Growth is reported as ratios between consecutive sizes (4.0 is linear for 4x bins).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
from _measure import measure_memory

import hyperst as hst

CAPTURE_UM = 6500.0
BIN_UM = 8


def _tiny_encoder():
    import torch

    class MeanColour(torch.nn.Module):
        """Mean colour of 4 x 4 blocks: a 48-feature stand-in encoder costing almost nothing."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    return MeanColour()


def _step(fn) -> dict:
    """Run ``fn()``; return its seconds and the rise of the resident set above the level before it."""
    t0 = time.perf_counter()
    info, _ = measure_memory(fn, trace=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_rise_mib": info["rss_rise_bytes"] / 2**20}


def _image(mpp: float, seed: int):
    """A lazy ``(3, H, W)`` H&E over the capture area: a synthetic tissue image tiled by dask."""
    import dask.array as da

    block = hst.datasets.synthetic_visium_hd(1, tissue_mm2=1.0, n_genes=10, microns_per_pixel=mpp, seed=seed)[0]
    tile = np.asarray(block.images["synthetic_hd_0_full_image"]["scale0"]["image"].values)
    side = int(np.ceil(CAPTURE_UM / mpp))
    reps = (1, -(-side // tile.shape[1]), -(-side // tile.shape[2]))
    lazy = da.tile(da.from_array(tile, chunks=(3, 1024, 1024)), reps)[:, :side, :side]
    return lazy.rechunk((3, 1024, 1024))


def _slide(n_bins: int, n_genes: int, counts: float, mpp: float, seed: int):
    """A Visium HD slide of ``n_bins`` 8 µm bins (a square block of the capture area) as the reader lays it out."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    from geopandas import GeoDataFrame
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    rng = np.random.default_rng(seed)
    n_side = int(round(np.sqrt(n_bins)))
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    n = rows.size
    per_bin = rng.poisson(counts, n)
    indptr = np.concatenate([[0], np.cumsum(per_bin)])
    genes = rng.zipf(1.6, indptr[-1]) % n_genes  # a few genes hold most counts, as in real bins
    X = sp.csr_matrix((np.ones(indptr[-1], dtype=np.float32), genes, indptr), shape=(n, n_genes))
    X.sum_duplicates()
    name = "hd"
    shapes_key = f"{name}_square_008um"
    width = max(4, len(str(n_genes)))
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n, dtype=np.int64),
            "array_row": rows,
            "array_col": cols,
            "location_id": np.arange(n),
            "region": pd.Categorical([shapes_key] * n),
        },
        index=pd.Index([f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]),
    )
    var = pd.DataFrame(index=pd.Index([f"SYN{i:0{width}d}" for i in range(1, n_genes + 1)]))
    xy = (np.column_stack([cols, rows]) + 0.5) * BIN_UM / mpp
    table = ad.AnnData(X=X, obs=obs, var=var, obsm={"spatial": xy})
    half = BIN_UM / mpp / 2
    circles = ShapesModel.parse(xy, geometry=0, radius=half, index=obs["location_id"].copy())
    squares = ShapesModel.parse(
        GeoDataFrame(geometry=circles.buffer(half, cap_style=3)), transformations={name: Identity()}
    )
    image = Image2DModel.parse(
        DataArray(_image(mpp, seed), dims=("c", "y", "x")), scale_factors=[2, 2, 2], transformations={name: Identity()}
    )
    sdata = SpatialData(
        images={f"{name}_full_image": image},
        shapes={shapes_key: squares},
        tables={
            "square_008um": TableModel.parse(table, region=shapes_key, region_key="region", instance_key="location_id")
        },
    )
    sdata.attrs["spatialdata_io_reader"] = "visium_hd"
    return sdata


def _model(n_genes: int, mpp: float, cache: Path):
    slides = hst.datasets.synthetic_visium_hd(2, tissue_mm2=0.3, n_genes=n_genes, microns_per_pixel=mpp, seed=0)
    return hst.tl.fit(slides, genes=50, encoder=_tiny_encoder(), max_epochs=5, refit=False, cache=cache, random_state=0)


def _child(args: argparse.Namespace) -> None:
    from spatialdata import read_zarr

    from hyperst._utils import quiet_third_party

    hst.settings.progress_bar = False
    cache = Path(tempfile.mkdtemp(prefix="hyperst_hd_"))
    t0 = time.perf_counter()
    model = _model(args.genes, args.mpp, cache / "train")
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = cache / "hd.zarr"
    with quiet_third_party():  # written and read back, so that the image is read lazily from disk, tile by tile
        _slide(args.child_bins, args.genes, args.counts, args.mpp, seed=1).write(store)
    sdata = read_zarr(store)
    build_s = time.perf_counter() - t0
    n = sdata.tables["square_008um"].n_obs
    out: dict = {"bins": n, "genes": args.genes, "fit_s": fit_s, "build_s": build_s}
    out["pseudospots"] = _step(lambda: hst.pp.pseudospots(sdata))
    out["pseudo_spots"] = int(sdata.tables["hyperst_pseudospots"].n_obs)
    features = cache / "features"
    kw = {"batch_size": args.batch_size, "cache": features}
    out["predict"] = _step(lambda: hst.tl.predict(sdata, model, inplace=False, **kw))
    out["predict_cached"] = _step(lambda: hst.tl.predict(sdata, model, **kw))
    out["to_bins"] = _step(lambda: hst.tl.to_bins(sdata))
    out["to_bins_table_mib"] = sdata.tables["hyperst_square_008um"].X.nbytes / 2**20
    shutil.rmtree(cache, ignore_errors=True)
    print("VISIUM_HD_JSON " + json.dumps(out))


def _run(n_bins: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child-bins", str(n_bins), "--genes", str(args.genes)]
    cmd += ["--counts", str(args.counts), "--mpp", str(args.mpp), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VISIUM_HD_JSON ")]
    if proc.returncode or not lines:
        print(proc.stderr[-4000:], file=sys.stderr)
        msg = f"the run for {n_bins} bins failed"
        raise RuntimeError(msg)
    return json.loads(lines[-1].removeprefix("VISIUM_HD_JSON "))


STEPS = ("pseudospots", "predict", "predict_cached", "to_bins")


def _table(rows: list[dict]) -> str:
    head = "| bins | pseudo-spots | " + " | ".join(f"{s} bins/s | {s} RSS rise MiB" for s in STEPS) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(STEPS))]
    for r in rows:
        cells = [f"{r['bins']:,}", f"{r['pseudo_spots']:,}"]
        for s in STEPS:
            cells += [f"{r['bins'] / r[s]['seconds']:,.0f}", f"{r[s]['rss_rise_mib']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for a, b in zip(rows, rows[1:], strict=False):
        ratio = ", ".join(f"{s} x{b[s]['seconds'] / a[s]['seconds']:.2f}" for s in STEPS)
        lines.append(f"\ntime {b['bins']:,} / {a['bins']:,} bins (x{b['bins'] / a['bins']:.2f}): {ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bins", type=int, nargs="+", default=[41_209, 164_836, 660_969])
    parser.add_argument("--genes", type=int, default=500, help="genes of the bins' table (default: 500)")
    parser.add_argument("--counts", type=float, default=30.0, help="mean counts per bin (default: 30)")
    parser.add_argument("--mpp", type=float, default=1.0, help="µm per pixel of the H&E (default: 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "visium_hd.json"))
    parser.add_argument("--child-bins", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_bins is not None:
        _child(args)
        return
    rows = []
    for n in args.bins:
        rows.append(_run(n, args))
        print(json.dumps(rows[-1]), flush=True)
    print(_table(rows))
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "child_bins")},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
