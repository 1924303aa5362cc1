"""The `hyperst` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hyperst._cli import main


def test_demo_runs_and_writes_its_montage(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-slides", "2", "--n-spots", "120", "--genes", "20", "--max-epochs", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Built 2 synthetic" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("synthetic_")]
    assert len(lines) == 2
    assert all(" hex " in ln for ln in lines)
    assert "mean PCC" in text and "Predicted held-out slide synthetic_1" in text
    assert (out / "model" / "config.json").exists()
    from PIL import Image

    montage = Image.open(out / "patches.png")
    assert montage.size[0] == 2 * 224 and montage.size[1] % 224 == 0  # rows of spot | niche


def test_bad_input_gives_a_one_line_error_and_nonzero_status(tmp_path, capsys):
    status = main(["demo", "--out", str(tmp_path), "--n-slides", "1"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperst demo: error:") and "n_slides" in err
    assert len(err.splitlines()) == 1


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "hyperst._cli", "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--n-spots" in result.stdout


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
