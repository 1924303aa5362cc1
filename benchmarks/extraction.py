"""Extraction throughput of ``hst.tl.cache_features`` with 1 and 2 processes, on a CPU-bound encoder.

Prints a table and writes JSON (default ``benchmarks/results/extraction.json``)::

    nice -n 10 python benchmarks/extraction.py                      # 4 slides x 80 spots, resnet18, 1 view
    nice -n 10 python benchmarks/extraction.py --slides 8 --spots 200 --encoder resnet50 --repeats 2
    python benchmarks/extraction.py --repeats 2 --dask-env          # also dask's default worker environment

Synthetic slides (``hst.datasets.synthetic``) are written to zarr stores first, as a cohort on disk is; every
measurement passes the store paths, so each process reads its own slides. The encoder has random weights
(``weights=None``: offline, the same arithmetic as pretrained ones) and runs with one torch thread per process:

- ``1 process``: ``cache_features(paths)`` in this process (``torch.set_num_threads(1)``), slide after slide;
- ``2 processes``: a ``dask.distributed.LocalCluster`` of 2 single-threaded worker processes, started and
  warmed (hyperst imported) before the clock starts, then ``cache_features(paths, client=client)``. The
  cluster's start-up (new interpreters importing torch) is reported apart: it is paid once per call of
  ``cache_features(..., n_workers=2)``, not per slide. The workers get the dask configuration that
  ``cache_features`` gives the ones it starts (``worker_environment``: no ``MALLOC_TRIM_THRESHOLD_``);
- ``2 procs, dask env`` (with ``--dask-env``): the same with dask's default worker environment, as a cluster a
  user starts has it.

Each measurement writes into a fresh cache folder, so every slide is computed. Rates are spots/s (both patches of
every spot, ``--views`` views). CPU time is the sum over the processes that computed (``time.process_time``).
The 1- and 2-process measurements alternate (``--repeats`` rounds) so that a change in the machine's load hits
both; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _machine() -> dict:
    model = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(), "python": sys.version.split()[0]}


def _stores(hst, n_slides: int, n_spots: int, root: Path) -> list[str]:
    paths = []
    for i, sdata in enumerate(hst.datasets.synthetic(n_slides=n_slides, n_spots=n_spots, n_genes=20, seed=0)):
        paths.append(str(root / f"slide{i}.zarr"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata.write(paths[-1])
    return paths


def _warm() -> int:
    """Import what a task needs (on a worker) and report its torch threads."""
    import torch

    import hyperst.tl  # noqa: F401

    return torch.get_num_threads()


def _one_process(hst, paths: list[str], args: argparse.Namespace, cache: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    cpu0, t0 = time.process_time(), time.perf_counter()
    table = hst.tl.cache_features(
        paths, encoder=args.encoder, weights=None, cache=cache, views=args.views, batch_size=args.batch_size
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return _row("1 process", table, wall, cpu, startup=0.0)


def _two_processes(hst, paths: list[str], args: argparse.Namespace, cache: Path, *, dask_env: bool = False) -> dict:
    from contextlib import nullcontext

    from distributed import Client, LocalCluster

    from hyperst.tl._cohort import worker_environment

    t0 = time.perf_counter()
    # the workers cache_features(n_workers=2) starts, or (dask_env) dask's defaults, as a user's own cluster has
    with nullcontext() if dask_env else worker_environment():
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    threads = sorted(client.run(_warm).values())
    startup = time.perf_counter() - t0
    try:
        cpu0 = sum(client.run(time.process_time).values())
        t0 = time.perf_counter()
        table = hst.tl.cache_features(
            paths,
            encoder=args.encoder,
            weights=None,
            cache=cache,
            views=args.views,
            batch_size=args.batch_size,
            client=client,
        )
        wall = time.perf_counter() - t0
        cpu = sum(client.run(time.process_time).values()) - cpu0
    finally:
        client.close()
        cluster.close()
    label = "2 procs, dask env" if dask_env else "2 processes"
    return _row(label, table, wall, cpu, startup=startup, worker_threads=threads)


def _row(label: str, table, wall: float, cpu: float, *, startup: float, **extra) -> dict:
    if not (table["status"] == "cached").all():
        raise RuntimeError(table.to_string())
    spots = int(table["spots"].sum())
    return {
        "run": label,
        "spots": spots,
        "wall_s": round(wall, 2),
        "spots_per_s": round(spots / wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_per_wall": round(cpu / wall, 2),
        "startup_s": round(startup, 2),
        "slide_seconds": [round(s, 2) for s in table["seconds"]],
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--spots", type=int, default=80)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dask-env", action="store_true", help="also 2 workers in dask's default environment")
    parser.add_argument("--out", default=str(HERE / "results" / "extraction.json"))
    args = parser.parse_args()
    import hyperst as hst

    hst.settings.progress_bar = False
    hst.settings.verbosity = "warning"
    root = Path(tempfile.mkdtemp(prefix="hyperst_extraction_"))
    try:
        paths = _stores(hst, args.slides, args.spots, root)
        load_before = os.getloadavg()
        runs = []
        for r in range(args.repeats):
            runs.append(_one_process(hst, paths, args, root / f"c1_{r}") | {"round": r})
            runs.append(_two_processes(hst, paths, args, root / f"c2_{r}") | {"round": r})
            if args.dask_env:
                runs.append(_two_processes(hst, paths, args, root / f"c3_{r}", dask_env=True) | {"round": r})
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    one = [x for x in runs if x["run"] == "1 process"]
    two = [x for x in runs if x["run"] == "2 processes"]
    speedup = [round(b["spots_per_s"] / a["spots_per_s"], 2) for a, b in zip(one, two, strict=True)]
    print(
        f"{'run':<18}{'round':>6}{'spots':>7}{'wall s':>8}{'spots/s':>9}{'CPU s':>8}{'CPU/wall':>9}{'start-up s':>11}"
    )
    for x in runs:
        print(
            f"{x['run']:<18}{x['round']:>6}{x['spots']:>7}{x['wall_s']:>8.1f}{x['spots_per_s']:>9.2f}"
            f"{x['cpu_s']:>8.1f}{x['cpu_per_wall']:>9.2f}{x['startup_s']:>11.1f}"
        )
    print(
        f"speed-up of 2 processes over 1 (per round): {speedup}; load average before {load_before}, after {load_after}"
    )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "settings": vars(args) | {"weights": None, "torch_threads_per_process": 1},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "runs": runs,
        "speedup_2_over_1": speedup,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
