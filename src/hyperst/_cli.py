"""The ``hyperst`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

    from hyperst._model import HyperST

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import hyperst as hst
    from hyperst._constants import Keys, Provenance
    from hyperst._data import PatchReader, slide_layout
    from hyperst._validation import expected

    if args.n_slides < 2:
        raise ValueError(expected("n_slides", "at least 2 (train and held-out)", args.n_slides))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    slides = hst.datasets.synthetic(n_slides=args.n_slides, n_spots=args.n_spots, seed=args.seed)
    print(f"Built {len(slides)} synthetic Visium-like slides in {time.perf_counter() - t0:.1f} s (seed {args.seed}).")
    print(f"{'slide':<14}{'spots':>7}{'genes':>7}{'grid':>8}{'µm/px':>8}{'niche deg':>10}{'spot px':>9}{'niche px':>9}")
    montage = []
    for sdata in slides:
        layout = slide_layout(sdata)
        conn, _ = hst.pp.niche_graph(sdata, inplace=False)
        deg = np.asarray(conn.sum(1)).ravel()
        reader = PatchReader(sdata, layout)
        if len(montage) < 4:
            spot, niche = reader.read([0, len(reader) // 2])
            montage += [np.concatenate([spot[i], niche[i]], axis=2) for i in range(2)]
        table = sdata.tables[layout.elements.table_key]
        spot_px, niche_px = reader.sides
        print(
            f"{layout.elements.shapes_key:<14}{table.n_obs:>7}{table.n_vars:>7}{layout.grid.kind:>8}"
            f"{layout.microns_per_pixel:>8.2f}{np.median(deg):>10.0f}{spot_px:>9.0f}{niche_px:>9.0f}"
        )
    from PIL import Image

    Image.fromarray(np.concatenate(montage, axis=1).transpose(1, 2, 0)).save(out / "patches.png")
    train, test = slides[:-1], slides[-1]
    t1 = time.perf_counter()
    model = hst.tl.fit(
        train,
        genes=args.genes,
        encoder=args.encoder,
        weights=None if args.weights.lower() == "none" else args.weights,
        max_epochs=args.max_epochs,
        random_state=args.seed,
        cache=out / "features",
    )
    t_fit = time.perf_counter() - t1
    print(f"Fitted {model!r} in {t_fit:.0f} s on {len(train)} slides.")
    t1 = time.perf_counter()
    hst.tl.predict(test, model, cache=out / "features")
    t_pred = time.perf_counter() - t1
    scores = hst.tl.evaluate(test)
    keys = Keys()
    metrics = test.tables["table"].uns[keys.uns][Provenance.metrics]
    region = test.tables[keys.table].uns["spatialdata_attrs"]["region"]
    print(
        f"Predicted held-out slide {region} in {t_pred:.0f} s: "
        f"mean PCC {metrics['pcc_mean']['pooled']:.3f}, PCC@10 {metrics['pcc_at_10']['pooled']:.3f} over "
        f"{len(scores)} genes; best: {', '.join(scores.index[:3])}."
    )
    model.save(out / "model")
    figures = _figures(test, model, scores, out)
    print(f"Wrote {out / 'patches.png'} (spot | niche patches), {', '.join(figures)} and the model to {out / 'model'}.")
    print(f"Done in {time.perf_counter() - t0:.0f} s.")
    return 0


def _figures(test: SpatialData, model: HyperST, scores: pd.DataFrame, out: Path) -> list[str]:
    """Write the demo's figures (Poincaré disk, measured vs predicted, loss curves, gene scores); return their names."""
    import matplotlib

    matplotlib.use("Agg")  # a command line has no display
    import matplotlib.pyplot as plt

    import hyperst as hst
    from hyperst._constants import Keys

    hst.tl.poincare(test, streams=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    hst.pl.poincare(test, color=Keys().radius, ax=axes[0], show=False)
    hst.pl.poincare(test, color="domain", hierarchy=True, n_lines=20, ax=axes[1], show=False)
    drawn = {"poincare.png": fig}
    drawn["spatial.png"] = hst.pl.spatial(test, list(scores.index[:3]), show=False)
    drawn["history.png"] = hst.pl.history(model, show=False)
    drawn["gene_scores.png"] = hst.pl.gene_scores(test, show=False).figure
    for name, figure in drawn.items():
        figure.savefig(out / name, dpi=120)
        plt.close(figure)
    return list(drawn)


def _parser() -> argparse.ArgumentParser:
    from hyperst._version import __version__

    parser = argparse.ArgumentParser(
        prog="hyperst", description="Predict spatial gene expression from H&E histology (HyperST)."
    )
    parser.add_argument("--version", action="version", version=f"hyperst {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the embedded default on synthetic slides",
        description="Build synthetic Visium-like slides, fit HyperST on all but the last, predict the held-out "
        "slide from its H&E, and write a patch montage, the feature cache and the model to the output folder.",
    )
    demo.add_argument("--out", default="hyperst_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--n-slides", type=int, default=3, help="number of slides (default: %(default)s)")
    demo.add_argument("--n-spots", type=int, default=400, help="spots per slide (default: %(default)s)")
    demo.add_argument("--genes", type=int, default=100, help="genes to predict (default: %(default)s)")
    demo.add_argument(
        "--encoder", default="squidpy", help="image encoder, e.g. squidpy or resnet18 (default: %(default)s)"
    )
    demo.add_argument(
        "--weights",
        default="none",
        help="encoder weights: none (random, offline), DEFAULT (download) or a local file (default: %(default)s)",
    )
    demo.add_argument("--max-epochs", type=int, default=40, help="training epochs at most (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.set_defaults(func=_demo)
    from ._cli_tl import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``hyperst`` command line."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hyperst {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
