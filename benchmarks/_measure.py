"""Memory measurement shared by the benchmark scripts (imports nothing from hyperst).

The peak resident set of one step is read as ``VmHWM`` after resetting it to ``VmRSS`` through
``/proc/self/clear_refs`` (Linux); where that reset is refused, the rise of ``ru_maxrss`` is used, which shows a
step's peak only if it beats the process's earlier peak.
"""

from __future__ import annotations

import gc
import resource
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["measure_memory", "rss_kib"]


def rss_kib(field: str) -> int | None:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in KiB, or ``None`` where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure_memory(fn: Callable[[], Any], *, trace: bool = True) -> tuple[dict, Any]:
    """Run ``fn()``; return its peak memory (``rss_rise_bytes``, ``rss_source``, ``tracemalloc_peak_bytes``) and result.

    ``trace=False`` skips tracemalloc (it slows allocation-heavy steps).
    """
    gc.collect()
    reset = _reset_peak()
    before = rss_kib("VmRSS")
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    out = fn()
    traced = 0
    if trace:
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    peak = rss_kib("VmHWM")
    if reset and before is not None and peak is not None:
        rise, source = (peak - before) * 1024, "VmHWM - VmRSS"
    else:
        rise, source = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max) * 1024, "ru_maxrss delta"
    info = {"rss_rise_bytes": int(rise), "rss_source": source}
    if trace:
        info["tracemalloc_peak_bytes"] = int(traced)
    return info, out
