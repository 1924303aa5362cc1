"""Fit and predict on fixed seeds and save every number, to check that a refactor changes none of them.

Run it on two checkouts and compare::

    PYTHONPATH=<old checkout>/src python benchmarks/same_numbers.py --out /tmp/before.npz
    python benchmarks/same_numbers.py --out /tmp/after.npz
    python benchmarks/same_numbers.py --compare /tmp/before.npz /tmp/after.npz

Four fits on synthetic slides: squidpy features in the Lorentz geometry (validation and refit); the Euclidean
geometry with ``target="log2_cp10k"`` and ``monitor="mse"``; a random-weight resnet18; a LoRA fine-tune. Saved are
the module weights, predictions, conformal bounds, embeddings, radii, validation PCC and calibration. It runs on
model records and on the older ``training`` dicts alike.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _training(model, key: str):
    t = model.training
    return t[key] if isinstance(t, dict) else getattr(t, key)


def _run(out: str) -> None:
    import torch

    import hyperst as hst

    hst.settings.progress_bar = False
    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    slides = hst.datasets.synthetic(n_slides=4, n_spots=150, n_genes=40, seed=1)
    frozen = hst.tl.fit(slides[:3], genes=12, encoder="squidpy", max_epochs=4, views=2, cache=False, random_state=2)
    arrays |= {f"frozen/{k}": v.numpy() for k, v in frozen.module.state_dict().items()}
    arrays["frozen/val_pcc"] = np.array(_training(frozen, "val_pcc"), dtype=float)
    result = hst.tl.predict(slides[3], frozen, cache=False, inplace=False)
    arrays["frozen/pred"], arrays["frozen/lower"] = np.asarray(result.X), result.layers["hyperst_lower"]
    arrays |= {f"frozen/obsm/{k}": np.asarray(v) for k, v in result.obsm.items()}
    arrays["frozen/radius"] = result.obs["hyperst_radius"].to_numpy()
    euclid = hst.tl.fit(
        slides[:3], genes=12, encoder="squidpy", max_epochs=3, views=1, cache=False, geometry="euclidean",
        target="log2_cp10k", monitor="mse",
    )  # fmt: skip
    arrays |= {f"euclid/{k}": v.numpy() for k, v in euclid.module.state_dict().items()}
    arrays["euclid/pred"] = np.asarray(hst.tl.predict(slides[3], euclid, cache=False, inplace=False).X)
    small = {"patch_px": 32, "max_epochs": 2, "embed_dim": 16, "weights": None, "encoder": "resnet18"}
    resnet = hst.tl.fit(slides[0], genes=8, views=1, cache=False, refit=False, **small)
    arrays["resnet/pred"] = np.asarray(hst.tl.predict(slides[3], resnet, cache=False, inplace=False).X)
    lora = hst.tl.fit(slides[0], genes=8, finetune="lora", lora_blocks=2, batch_size=32, **small)
    arrays["lora/pred"] = np.asarray(hst.tl.predict(slides[3], lora, cache=False, inplace=False).X)
    arrays["lora/val_pcc"] = np.array(_training(lora, "val_pcc"), dtype=float)
    arrays["lora/calibration"] = np.array(_training(lora, "calibration")["plain"])
    np.savez(out, **arrays)
    print(f"wrote {len(arrays)} arrays to {out} ({hst.__file__})")


def _compare(a: str, b: str) -> int:
    before, after = np.load(a), np.load(b)
    missing = sorted(set(before) ^ set(after))
    differ = [k for k in before if k in after and not np.array_equal(before[k], after[k], equal_nan=True)]
    print(f"{len(before)} arrays; only in one file: {missing}; not bit-identical: {len(differ)}")
    for k in differ:
        print(f"  {k}: max |difference| {np.nanmax(np.abs(before[k] - after[k])):.3g}")
    return 1 if missing or differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the arrays here (.npz)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two files")
    args = parser.parse_args()
    if args.compare:
        return _compare(*args.compare)
    if not args.out:
        parser.error("pass --out or --compare")
    _run(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
