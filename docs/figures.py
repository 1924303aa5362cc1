"""Make the README's figure from the real HER2ST sections in ``../shared/data/her2st``.

HyperST is fitted on four sections of patient C (C2-C5, squidpy features, 200 HMHVG genes, ``tl.fit`` defaults)
and predicts the held-out section C6 from its H&E. The figure shows C6's spot embeddings in the Poincaré disk and,
for the gene predicted best on C6, measured vs predicted log2(1 + counts) over the H&E::

    python docs/figures.py                 # writes docs/_static/her2st_c6.png and prints the numbers in its caption
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import hyperst as hst

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import her2st_slide  # noqa: E402  (the h5ad + JPEG of ../shared/data as SpatialData)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/her2st"))
    parser.add_argument("--out", default=str(ROOT / "docs/_static/her2st_c6.png"))
    args = parser.parse_args()
    hst.settings.progress_bar = False
    data = Path(args.data)
    cache = Path(tempfile.mkdtemp(prefix="hyperst_figures_"))
    train = [her2st_slide(s, data) for s in ("C2", "C3", "C4", "C5")]
    model = hst.tl.fit(train, genes=200, encoder="squidpy", random_state=0, cache=cache, accelerator="cpu")
    test = her2st_slide("C6", data)
    hst.tl.predict(test, model, cache=cache)
    scores = hst.tl.evaluate(test)
    metrics = test.tables["table"].uns["hyperst"]["metrics"]
    gene = scores.index[0]

    fig = plt.figure(figsize=(14, 4.6), layout="constrained")
    ax_disk, ax_measured, ax_predicted = fig.subplots(1, 3, width_ratios=[1, 1, 1])
    hst.pl.poincare(test, color="hyperst_radius", ax=ax_disk, show=False, title="C6 spots in the Poincaré disk")
    hst.pl.spatial(test, [gene], ax=[ax_measured, ax_predicted], show=False)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    print(
        f"C6 held out, trained on C2-C5: mean PCC {metrics['pcc_mean']['pooled']:.3f}, "
        f"PCC@50 {metrics['pcc_at_50']['pooled']:.3f} over {len(scores)} genes; "
        f"shown: {gene} (PCC {scores.loc[gene, 'pearson']:.3f}); curvature -{model.curvature:.3f}"
    )


if __name__ == "__main__":
    main()
