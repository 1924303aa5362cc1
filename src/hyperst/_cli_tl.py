"""``hyperst features``, ``fit``, ``predict`` and ``evaluate``: the ``tl`` functions on SpatialData ``.zarr`` stores."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ._constants import DEFAULT_KEY, MONITORS, TARGETS, Keys, Provenance

__all__ = ["add_commands"]


def _check_store(path: str) -> None:
    """Refuse a path that cannot be a SpatialData store, before anything heavy is imported or read."""
    p = Path(path)
    if not p.exists():
        msg = f"No SpatialData store at `{p}`: pass the path of a `.zarr` folder written by `SpatialData.write`."
        raise FileNotFoundError(msg)
    if not p.is_dir() or not ((p / "zarr.json").is_file() or (p / ".zgroup").is_file()):
        what = "a file" if p.is_file() else "a folder without `zarr.json`"
        msg = (
            f"`{p}` is not a readable SpatialData store ({what}): pass a `.zarr` folder written by `SpatialData.write`."
        )
        raise ValueError(msg)


def _check_model(path: str) -> None:
    """Refuse a path that holds no model, before anything heavy is imported or read."""
    p = Path(path)
    if not (p / "config.json").is_file():
        why = "the folder does not exist" if not p.exists() else "`config.json` not found"
        msg = f"No hyperst model at `{p}`: {why}. Pass the folder written by `hyperst fit --out` or `HyperST.save`."
        raise FileNotFoundError(msg)


def _read(path: str) -> Any:
    _check_store(path)
    import spatialdata as sd

    p = Path(path)
    try:
        return sd.read_zarr(p)
    except Exception as err:  # zarr and spatialdata raise many types for a folder that is not a store
        msg = f"`{p}` is not a readable SpatialData store ({type(err).__name__}: {err})."
        raise ValueError(msg) from err


def _weights(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _fit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        msg = f"`--out {out}` exists and is not a hyperst model folder: name a new or empty folder."
        raise ValueError(msg)
    for path in args.slides:
        _check_store(path)
    import hyperst as hst

    slides = [_read(p) for p in args.slides]
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {
        "max_epochs": args.max_epochs,
        "target": args.target,
        "random_state": args.seed,
        "monitor": args.monitor,
    }
    if args.lr is not None:
        kwargs["lr"] = args.lr
    if args.embed_dim is not None:
        kwargs["embed_dim"] = args.embed_dim
    model = hst.tl.fit(
        slides,
        genes=args.genes,
        encoder=args.encoder,
        weights=_weights(args.weights),
        table_key=args.table_key,
        image_key=args.image_key,
        layer=args.layer,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        cache=True if args.cache is None else args.cache,
        **kwargs,
    )
    model.save(out)
    val = model.training.val_mean_pcc
    val_text = f"; validation mean PCC {val:.3f}" if val is not None else ""
    print(f"Fitted {model!r} on {len(slides)} slide(s) in {time.perf_counter() - t0:.0f} s{val_text}.")
    print(f"Wrote the model to {out}.")
    return 0


def _features(args: argparse.Namespace) -> int:
    from ._validation import expected

    for name, value in (("--workers", args.workers), ("--batch-size", args.batch_size), ("--views", args.views)):
        if value < 1:
            raise ValueError(expected(name, "a positive integer", value))
    for path in args.slides:
        _check_store(path)
    import hyperst as hst

    summary = hst.tl.cache_features(
        args.slides,
        encoder=args.encoder,
        weights=_weights(args.weights),
        table_key=args.table_key,
        image_key=args.image_key,
        cache=True if args.cache is None else args.cache,
        batch_size=args.batch_size,
        n_workers=args.workers,
        views=args.views,
        random_state=args.seed,
    )
    print(summary.drop(columns=["store", "error"]).to_string(index=False))
    counts = summary["status"].value_counts()
    n = {k: int(counts.get(k, 0)) for k in ("cached", "skipped", "failed")}
    seconds = summary["seconds"].sum()
    print(f"{n['cached']} cached, {n['skipped']} skipped, {n['failed']} failed ({seconds:.0f} s of slide work).")
    for _, row in summary[summary["status"] == "failed"].iterrows():
        print(f"hyperst features: {row['store']}: {row['error']}", file=sys.stderr)
    return 1 if n["failed"] else 0


def _predict(args: argparse.Namespace) -> int:
    import hyperst as hst

    _check_store(args.slide)
    _check_model(args.model)
    if args.out is not None and Path(args.out).exists():
        msg = f"`--out {args.out}` exists: name a new path for the output store."
        raise ValueError(msg)
    sdata = _read(args.slide)
    model = hst.HyperST.load(args.model)
    table = Keys(args.key_added).table
    if args.out is None and table in sdata.tables and not args.overwrite:
        msg = (
            f"`{args.slide}` already holds a table `{args.key_added}`: pass `--overwrite` to replace it, "
            "`--key-added` to write beside it, or `--out` to write a new store."
        )
        raise ValueError(msg)
    if args.out is not None and Path(args.out).exists():
        msg = f"`--out {args.out}` exists: name a new path for the output store."
        raise ValueError(msg)
    before = {(kind, name) for kind in ("shapes", "tables") for name in getattr(sdata, kind)}
    t0 = time.perf_counter()
    hst.tl.predict(
        sdata,
        model,
        key_added=args.key_added,
        table_key=args.table_key,
        image_key=args.image_key,
        coverage=None if args.coverage == 0 else args.coverage,
    )
    n = sdata.tables[table].n_obs
    print(f"Predicted {len(model.genes)} genes for {n} spots in {time.perf_counter() - t0:.0f} s.")
    from hyperst._utils import quiet_third_party

    if args.out is not None:
        with quiet_third_party():
            sdata.write(args.out)
        print(f"Wrote the slide with its predictions to {args.out} (table `{table}`, and layers/obsm).")
    else:
        if table in sdata.tables and args.overwrite:
            sdata.delete_element_from_disk(table)
        # pseudo-spots that predict summed from Visium HD bins or cells, shapes before the tables annotating them
        added = [n for k in ("shapes", "tables") for n in getattr(sdata, k) if (k, n) not in before and n != table]
        with quiet_third_party():
            for name in added:
                sdata.write_element(name)
            sdata.write_element(table)
        also = f" and the pseudo-spots ({', '.join(f'`{n}`' for n in added)})" if added else ""
        print(f"Added table `{table}` (predictions, intervals, embeddings){also} to {args.slide}.")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    import hyperst as hst
    from hyperst._data import resolve_elements

    sdata = _read(args.slide)
    keys = Keys(args.key_added)
    if keys.table not in sdata.tables:
        msg = f"`{args.slide}` has no predictions table `{keys.table}`: run `hyperst predict` on it first."
        raise KeyError(msg)
    pred = sdata.tables[keys.table]
    table_key = args.table_key or resolve_elements(sdata, need_image=False).table_key
    table = sdata.tables[table_key].copy()
    rows = table.obs_names.get_indexer(pred.obs_names)
    cols = table.var_names.get_indexer(pred.var_names)
    if (rows < 0).any():
        msg = f"Table `{keys.table}` annotates spots missing from table `{table_key}`: predict again."
        raise ValueError(msg)
    layer = np.full(table.shape, np.nan, dtype=np.float32)
    keep = cols >= 0
    layer[np.ix_(rows, cols[keep])] = np.asarray(pred.X)[:, keep]
    table.layers[keys.layer] = layer
    target = pred.uns.get(keys.uns, {}).get(Provenance.target, TARGETS[0])
    from hyperst._utils import quiet_loggers

    with quiet_loggers("hyperst"):  # its "Adding ..." names the in-memory copy, which is not written back
        scores = hst.tl.evaluate(table, layer=keys.layer, target=target, key_added=args.key_added)
    metrics = table.uns[keys.uns][Provenance.metrics]
    n_genes = len(scores)
    print(f"{'metric':<12}{'pooled':>10}")
    for key in ("pcc_mean", "pcc_at_10", "pcc_at_50", "pcc_at_200", "mse", "mae"):
        if key not in metrics:
            continue
        k = int(key.rsplit("_", 1)[1]) if key.startswith("pcc_at_") else 0
        if k > n_genes:  # the mean over all genes, not over the best k: not the metric its name says
            print(f"{key:<12}{'n/a':>10}  (only {n_genes} genes)")
        else:
            print(f"{key:<12}{metrics[key]['pooled']:>10.3f}")
    print(f"Best genes: {', '.join(scores.index[:5])}; {n_genes} genes evaluated ({target} target).")
    print(f"`{args.slide}` is not modified" + ("." if args.csv else "; pass `--csv` to keep the per-gene scores."))
    if args.csv:
        scores.to_csv(args.csv)
        print(f"Wrote per-gene scores to {args.csv}.")
    return 0


def _add_features(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    features = sub.add_parser(
        "features",
        help="build the feature caches of many stores ahead of `hyperst fit`",
        description="Compute the image features of every spot of each SpatialData store with a frozen encoder "
        "and cache them where `hyperst fit` (same encoder, weights, views and seed) reads them. Slides already "
        "cached are skipped; a slide that fails is reported (exit status 1) and the others finish.",
    )
    features.add_argument("slides", nargs="+", help="SpatialData .zarr stores")
    features.add_argument("--encoder", default="resnet50", help="image encoder (default: %(default)s)")
    features.add_argument("--weights", default="DEFAULT", help="DEFAULT, none or a local file (default: %(default)s)")
    features.add_argument("--cache", default=None, help="cache folder (default: the hyperst cache directory)")
    features.add_argument("--workers", type=int, default=1, help="local worker processes (default: %(default)s)")
    features.add_argument("--views", type=int, default=8, help="dihedral views per patch (default: %(default)s)")
    features.add_argument("--batch-size", type=int, default=32, help="spots per batch (default: %(default)s)")
    features.add_argument("--seed", type=int, default=0, help="seed of random weights (default: %(default)s)")
    features.set_defaults(func=_features)
    return features


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``features``, ``fit``, ``predict`` and ``evaluate`` to the ``hyperst`` parser."""
    features = _add_features(sub)
    fit = sub.add_parser(
        "fit",
        help="train a model on SpatialData .zarr stores with counts",
        description="Train HyperST on one or more SpatialData stores (H&E image, spot circles, table of raw "
        "counts) and save the model folder.",
    )
    fit.add_argument("slides", nargs="+", help="SpatialData .zarr stores to train on")
    fit.add_argument("--out", required=True, help="model folder to write")
    fit.add_argument("--genes", type=int, default=200, help="genes to predict (default: %(default)s)")
    fit.add_argument("--encoder", default="resnet50", help="image encoder (default: %(default)s)")
    fit.add_argument("--weights", default="DEFAULT", help="DEFAULT, none or a local file (default: %(default)s)")
    fit.add_argument("--target", default=TARGETS[0], choices=TARGETS, help="(default: %(default)s)")
    fit.add_argument("--max-epochs", type=int, default=200, help="(default: %(default)s)")
    fit.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    fit.add_argument(
        "--monitor",
        default=MONITORS[0],
        choices=MONITORS,
        help="what early stopping watches: the whole loss or the prediction MSE (default: %(default)s)",
    )
    fit.add_argument("--embed-dim", type=int, default=None, help="embedding width (default: sized to the encoder)")
    fit.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    fit.add_argument("--layer", default=None, help="layer of raw counts (default: X)")
    fit.add_argument("--checkpoint-dir", default=None, help="folder for per-epoch checkpoints")
    fit.add_argument("--resume", action="store_true", help="continue an interrupted fit from --checkpoint-dir")
    fit.add_argument("--cache", default=None, help="feature cache folder (default: the hyperst cache directory)")
    predict = sub.add_parser(
        "predict",
        help="predict expression for a SpatialData .zarr store",
        description="Predict expression, intervals and embeddings from the H&E of a SpatialData store. Without "
        "--out, only the new predictions table is added to the store; nothing else in it changes.",
    )
    predict.add_argument("slide", help="SpatialData .zarr store")
    predict.add_argument("--model", required=True, help="model folder written by `hyperst fit`")
    predict.add_argument("--out", default=None, help="write a new store with everything instead")
    predict.add_argument("--key-added", default=DEFAULT_KEY, help="(default: %(default)s)")
    predict.add_argument("--coverage", type=float, default=0.9, help="interval coverage, 0 for none (default: 0.9)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing predictions table")
    evaluate = sub.add_parser(
        "evaluate",
        help="score predictions against measured counts",
        description="Compare the predictions table of a store with its measured counts: mean PCC, PCC@k, MSE, MAE.",
    )
    evaluate.add_argument("slide", help="SpatialData .zarr store holding counts and a predictions table")
    evaluate.add_argument("--key-added", default=DEFAULT_KEY, help="predictions table (default: %(default)s)")
    evaluate.add_argument("--csv", default=None, help="write the per-gene scores to this CSV file")
    for p in (features, fit, predict, evaluate):
        p.add_argument("--table-key", default=None, help="table of counts (default: inferred)")
    for p in (features, fit, predict):
        p.add_argument("--image-key", default=None, help="H&E image element (default: inferred)")
    fit.set_defaults(func=_fit)
    predict.set_defaults(func=_predict)
    evaluate.set_defaults(func=_evaluate)
