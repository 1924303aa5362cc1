"""Start-up time: ``import hyperst``, ``hyperst --help`` and the CLI's argument errors, against ``import anndata``.

Each command runs in a fresh interpreter ``--repeats`` times, one after another in the same run; the table shows
the median wall and CPU (user + system) seconds and the CPU ratio to ``python -c "import anndata"``::

    python benchmarks/startup.py

Writes ``benchmarks/results/startup.json``. The targets (issue "Fast wherever a user waits"): ``hyperst --help``
within 1 s of wall time and 1.5 x the CPU of importing anndata; argument errors of the CLI within 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "import anndata": [sys.executable, "-c", "import anndata"],
    "import hyperst": [sys.executable, "-c", "import hyperst"],
    "hyperst --help": [sys.executable, "-m", "hyperst._cli", "--help"],
    "predict, missing store": [sys.executable, "-m", "hyperst._cli", "predict", "/nonexistent.zarr", "--model", "m"],
    "fit, missing store": [sys.executable, "-m", "hyperst._cli", "fit", "/nonexistent.zarr", "--out", "/tmp/none"],
    "import hyperst.tl (first use)": [sys.executable, "-c", "import hyperst; hyperst.tl.fit"],
}


def _run(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "startup.json"))
    args = parser.parse_args()
    rows = {}
    for name, cmd in COMMANDS.items():
        _run(cmd)  # warm the file cache
        times = [_run(cmd) for _ in range(args.repeats)]
        rows[name] = {
            "wall_s": statistics.median(t[0] for t in times),
            "cpu_s": statistics.median(t[1] for t in times),
        }
    base = rows["import anndata"]["cpu_s"]
    print(f"{'command':<32}{'wall s':>8}{'CPU s':>8}{'CPU / anndata':>15}")
    for name, r in rows.items():
        r["cpu_ratio_to_anndata"] = r["cpu_s"] / base
        print(f"{name:<32}{r['wall_s']:>8.2f}{r['cpu_s']:>8.2f}{r['cpu_ratio_to_anndata']:>15.2f}")
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "python": sys.version.split()[0],
        "hyperst_cli": shutil.which("hyperst"),
        "repeats": args.repeats,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
