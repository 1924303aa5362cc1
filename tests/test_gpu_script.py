"""`benchmarks/gpu.py`, the prepared GPU check: its CPU dry run, its time limits, its committed dry-run JSON."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
DRY_RUN = ROOT / "benchmarks" / "results" / "gpu_dry_run_cpu.json"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("hyperst_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _losses(history: list[dict]) -> list[float]:
    return [v for h in history for k, v in h.items() if k.endswith("loss")]


def _check_report(report: dict, parts: tuple[str, ...]) -> None:
    assert list(report["parts"]) == list(parts)
    for name, r in report["parts"].items():
        assert r["status"] == "ok", (name, r.get("error"), r.get("traceback"))
    assert report["summary"]["all_checks_passed"], report["summary"]["checks_failed"]
    p = report["parts"]
    # every fit trained (at least one epoch) with finite losses
    for precision in ("32-true", "bf16-mixed"):
        fit = p["precision"]["fits"][precision]
        assert fit["status"] == "ok" and fit["epochs"] >= 1
        assert _losses(fit["history"]) and all(math.isfinite(v) for v in _losses(fit["history"]))
        assert p["precision"]["checks"][f"{precision}_loss_finite"]["passed"]
    # the tolerance checks ran and passed: mixed precision vs float32, LoRA round trip, determinism
    match = p["precision"]["checks"]["bf16-mixed_matches_32_true"]
    assert match["passed"] and match["rel_rms"] <= report["tolerances"]["precision_rel_rms_max"]
    assert p["lora"]["checks"]["save_load_predict_same"]["passed"] and p["lora"]["checks"]["adapters_moved"]["passed"]
    assert p["lora"]["lora"]["last_n_blocks"] == 11  # the layout tl.fit uses for UNI: attn.qkv of the last 11 blocks
    assert p["lora"]["lora"]["last_target"].endswith("attn.qkv")
    assert all(math.isfinite(v) for v in _losses(p["lora"]["history"]))
    for name in ("ddp", "ddp_all"):
        assert p[name]["checks"]["loss_finite"]["passed"] and p[name]["history"]
    assert p["ddp_all"]["devices"] == 2  # on CPU: two processes through Lightning's launcher
    for name in ("repeat_in_process", "repeat_across_processes"):
        assert p["determinism"]["checks"][name]["passed"]
    # what cannot run on CPU says why
    skipped = p["precision"]["fits"]["16-mixed"]
    assert skipped["status"] == "skipped" and "CPU" in skipped["reason"] and "bf16-mixed" in skipped["reason"]
    # throughput: every encoder and batch size, positive rates, the encoder's share of the matmul limit a ratio
    rows = p["throughput"]["rows"]
    cfg = report["config"]
    assert len(rows) == len(cfg["throughput_encoders"]) * len(cfg["batch_sizes"])
    for row in rows:
        for k in ("pipeline_spots_per_s", "forward_fp32_spots_per_s", "forward_bf16_spots_per_s"):
            assert row[k] > 0
        assert 0 < row["forward_fp32_share_of_bf16_matmul"] < 10
    assert p["matmul"]["bf16_tflops"] > 0
    assert "| part | status |" in report["table"]


@pytest.mark.slow
def test_cpu_dry_run(tmp_path):
    """The dry run the GPU run repeats at full size: every part runs, every check passes (about 2 minutes)."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), "--results-dir", "none"]
    cmd += ["--work-dir", str(tmp_path / "work"), "--budget-s", "500"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "gpu_dry_run_cpu.json").read_text())
    assert (out / "gpu_log.txt").stat().st_size > 0
    parts = ("env", "matmul", "precision", "lora", "ddp", "ddp_all", "determinism", "throughput")
    _check_report(report, parts)
    assert not (ROOT / "benchmarks" / "results" / "gpu_dry_run_cpu.json.tmp").exists()


def test_committed_dry_run_is_complete(gpu):
    """The dry run's JSON in the repo has every part, and the table can be rebuilt from it."""
    report = json.loads(DRY_RUN.read_text())
    assert report["device"] == "cpu" and report["tiny"]
    _check_report(report, gpu.PARTS)
    assert gpu.print_table(report).splitlines()[0] == "| part | status | s | key figures | checks |"


def test_a_part_past_its_limit_is_killed_and_recorded(gpu, tmp_path):
    """A hanging part costs its own limit only: killed, recorded as a timeout with its output, the run goes on."""
    args = argparse.Namespace(resolved_device="cpu", tiny=True, work_dir=str(tmp_path))
    result = gpu.run_part(args, "env", 0.5, None)  # importing hyperst alone takes longer
    assert result["status"] == "timeout" and "limit" in result["error"]
    assert result["wall_s"] < 10 and "output_tail" in result


def test_unknown_parts_are_refused(gpu, capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu", "--parts", "env,warp_drive"])
    assert "warp_drive" in capsys.readouterr().err
