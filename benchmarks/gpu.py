"""GPU check: hyperst's GPU paths in one prepared run (AMP, LoRA on the UNI architecture, DDP, throughput, determinism).

How to run it on the device machine (one NVIDIA H100/H200, no network; see ``docs/benchmarks.md``, "GPU check")
---------------------------------------------------------------------------------------------------------------
The device machine's ``python3`` (3.12) already holds torch, torchvision, lightning, timm, peft, safetensors,
scikit-image, h5py, numba, xarray and matplotlib, but not spatialdata, squidpy, scanpy, anndata, dask, zarr,
geoopt and their own needs. The local ``.venv`` cannot travel (7 GiB against the 64 MiB carry limit, and it is
Python 3.11), so those packages travel as 45 cp312 wheels in ``.whl/`` (42 MiB, git-ignored; the working tree
itself is about 6 MiB). hyperst is not installed there: ``PYTHONPATH`` points at ``src``. Build ``.whl`` here,
once, with the pinned list in ``docs/benchmarks.md`` ("GPU check"), then call the device tool with::

    run(carry=[".whl"], timeout_s=400, command=
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
        ".whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 || exit; "
        "python3 benchmarks/gpu.py --out $OUT --budget-s 330")

The script stops itself at ``--budget-s`` (each part in a child process killed at its own limit), so the call
ends inside ``timeout_s`` with its JSON written. A start (about 90 s) plus 400 s leaves about 400 s of the
session's 15 device minutes for one rerun of the parts that failed, on the still warm machine, after a fix::

    run(carry=[".whl"], timeout_s=300, command="<the same install and export>; "
        "python3 benchmarks/gpu.py --out $OUT --budget-s 240 --parts lora,ddp")

(``/tmp/site`` and the work folder survive on a warm machine, so the install is then a no-op.) Then
``give_back``. What comes back is ``$OUT/gpu_<gpu>.json`` and ``$OUT/gpu_log.txt``: copy the JSON to
``benchmarks/results/`` and put its table in ``docs/benchmarks.md``.

What it measures (parts, in order; ``--parts`` picks some)
----------------------------------------------------------
``env``
    versions, the GPU, the driver; it runs first, and an import error there stops the run (every part would fail).
``matmul``
    the GPU's bf16 (and fp32) matrix-product rate, ``torch.matmul`` of two 8192x8192 matrices, mean of 10 after 3
    warm-ups: the hardware limit that ``throughput`` divides by.
``precision``
    three fits on the same synthetic slides (torchvision ``resnet50``, ``weights=None``, cached features):
    ``32-true``, ``bf16-mixed``, ``16-mixed`` (the GPU default); losses finite and the mixed-precision predictions
    within ``TOLERANCES`` of the float32 fit's.
``lora``
    ``finetune="lora"`` on the UNI architecture (``"hf-hub:MahmoodLab/UNI"`` with ``weights=None``: timm's
    ``vit_large_patch16_224``, ``init_values=1e-5``, random weights, built offline; LoRA on ``attn.qkv`` of the
    last 11 of 24 blocks, as ``tl.fit`` does) for a few steps at the default GPU precision; losses finite,
    adapters moved, and save -> load -> predict gives the same numbers.
``ddp``
    the ``precision`` fit with ``strategy="ddp"`` on one device.
``ddp_all``
    the same on every GPU (``devices=torch.cuda.device_count()``; skipped with one GPU). On CPU (``--device cpu``)
    it runs on 2 processes, so the dry run exercises Lightning's process launcher.
``determinism``
    the documented settings (``docs/model.md``, "Devices": ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set before Python
    starts, plus ``fit``'s own ``deterministic="warn"``): two processes, each fitting twice with fresh feature
    caches; whether predictions repeat within a process and across processes, and the warnings torch gave.
``throughput``
    feature extraction of the whole pipeline (:func:`hyperst.tl._features.extract_features` on a slide read
    lazily from zarr: patches cropped, resized, encoded) against the encoder's bare forward on uint8 patches
    already on the GPU (float32, as the pipeline runs it, and bf16 autocast), for ``resnet50`` and the ViT-L,
    batch sizes 64 to 512; spots/s count two patches (spot + niche) per spot; the encoder's achieved TFLOP/s
    (FLOPs per image from ``torch.utils.flop_counter``) over the ``matmul`` part's bf16 rate is its share of the
    hardware limit.

Every part runs in its own child process with its own time limit (``PART_BUDGET_S``, trimmed to what is left of
``--budget-s``), inside a try/except that records the traceback: a failing or hanging part costs its own
minutes, not the run. The JSON is rewritten after every part (and each child rewrites its own after every step),
so a timeout still leaves results.

Dry run on CPU (about 2 minutes on a small shared machine; ``tests/test_gpu_script.py`` runs it)::

    python benchmarks/gpu.py --device cpu --tiny --out /tmp/gpu_dry

``--tiny`` shrinks everything (slides of tens of spots, ``resnet18`` and ``timm:vit_tiny_patch16_224`` for
``resnet50`` and the ViT-L, 1-2 epochs, batch sizes 8 and 16). On CPU, ``16-mixed`` is tried and recorded as
skipped with Lightning's reason; ``bf16-mixed`` runs. Figures from a CPU run mean nothing for a GPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PARTS = ("env", "matmul", "precision", "lora", "ddp", "ddp_all", "determinism", "throughput")

#: Seconds each part may take on a GPU (the child process is killed after that); ``--tiny`` uses ``TINY_BUDGET_S``.
PART_BUDGET_S = {
    "env": 30,
    "matmul": 30,
    "precision": 75,
    "lora": 100,
    "ddp": 50,
    "ddp_all": 70,
    "determinism": 75,
    "throughput": 150,
}
TINY_BUDGET_S = {
    "env": 30,
    "matmul": 20,
    "precision": 60,
    "lora": 60,
    "ddp": 45,
    "ddp_all": 60,
    "determinism": 60,
    "throughput": 60,
}
#: Why ``16-mixed`` is not run on CPU: Lightning would run something else under its name.
CPU_16_MIXED = (
    "Lightning replaces it on CPU: `Trainer(accelerator='cpu', precision='16-mixed')` warns that AMP with fp16 is "
    "not supported on CPU and uses bf16-mixed instead (lightning/pytorch/trainer/connectors/accelerator_connector.py), "
    "so a CPU run would repeat the bf16-mixed fit"
)
#: A part is not started with less than this many seconds left of ``--budget-s``.
MIN_PART_S = 8

#: The checks' tolerances. Predictions are log2(1 + counts) of the genes, per spot.
TOLERANCES = {
    # mixed-precision training vs a float32 fit of the same data, seed and epochs: the RMS of the difference
    # over the standard deviation of the float32 predictions, and their Pearson correlation (all spots x genes)
    "precision_rel_rms_max": 0.05,
    "precision_pcc_min": 0.99,
    # save -> load -> predict against predict before saving (both on CPU): the same numbers
    "lora_roundtrip_max_abs": 1e-5,
    # the documented determinism settings: predictions repeat exactly
    "determinism_max_abs": 0.0,
}

# What each part runs on: a GPU (full) or the CPU dry run (--tiny).
FULL = {
    "fit_slides": {"n_slides": 3, "n_spots": 300, "n_genes": 100, "seed": 0},
    "fit": {
        "genes": 50,
        "encoder": "resnet50",
        "weights": None,
        "views": 1,
        "max_epochs": 6,
        "patience": 100,
        "refit": False,
        "batch_size": 128,
        "random_state": 0,
        "feature_batch_size": 128,
    },
    "lora_slides": {"n_slides": 2, "n_spots": 96, "n_genes": 60, "seed": 1},
    "lora_predict_slide": {"n_slides": 1, "n_spots": 24, "n_genes": 60, "seed": 2},
    "lora": {
        "genes": 20,
        "encoder": "hf-hub:MahmoodLab/UNI",
        "weights": None,
        "finetune": "lora",
        "microns_per_pixel": 1.0,  # synthetic slides' pixel size: slides of a few spots show no grid to derive it
        "max_epochs": 2,
        "patience": 100,
        "batch_size": 32,
        "feature_batch_size": 64,
        "lr": 1e-4,
        "random_state": 0,
    },
    "matmul_n": 8192,
    # spots per step *per process* in `ddp_all`: each rank sees 1/world_size of the training spots (see `_ddp_fit`)
    "ddp_all_batch_size": 32,
    "throughput_slide": {"n_slides": 1, "n_spots": 2048, "n_genes": 20, "seed": 3},
    "throughput_encoders": {"resnet50": 224, "hf-hub:MahmoodLab/UNI": 224},
    "batch_sizes": [64, 128, 256, 512],
    "forward_min_s": 1.0,
}
TINY = {
    "fit_slides": {"n_slides": 2, "n_spots": 40, "n_genes": 30, "seed": 0},
    "fit": {
        "genes": 10,
        "encoder": "resnet18",
        "weights": None,
        "patch_px": 32,
        "views": 1,
        "max_epochs": 1,
        "patience": 100,
        "refit": False,
        "embed_dim": 16,
        "batch_size": 32,
        "random_state": 0,
        "feature_batch_size": 32,
    },
    "lora_slides": {"n_slides": 2, "n_spots": 12, "n_genes": 30, "seed": 1},
    "lora_predict_slide": {"n_slides": 1, "n_spots": 10, "n_genes": 30, "seed": 2},
    "lora": {
        "genes": 10,
        "encoder": "timm:vit_tiny_patch16_224",
        "weights": None,
        "finetune": "lora",
        "microns_per_pixel": 1.0,  # synthetic slides' pixel size: slides of a few spots show no grid to derive it
        "patch_px": 224,
        "max_epochs": 1,
        "patience": 100,
        "embed_dim": 16,
        "batch_size": 8,
        "feature_batch_size": 16,
        "lr": 1e-4,
        "random_state": 0,
    },
    "matmul_n": 512,
    "ddp_all_batch_size": 8,
    "throughput_slide": {"n_slides": 1, "n_spots": 12, "n_genes": 20, "seed": 3},
    "throughput_encoders": {"resnet18": 64, "timm:vit_tiny_patch16_224": 224},
    "batch_sizes": [4, 8],
    "forward_min_s": 0.2,
}


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def log(msg: str) -> None:
    """Print a timestamped progress line."""
    print(f"[{_now()}] {msg}", flush=True)


def _write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    return repr(x)


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------------------------
# child side: one part per process


class Skip(Exception):
    """Raised by a part that cannot run here; its message is the reason."""


class Ctx:
    """What a part needs: the device, the sizes, the work folder, and its result dict (saved on every step)."""

    def __init__(self, args: argparse.Namespace, result: dict, out: Path) -> None:
        self.args = args
        self.tiny = args.tiny
        self.cfg = TINY if args.tiny else FULL
        self.device = args.resolved_device
        self.accelerator = "gpu" if self.device == "cuda" else "cpu"
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.result = result
        self._out = out

    def save(self) -> None:
        """Rewrite this part's JSON."""
        _write_json(self._out, self.result)

    def check(self, name: str, passed: bool, /, **info) -> None:  # noqa: FBT001 - ctx.check(name, condition)
        """Record a check and save."""
        self.result.setdefault("checks", {})[name] = {"passed": bool(passed), **info}
        log(f"  check {name}: {'PASS' if passed else 'FAIL'} {info}")
        self.save()

    def slides(self, key: str) -> list:
        """The synthetic slides ``cfg[key]``, generated once into the work folder as zarr and read back lazily."""
        import spatialdata as sd

        import hyperst as hst

        spec = self.cfg[key]
        tag = "_".join(f"{k}{v}" for k, v in sorted(spec.items()))
        folder = self.work / "slides" / tag
        paths = [folder / f"slide_{i}.zarr" for i in range(spec["n_slides"])]
        if not (folder / "done").exists():
            t0 = time.perf_counter()
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for p, s in zip(paths, hst.datasets.synthetic(**spec), strict=True):
                s.write(p)
            (folder / "done").touch()
            log(f"  wrote {len(paths)} synthetic slide(s) {spec} in {time.perf_counter() - t0:.1f} s")
        return [sd.read_zarr(p) for p in paths]

    def fit_kwargs(self, key: str = "fit", **over) -> dict:
        """``hst.tl.fit`` arguments of ``cfg[key]`` on this device (one device unless ``over`` says otherwise)."""
        return {**self.cfg[key], "accelerator": self.accelerator, "devices": 1, **over}


def _history_finite(model) -> tuple[bool, list[dict]]:
    hist = [{k: v for k, v in h.items() if k.endswith("loss")} for h in model.history]
    ok = bool(hist) and all(_finite(v) for h in hist for v in h.values())
    return ok, hist


def _predict(slide, model, cache, **kwargs) -> dict:
    """Predictions (spots x genes) and spot embeddings of ``slide``, and predict's seconds (it runs on the CPU)."""
    import numpy as np

    import hyperst as hst

    t0 = time.perf_counter()
    res = hst.tl.predict(slide, model, inplace=False, cache=cache, **kwargs)
    return {
        "X": np.asarray(res.X, dtype=np.float32),
        "emb": np.asarray(res.obsm["X_hyperst"]),
        "s": time.perf_counter() - t0,
    }


def _compare(a, b) -> dict:
    import numpy as np

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    d = a - b
    sd = float(a.std()) or 1.0
    pcc = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {
        "max_abs": float(np.abs(d).max()),
        "rel_rms": float(np.sqrt((d**2).mean()) / sd),
        "pcc": pcc,
        "identical": bool(np.array_equal(a, b)),
    }


def part_env(ctx: Ctx) -> None:
    r = ctx.result
    r["python"] = sys.version.split()[0]
    r["platform"] = platform.platform()
    r["cpu_count"] = os.cpu_count()
    r["env"] = {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    versions = {}
    for mod in ("torch", "torchvision", "lightning", "timm", "peft", "numpy", "pandas", "spatialdata", "squidpy",
                "scanpy", "anndata", "dask", "zarr", "xarray", "geoopt", "hyperst"):  # fmt: skip
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception as err:
            versions[mod] = f"IMPORT FAILED: {err!r}"
    r["versions"] = versions
    ctx.save()
    bad = {k: v for k, v in versions.items() if str(v).startswith("IMPORT FAILED")}
    if bad:
        msg = f"missing packages: {bad}"
        raise ImportError(msg)
    import torch

    r["cuda_available"] = torch.cuda.is_available()
    r["torch_cuda"] = torch.version.cuda
    if ctx.device == "cuda":
        r["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": list(torch.cuda.get_device_capability(i)),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "multiprocessors": torch.cuda.get_device_properties(i).multi_processor_count,
            }
            for i in range(torch.cuda.device_count())
        ]
        r["bf16_supported"] = torch.cuda.is_bf16_supported()
        r["cudnn"] = torch.backends.cudnn.version()
        try:
            q = "name,driver_version,memory.total,clocks.max.sm,power.limit"
            out = subprocess.run(
                ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
            r["nvidia_smi"] = out.stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as err:
            r["nvidia_smi"] = repr(err)
    else:
        r["gpus"] = []
        r["cpu_torch_threads"] = torch.get_num_threads()
    log(f"  {versions}")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def part_matmul(ctx: Ctx) -> None:
    import torch

    n = ctx.cfg["matmul_n"]
    rates = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        b = torch.randn(n, n, device=ctx.device, dtype=dtype)
        for _ in range(3):
            a @ b
        _sync(ctx.device)
        t0 = time.perf_counter()
        reps = 10
        for _ in range(reps):
            a @ b
        _sync(ctx.device)
        t = time.perf_counter() - t0
        rates[f"{name}_tflops"] = 2 * n**3 * reps / t / 1e12
        log(f"  {name} {n}x{n}x{n}: {rates[f'{name}_tflops']:.2f} TFLOP/s")
        del a, b
    ctx.result.update({"n": n, "reps": 10, "warmup": 3, **rates})
    ctx.result["fp32_matmul_precision"] = torch.get_float32_matmul_precision()


def part_precision(ctx: Ctx) -> None:
    import numpy as np

    import hyperst as hst

    slides = ctx.slides("fit_slides")
    cache = ctx.work / "cache"
    r = ctx.result
    r["fits"] = {}
    preds = {}
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        if ctx.device == "cpu" and precision == "16-mixed":
            r["fits"][precision] = {"status": "skipped", "reason": CPU_16_MIXED}
            log(f"  {precision}: skipped on CPU ({CPU_16_MIXED})")
            ctx.save()
            continue
        t0 = time.perf_counter()
        model = hst.tl.fit(slides, **ctx.fit_kwargs(precision=precision), cache=cache)
        finite, hist = _history_finite(model)
        p = _predict(slides[-1], model, cache)
        preds[precision] = p
        np.save(ctx.work / f"pred_precision_{precision}.npy", p["X"])
        r["fits"][precision] = {
            "status": "ok",
            "fit_s": time.perf_counter() - t0 - p["s"],
            "predict_s": p["s"],
            "epochs": len(hist),
            "history": hist,
            "predictions_finite": bool(np.isfinite(p["X"]).all() and np.isfinite(p["emb"]).all()),
        }
        log(
            f"  {precision}: {len(hist)} epochs, last {hist[-1] if hist else None}, "
            f"{r['fits'][precision]['fit_s']:.1f} s"
        )
        ctx.check(f"{precision}_loss_finite", finite)
        ctx.check(f"{precision}_predictions_finite", r["fits"][precision]["predictions_finite"])
        if precision != "32-true":
            cmp = _compare(preds["32-true"]["X"], p["X"])
            r["fits"][precision]["vs_32_true"] = cmp
            ok = cmp["rel_rms"] <= TOLERANCES["precision_rel_rms_max"] and cmp["pcc"] >= TOLERANCES["precision_pcc_min"]
            ctx.check(
                f"{precision}_matches_32_true",
                ok,
                rel_rms=cmp["rel_rms"],
                pcc=cmp["pcc"],
                tolerance=f"rel_rms <= {TOLERANCES['precision_rel_rms_max']}, pcc >= {TOLERANCES['precision_pcc_min']}",
            )


def part_lora(ctx: Ctx) -> None:
    import numpy as np
    import torch

    import hyperst as hst

    slides = ctx.slides("lora_slides")
    target = ctx.slides("lora_predict_slide")[0]
    r = ctx.result
    kw = ctx.fit_kwargs("lora")
    r["encoder"] = kw["encoder"]
    t0 = time.perf_counter()
    model = hst.tl.fit(slides, **kw)
    r["fit_s"] = time.perf_counter() - t0
    finite, hist = _history_finite(model)
    r["history"] = hist
    r["precision"] = kw.get("precision") or ("16-mixed (default)" if ctx.device == "cuda" else "32-true (default)")
    r["lora"] = {k: v for k, v in model.encoder.lora.items() if k != "target_modules"}
    targets = list(model.encoder.lora["target_modules"])
    r["lora"]["n_targets"], r["lora"]["first_target"], r["lora"]["last_target"] = len(targets), targets[0], targets[-1]
    log(f"  fit {r['fit_s']:.1f} s, {len(hist)} epochs, {r['lora']}")
    ctx.check("loss_finite", finite)
    moved = [k for k, v in model.encoder.state.items() if "lora_B" in k and float(v.abs().sum()) > 0]
    n_b = sum("lora_B" in k for k in model.encoder.state)
    ctx.check("adapters_moved", n_b > 0 and len(moved) == n_b, lora_B_nonzero=len(moved), lora_B=n_b)
    mpp = {"microns_per_pixel": kw["microns_per_pixel"]}
    before = _predict(target, model, cache=False, **mpp)
    r["predict_s"] = before["s"]
    folder = ctx.work / "lora_model"
    t0 = time.perf_counter()
    path = model.save(folder, overwrite=True)
    r["save_s"] = time.perf_counter() - t0
    r["saved_bytes"] = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    t0 = time.perf_counter()
    loaded = hst.HyperST.load(path)
    r["load_s"] = time.perf_counter() - t0
    after = _predict(target, loaded, cache=False, **mpp)
    r["predict_after_load_s"] = after["s"]
    cmp_x, cmp_e = _compare(before["X"], after["X"]), _compare(before["emb"], after["emb"])
    r["roundtrip"] = {"predictions": cmp_x, "embeddings": cmp_e}
    worst = max(cmp_x["max_abs"], cmp_e["max_abs"])
    ctx.check(
        "save_load_predict_same",
        worst <= TOLERANCES["lora_roundtrip_max_abs"] and np.isfinite(before["X"]).all(),
        max_abs=worst,
        identical=cmp_x["identical"] and cmp_e["identical"],
        tolerance=TOLERANCES["lora_roundtrip_max_abs"],
    )
    if ctx.device == "cuda":
        r["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30


def _ddp_fit(ctx: Ctx, devices: int) -> None:
    import numpy as np

    import hyperst as hst

    slides = ctx.slides("fit_slides")
    cache = ctx.work / "cache"
    kw = ctx.fit_kwargs(strategy="ddp", devices=devices, precision="32-true")
    if devices > 1:
        # `tl.fit` caps the batch at the training spots of all processes, while each rank gets 1/devices of them
        # (DistributedSampler) and drops its last partial batch: with fewer spots per rank than `batch_size`, no
        # step runs at all (seen on the CPU dry run: 0 epochs, no error). A smaller per-process batch avoids it.
        kw["batch_size"] = ctx.cfg["ddp_all_batch_size"]
    t0 = time.perf_counter()
    model = hst.tl.fit(slides, **kw, cache=cache)
    if os.environ.get("LOCAL_RANK", "0") != "0":  # a rank Lightning launched: rank 0 reports
        return
    r = ctx.result
    r["fit_s"] = time.perf_counter() - t0
    r["devices"], r["strategy"] = devices, "ddp"
    finite, hist = _history_finite(model)
    r["history"] = hist
    ctx.check("loss_finite", finite, epochs=len(hist))
    p = _predict(slides[-1], model, cache)
    ctx.check("predictions_finite", bool(np.isfinite(p["X"]).all()))
    ref = ctx.work / "pred_precision_32-true.npy"
    if ref.exists():  # not a check: DistributedSampler orders batches differently from a single process
        r["vs_single_process_32_true"] = _compare(np.load(ref), p["X"])
        log(f"  vs the single-process 32-true fit: {r['vs_single_process_32_true']}")


def part_ddp(ctx: Ctx) -> None:
    _ddp_fit(ctx, 1)


def part_ddp_all(ctx: Ctx) -> None:
    if ctx.device == "cuda":
        import torch

        n = torch.cuda.device_count()
        if n < 2:
            msg = f"one GPU visible (torch.cuda.device_count() == {n}); `ddp` ran on it"
            raise Skip(msg)
    else:
        n = 2  # CPU dry run: two gloo processes, Lightning's subprocess launcher re-running this script
    _ddp_fit(ctx, n)


def part_determinism_run(ctx: Ctx) -> None:
    """One process of ``determinism``: two fits with fresh feature caches, predictions saved."""
    import warnings

    import numpy as np

    import hyperst as hst

    slides = ctx.slides("fit_slides")
    r = ctx.result
    r["CUBLAS_WORKSPACE_CONFIG"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    r["fits"] = []
    seen: dict[str, int] = {}
    for i in range(2):
        cache = ctx.work / f"det_cache_{ctx.args.run_index}_{i}"
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = hst.tl.fit(slides, **ctx.fit_kwargs(), cache=cache)  # default precision: 16-mixed on a GPU
        for w in caught:
            msg = str(w.message)
            if "determinis" in msg.lower():
                seen[msg[:300]] = seen.get(msg[:300], 0) + 1
        p = _predict(slides[-1], model, cache)
        np.save(ctx.work / f"det_pred_{ctx.args.run_index}_{i}.npy", p["X"])
        finite, hist = _history_finite(model)
        r["fits"].append({"fit_s": time.perf_counter() - t0, "loss_finite": finite, "last": hist[-1] if hist else None})
        ctx.save()
    r["determinism_warnings"] = seen


def part_determinism(ctx: Ctx) -> None:
    import numpy as np

    r = ctx.result
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    r["settings"] = "CUBLAS_WORKSPACE_CONFIG=:4096:8 before Python starts; fit passes deterministic='warn'"
    procs = []
    for k in range(2):  # two processes at once: the same fits, started fresh
        for f in ctx.work.glob(f"det_pred_{k}_*.npy"):
            f.unlink()
        out = ctx.work / f"det_run_{k}.json"
        cmd = [*_child_cmd(ctx.args, "determinism_run", out), "--run-index", str(k)]
        procs.append((out, subprocess.Popen(cmd, env=env, start_new_session=True)))
    limit = max(5.0, ctx.args.part_limit_s - 5.0)
    t0 = time.monotonic()
    for _, p in procs:
        try:
            p.wait(timeout=max(1.0, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            _kill(p)
    r["runs"] = [json.loads(out.read_text()) if out.exists() else {"status": "no output"} for out, _ in procs]
    ctx.save()
    for k, run in enumerate(r["runs"]):
        if run.get("status") != "ok":
            msg = f"determinism run {k}: {run.get('status')}: {run.get('error')}"
            raise RuntimeError(msg)
    pred = {(k, i): np.load(ctx.work / f"det_pred_{k}_{i}.npy") for k in range(2) for i in range(2)}
    r["loss_finite"] = all(f["loss_finite"] for run in r["runs"] for f in run["fits"])
    ctx.check("loss_finite", r["loss_finite"])
    for name, (a, b) in {
        "repeat_in_process": ((0, 0), (0, 1)),
        "repeat_across_processes": ((0, 0), (1, 0)),
        "repeat_in_process_2": ((1, 0), (1, 1)),
    }.items():
        cmp = _compare(pred[a], pred[b])
        r[name] = cmp
        ctx.check(name, cmp["max_abs"] <= TOLERANCES["determinism_max_abs"], **cmp)


def _flops_per_image(module, px: int, device: str) -> float | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randint(0, 256, (2, 3, px, px), dtype=torch.uint8, device=device)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(x)
        return counter.get_total_flops() / 2
    except Exception as err:
        log(f"  flop counting failed: {err!r}")
        return None


def _bare_forward(module, bs: int, px: int, device: str, min_s: float, *, autocast: bool) -> dict:
    import torch

    x = torch.randint(0, 256, (bs, 3, px, px), dtype=torch.uint8, device=device)
    ctx_ac = (
        torch.autocast(device_type=device, dtype=torch.bfloat16) if autocast else torch.autocast(device, enabled=False)
    )
    with torch.inference_mode(), ctx_ac:
        for _ in range(2):
            module(x)
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while True:
            module(x)
            n += 1
            if n >= 3:
                _sync(device)
                if time.perf_counter() - t0 >= min_s or n >= 50:
                    break
        t = time.perf_counter() - t0
    images_per_s = bs * n / t
    return {"iters": n, "s": t, "images_per_s": images_per_s, "spots_per_s": images_per_s / 2}


def part_throughput(ctx: Ctx) -> None:
    import torch

    from hyperst import HyperSTConfig
    from hyperst._data import PatchReader, slide_layout
    from hyperst.tl._encoder import make_extractor
    from hyperst.tl._features import extract_features
    from hyperst.tl._prepare import geometry_from

    r = ctx.result
    mm = ctx.work / "parts" / "matmul.json"
    bf16 = json.loads(mm.read_text()).get("bf16_tflops") if mm.exists() else None
    r["matmul_bf16_tflops"] = bf16
    r["matmul_source"] = f"{mm} (the matmul part of this run)" if bf16 else "none: run the matmul part first"
    sdata = ctx.slides("throughput_slide")[0]
    layout = slide_layout(sdata, microns_per_pixel=1.0)  # the synthetic slides' pixel size
    n = sdata.tables["table"].n_obs
    r["spots"], r["rows"], r["read_only"] = n, [], {}
    r["note"] = "spots/s: 2 patches (spot + niche) per spot; pipeline = extract_features, 1 view, no cache, zarr slide"
    ctx.save()
    for encoder, px in ctx.cfg["throughput_encoders"].items():
        torch.manual_seed(0)
        t0 = time.perf_counter()
        extractor = make_extractor(encoder, weights=None, device=ctx.device)
        log(f"  {encoder}: built in {time.perf_counter() - t0:.1f} s")
        geometry = geometry_from(HyperSTConfig(patch_px=px))
        flops = _flops_per_image(extractor.module, px, ctx.device)
        for bs in ctx.cfg["batch_sizes"]:
            row = {"encoder": encoder, "patch_px": px, "batch_size": bs, "gflops_per_image": flops and flops / 1e9}
            key = f"{px}px_bs{bs}"
            if key not in r["read_only"]:  # patch reading alone: what the pipeline cannot beat
                reader = PatchReader(sdata, layout, geometry)
                t0 = time.perf_counter()
                m = sum(len(i) for i, _, _ in reader.iter_batches(bs))
                r["read_only"][key] = {"spots_per_s": m / (time.perf_counter() - t0)}
            row["read_only_spots_per_s"] = r["read_only"][key]["spots_per_s"]
            extractor(torch.randint(0, 256, (bs, 3, px, px), dtype=torch.uint8).numpy())  # warm-up at this size
            _sync(ctx.device)
            t0 = time.perf_counter()
            extract_features(sdata, layout, extractor, geometry=geometry, views=1, batch_size=bs, cache=False)
            _sync(ctx.device)
            row["pipeline_s"] = time.perf_counter() - t0
            row["pipeline_spots_per_s"] = n / row["pipeline_s"]
            for name, ac in (("fp32", False), ("bf16", True)):
                f = _bare_forward(extractor.module, bs, px, ctx.device, ctx.cfg["forward_min_s"], autocast=ac)
                row[f"forward_{name}_spots_per_s"] = f["spots_per_s"]
                if flops:
                    row[f"forward_{name}_tflops"] = flops * f["images_per_s"] / 1e12
                    if bf16:
                        row[f"forward_{name}_share_of_bf16_matmul"] = row[f"forward_{name}_tflops"] / bf16
            row["pipeline_over_forward_fp32"] = row["pipeline_spots_per_s"] / row["forward_fp32_spots_per_s"]
            if flops and bf16:
                row["pipeline_share_of_bf16_matmul"] = flops * 2 * row["pipeline_spots_per_s"] / 1e12 / bf16
            if ctx.device == "cuda":
                row["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            r["rows"].append(row)
            ctx.save()
            log(
                f"  {encoder} bs {bs}: pipeline {row['pipeline_spots_per_s']:.1f} spots/s, forward fp32 "
                f"{row['forward_fp32_spots_per_s']:.1f}, bf16 {row['forward_bf16_spots_per_s']:.1f}, read-only "
                f"{row['read_only_spots_per_s']:.1f}"
            )
        del extractor
        if ctx.device == "cuda":
            torch.cuda.empty_cache()


PART_FUNCS = {
    "env": part_env,
    "matmul": part_matmul,
    "precision": part_precision,
    "lora": part_lora,
    "ddp": part_ddp,
    "ddp_all": part_ddp_all,
    "determinism": part_determinism,
    "determinism_run": part_determinism_run,
    "throughput": part_throughput,
}


def child_main(args: argparse.Namespace) -> int:
    """Run one part and write its JSON (``--child-out``), whatever happens."""
    import warnings

    out = Path(args.child_out)
    rank = os.environ.get("LOCAL_RANK", "0")
    if rank != "0":  # a DDP rank Lightning launched re-runs this command line: it writes elsewhere
        out = out.with_name(f"{out.stem}.rank{rank}.json")
    result = {"part": args.child, "status": "running", "started": datetime.now(UTC).isoformat(timespec="seconds")}
    ctx = None
    t0 = time.perf_counter()
    try:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="zarr v3 autosharding")
        import logging

        import hyperst as hst

        hst.settings.progress_bar = False
        logging.getLogger("hyperst").setLevel(logging.WARNING)
        hst.settings.cache_dir = str(Path(args.work_dir) / "hyperst_cache")
        if args.tiny and args.resolved_device == "cpu":  # as the tests' `one_torch_thread`: 1 thread is faster here
            import numba
            import torch

            numba.get_num_threads()
            torch.set_num_threads(1)
        ctx = Ctx(args, result, out)
        ctx.save()
        PART_FUNCS[args.child](ctx)
        result["status"] = "ok"
    except Skip as s:
        result["status"], result["reason"] = "skipped", str(s)
    except BaseException as err:
        result["status"], result["error"] = "failed", f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
        log(f"  {args.child} FAILED: {result['error']}\n{result['traceback']}")
    result["seconds"] = time.perf_counter() - t0
    _write_json(out, result)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# orchestrator side: no torch here, so that nothing a part does can take it down


def _child_cmd(args: argparse.Namespace, part: str, out: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--child-out", str(out)]
    cmd += ["--device", args.resolved_device, "--work-dir", str(args.work_dir)]
    if args.tiny:
        cmd.append("--tiny")
    return cmd


def _kill(proc: subprocess.Popen) -> None:
    """Kill the child and everything it started (its own process group, made by ``start_new_session``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_part(args: argparse.Namespace, part: str, limit: float, logfile) -> dict:
    """Run ``part`` in a child process for at most ``limit`` seconds; return its result (partial on a timeout)."""
    out = Path(args.work_dir) / "parts" / f"{part}.json"
    out.unlink(missing_ok=True)
    cmd = [*_child_cmd(args, part, out), "--part-limit-s", str(limit)]
    tail: collections.deque[str] = collections.deque(maxlen=40)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            sys.stdout.write(line)
            sys.stdout.flush()
            if logfile is not None:
                logfile.write(line)
                logfile.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
    reader.join(timeout=5)
    seconds = time.monotonic() - t0
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"part": part}
    if timed_out:
        result["status"] = "timeout"
        result["error"] = f"killed after its limit of {limit:.0f} s; the fields above are what it had recorded"
    elif result.get("status") in (None, "running"):
        result["status"] = "failed"
        result["error"] = f"the child exited with code {proc.returncode} without a result"
    if result["status"] in ("failed", "timeout"):
        result["output_tail"] = "\n".join(tail)
    result["wall_s"], result["limit_s"], result["exit_code"] = seconds, limit, proc.returncode
    return result


def _fmt(x, spec: str = ".3g") -> str:
    return format(x, spec) if _finite(x) else "-"


def _key_figures(name: str, r: dict) -> str:
    if r.get("status") == "skipped":
        return r.get("reason", "")[:100]
    if r.get("status") in ("failed", "timeout"):
        return r.get("error", "")[:100]
    if name == "env":
        gpus = r.get("gpus") or []
        return f"{gpus[0]['name'] if gpus else 'CPU'}; torch {r.get('versions', {}).get('torch')}"
    if name == "matmul":
        return f"bf16 {_fmt(r.get('bf16_tflops'))} TFLOP/s, fp32 {_fmt(r.get('fp32_tflops'))} TFLOP/s (n={r.get('n')})"
    if name == "precision":
        parts = []
        for p, f in r.get("fits", {}).items():
            if f.get("status") == "skipped":
                parts.append(f"{p}: skipped")
            else:
                v = f.get("vs_32_true")
                parts.append(f"{p}: {_fmt(f.get('fit_s'), '.1f')} s" + (f", rel_rms {_fmt(v['rel_rms'])}" if v else ""))
        return "; ".join(parts)
    if name == "lora":
        rt = r.get("roundtrip", {}).get("predictions", {})
        return (
            f"fit {_fmt(r.get('fit_s'), '.1f')} s, predict (CPU) {_fmt(r.get('predict_s'), '.1f')} s, "
            f"round trip max abs diff {_fmt(rt.get('max_abs'))}"
        )
    if name in ("ddp", "ddp_all"):
        return f"{r.get('devices')} device(s), fit {_fmt(r.get('fit_s'), '.1f')} s"
    if name == "determinism":
        return (
            ", ".join(
                f"{k}: {'same' if r.get(k, {}).get('identical') else _fmt(r.get(k, {}).get('max_abs'))}"
                for k in ("repeat_in_process", "repeat_across_processes")
            )
            + f"; {len((r.get('runs') or [{}])[0].get('determinism_warnings') or {})} warning(s)"
        )
    if name == "throughput":
        return f"{len(r.get('rows', []))} rows (table below)"
    return ""


def print_table(report: dict) -> str:
    """The summary table (markdown), printed and returned."""
    lines = ["| part | status | s | key figures | checks |", "|---|---|---|---|---|"]
    for name, r in report["parts"].items():
        checks = r.get("checks", {})
        c = f"{sum(v['passed'] for v in checks.values())}/{len(checks)}" if checks else "-"
        failed = [k for k, v in checks.items() if not v["passed"]]
        if failed:
            c += " (failed: " + ", ".join(failed) + ")"
        lines.append(f"| {name} | {r.get('status')} | {_fmt(r.get('wall_s'), '.0f')} | {_key_figures(name, r)} | {c} |")
    rows = report["parts"].get("throughput", {}).get("rows", [])
    if rows:
        lines += [
            "",
            "| encoder | batch | pipeline spots/s | read-only spots/s | forward fp32 spots/s | forward bf16 spots/s "
            "| pipeline / forward fp32 | fp32 forward share of bf16 matmul | bf16 forward share |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for w in rows:
            lines.append(
                f"| {w['encoder']} | {w['batch_size']} | {_fmt(w.get('pipeline_spots_per_s'), '.1f')} | "
                f"{_fmt(w.get('read_only_spots_per_s'), '.1f')} | {_fmt(w.get('forward_fp32_spots_per_s'), '.1f')} | "
                f"{_fmt(w.get('forward_bf16_spots_per_s'), '.1f')} | "
                f"{_fmt(w.get('pipeline_over_forward_fp32'), '.2f')} | "
                f"{_fmt(w.get('forward_fp32_share_of_bf16_matmul'), '.3f')} | "
                f"{_fmt(w.get('forward_bf16_share_of_bf16_matmul'), '.3f')} |"
            )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _summary(parts: dict) -> dict:
    by = collections.defaultdict(list)
    for name, r in parts.items():
        by[r.get("status", "?")].append(name)
    failed_checks = [f"{n}.{k}" for n, r in parts.items() for k, v in r.get("checks", {}).items() if not v["passed"]]
    return {**dict(by), "checks_failed": failed_checks, "all_checks_passed": not failed_checks}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the parts (or, with ``--child``, one part)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny slides and encoders, 1-2 epochs (the CPU dry run)")
    p.add_argument("--out", required=False, help="folder for the JSON and the log (the device tool's $OUT)")
    p.add_argument(
        "--results-dir", default=str(ROOT / "benchmarks" / "results"), help="also write the JSON here ('none': do not)"
    )
    p.add_argument("--name", help="JSON file name without .json (default: gpu_<gpu> or gpu_dry_run_cpu)")
    p.add_argument("--budget-s", type=float, default=360.0, help="wall-clock budget of the whole run")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--work-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "hyperst_gpu_work"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--part-limit-s", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--run-index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch  # only to look: the parts import it again in their own processes

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.resolved_device = args.device
    if args.child:
        return child_main(args)

    parts = [s.strip() for s in args.parts.replace(" ", ",").split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {PARTS}")
    if args.device == "cuda" and args.tiny:
        log("note: --tiny on a GPU measures nothing worth reporting")
    budgets = TINY_BUDGET_S if args.tiny else PART_BUDGET_S
    results_dir = Path(args.results_dir) if args.results_dir not in ("", "none") else None
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(out_dir / "gpu_log.txt", "a") if out_dir is not None else None
    report = {
        "script": "benchmarks/gpu.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": args.device,
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "part_budget_s": {k: budgets[k] for k in parts},
        "tolerances": TOLERANCES,
        "config": TINY if args.tiny else FULL,
        "parts": {},
    }
    name = args.name or ("gpu_dry_run_cpu" if args.device == "cpu" and args.tiny else None)
    targets: list[Path] = []

    def save() -> None:
        report["elapsed_s"] = time.monotonic() - t_start
        report["summary"] = _summary(report["parts"])
        for d in targets:
            _write_json(d / f"{name or 'gpu'}.json", report)

    t_start = time.monotonic()
    log(f"GPU check: parts {parts}, device {args.device}, tiny {args.tiny}, budget {args.budget_s:.0f} s")
    for part in parts:
        left = args.budget_s - (time.monotonic() - t_start)
        limit = min(budgets[part], left)
        if limit < MIN_PART_S:
            report["parts"][part] = {"status": "skipped", "reason": f"budget spent ({left:.0f} s of --budget-s left)"}
            log(f"part {part}: skipped, {left:.0f} s left")
            save()
            continue
        log(f"part {part}: start (limit {limit:.0f} s)")
        try:
            res = run_part(args, part, limit, logfile)
        except Exception as err:
            res = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        report["parts"][part] = res
        log(f"part {part}: {res.get('status')} in {_fmt(res.get('wall_s'), '.1f')} s")
        if part == "env":
            gpus = res.get("gpus") or []
            if name is None:
                name = "gpu_" + _slug(gpus[0]["name"]) if gpus else f"gpu_{args.device}"
            targets = [d for d in (out_dir, results_dir) if d is not None]
        elif not targets:
            name = name or f"gpu_{args.device}"
            targets = [d for d in (out_dir, results_dir) if d is not None]
        save()
        if part == "env" and res.get("status") != "ok":
            log("env failed (imports?): the other parts would fail the same way; stopping")
            break
    report["table"] = print_table(report)
    save()
    log(f"done in {time.monotonic() - t_start:.0f} s; JSON: {[str(d / f'{name}.json') for d in targets]}")
    if logfile is not None:
        logfile.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
