"""The ``hyperst`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import hyperst as hst
    from hyperst._data import PatchReader, slide_layout

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    slides = hst.datasets.synthetic(n_slides=args.n_slides, n_spots=args.n_spots, seed=args.seed)
    t_build = time.perf_counter() - t0
    print(f"Built {len(slides)} synthetic Visium-like slides in {t_build:.1f} s (seed {args.seed}).")
    header = f"{'slide':<14}{'spots':>7}{'genes':>7}{'grid':>8}{'µm/px':>8}{'niche deg':>10}{'spot px':>9}"
    header += f"{'niche px':>9}{'spots/s':>9}"
    print(header)
    montage = []
    for sdata in slides:
        layout = slide_layout(sdata)
        hst.pp.niche_graph(sdata)
        table = sdata.tables[layout.elements.table_key]
        deg = np.asarray(table.obsp["hyperst_connectivities"].sum(1)).ravel()
        reader = PatchReader(sdata, layout)
        t1 = time.perf_counter()
        n = 0
        for _, spot, niche in reader.iter_batches(args.batch_size, desc=layout.elements.shapes_key):
            n += len(spot)
            if len(montage) < 4:
                montage.append(np.concatenate([spot[0], niche[0]], axis=2))
        rate = n / (time.perf_counter() - t1)
        spot_px, niche_px = reader.sides
        print(
            f"{layout.elements.shapes_key:<14}{table.n_obs:>7}{table.n_vars:>7}{layout.grid.kind:>8}"
            f"{layout.microns_per_pixel:>8.2f}{np.median(deg):>10.0f}{spot_px:>9.0f}{niche_px:>9.0f}{rate:>9.0f}"
        )
    from PIL import Image

    grid = np.concatenate(montage, axis=1).transpose(1, 2, 0)
    Image.fromarray(grid).save(out / "patches.png")
    print(f"Spot | niche patches of the first spots: {out / 'patches.png'}")
    print(f"Done in {time.perf_counter() - t0:.1f} s.")
    return 0


def _parser() -> argparse.ArgumentParser:
    from hyperst import __version__

    parser = argparse.ArgumentParser(
        prog="hyperst", description="Predict spatial gene expression from H&E histology (HyperST)."
    )
    parser.add_argument("--version", action="version", version=f"hyperst {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the embedded default on synthetic slides",
        description="Build synthetic Visium-like slides, their niche graphs and spot/niche patches; write a "
        "montage of patches to the output folder.",
    )
    demo.add_argument("--out", default="hyperst_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--n-slides", type=int, default=3, help="number of slides (default: %(default)s)")
    demo.add_argument("--n-spots", type=int, default=1000, help="spots per slide (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=64, help="patches per batch (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.set_defaults(func=_demo)
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
