"""How far from the training pixel size do predictions hold? The measurement behind the pixel-size check.

Fits HyperST (squidpy features) on five HER2ST sections, then predicts the held-out section from copies of its
H&E resampled to other pixel sizes (the spots rescaled with it, so hyperst derives the new µm/px from the spot
diameter as it does for any slide). For each copy it reports the per-gene Pearson r between its predictions and
those of the original image (agreement: how much the answer changes when only the scan resolution does) and
the mean PCC against the measured counts::

    python benchmarks/scale.py

``--encoder mobilenet_v2`` measures the same with torchvision's ImageNet MobileNetV2 (``../shared/weights``),
one view per spot. Writes ``benchmarks/results/scale_<encoder>.json``.

The threshold that turns this into the accepted band of ``hyperst.tl.predict``'s pixel-size check is fixed in
advance: the band reaches as far as the mean agreement stays at least 0.95 (``docs/trust.md``). Agreement uses
no measured counts, so nothing here is tuned on held-out accuracy.
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
#: Resampling factors of the image side: > 1 shrinks (coarser pixels), < 1 enlarges.
FACTORS = [0.67, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
AGREEMENT = 0.95


def _resampled(sdata, factor: float):
    """The slide with its image resampled by ``1 / factor`` per side and the spots moved and sized with it."""
    from PIL import Image
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    (key,) = sdata.images
    (shapes_key,) = sdata.shapes
    node = sdata.images[key]
    rgb = np.asarray(node["scale0"]["image"] if hasattr(node, "keys") else node).transpose(1, 2, 0)
    h, w = rgb.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    image = Image2DModel.parse(
        DataArray(small.transpose(2, 0, 1), dims=("c", "y", "x")), transformations={shapes_key: Identity()}
    )
    gdf = sdata.shapes[shapes_key]
    xy = np.stack([gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()], axis=1) * (size[0] / w)
    circles = ShapesModel.parse(
        xy,
        geometry=0,
        radius=gdf["radius"].to_numpy() * (size[0] / w),
        index=gdf.index.copy(),
        transformations={shapes_key: Identity()},
    )
    return SpatialData(images={key: image}, shapes={shapes_key: circles}, tables={"table": sdata.tables["table"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/her2st"))
    parser.add_argument("--test", default="C3")
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--factors", type=float, nargs="+", default=FACTORS)
    parser.add_argument("--encoder", default="squidpy", help="'squidpy', or 'mobilenet_v2' with --weights")
    parser.add_argument(
        "--weights",
        default=str(Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2-b0353104.pth"),
        help="state dict of torchvision's ImageNet MobileNetV2 (for --encoder mobilenet_v2)",
    )
    parser.add_argument("--cache", default="/tmp/hyperst_bench_cache")
    parser.add_argument("--out", default=None, help="(default: benchmarks/results/scale_<encoder>.json)")
    args = parser.parse_args()
    args.out = args.out or str(Path(__file__).with_name("results") / f"scale_{args.encoder}.json")
    from conftest import her2st_slide

    hst.settings.progress_bar = False
    slides = {s: her2st_slide(s, Path(args.data)) for s in SECTIONS}
    train = [slides[s] for s in SECTIONS if s != args.test]
    encoder, views = args.encoder, 8
    if encoder == "mobilenet_v2":  # pretrained features, passed as a module (the registry has no MobileNet yet)
        import torch
        from torchvision.models import mobilenet_v2

        encoder = mobilenet_v2()
        encoder.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        encoder.classifier = torch.nn.Identity()
        views = 1  # a CPU budget: one view per spot
    t0 = time.perf_counter()
    model = hst.tl.fit(
        train,
        genes=args.genes,
        encoder=encoder,
        views=views,
        max_epochs=args.max_epochs,
        cache=args.cache,
        random_state=0,
    )
    t_fit = time.perf_counter() - t0
    truth = np.log2(1 + slides[args.test].tables["table"][:, model.genes].X.toarray())
    reference = None
    rows = []
    for factor in sorted(args.factors, key=lambda f: f != 1.0):  # the original first
        slide = slides[args.test] if factor == 1.0 else _resampled(slides[args.test], factor)
        t0 = time.perf_counter()
        result = hst.tl.predict(slide, model, inplace=False, cache=False)
        pred = np.asarray(result.X)
        if reference is None:
            reference = pred
        rows.append(
            {
                "factor": factor,
                "microns_per_pixel": result.uns["hyperst"]["microns_per_pixel"],
                "agreement": float(np.nanmean(gene_metrics(reference, pred)["pearson"])),
                "mean_pcc": float(np.nanmean(gene_metrics(truth, pred)["pearson"])),
                "check_ok": bool(result.uns["hyperst"]["qc"]["checks"]["microns_per_pixel"]["ok"]),
                "predict_s": time.perf_counter() - t0,
            }
        )
    rows.sort(key=lambda r: r["factor"])
    trained = model.training.microns_per_pixel_range
    span = f"{trained[0]:.3f}-{trained[1]:.3f} µm/px"
    print(f"{args.encoder}, held-out {args.test}, trained at {span}, {args.genes} genes")
    print(f"{'factor':>7}{'µm/px':>8}{'agreement':>11}{'mean PCC':>10}{'check':>7}")
    for r in rows:
        ok = "ok" if r["check_ok"] else "warn"
        print(f"{r['factor']:>7.2f}{r['microns_per_pixel']:>8.3f}{r['agreement']:>11.3f}{r['mean_pcc']:>10.3f}{ok:>7}")
    held = [r for r in rows if r["agreement"] >= AGREEMENT]
    band = [min(r["microns_per_pixel"] for r in held), max(r["microns_per_pixel"] for r in held)]
    print(f"agreement >= {AGREEMENT} from {band[0]:.3f} to {band[1]:.3f} µm/px (of the factors tried)")
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "hyperst": hst.__version__,
        "test_section": args.test,
        "encoder": args.encoder,
        "trained_microns_per_pixel": list(trained),
        "fit_s": t_fit,
        "agreement_threshold": AGREEMENT,
        "band_microns_per_pixel": band,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
