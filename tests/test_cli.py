"""The `hyperst` command line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from hyperst._cli import main


def test_demo_runs_and_writes_its_montage_and_figures(tmp_path, capsys):
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
    for name in ("poincare.png", "spatial.png", "history.png", "gene_scores.png"):
        figure = Image.open(out / name)
        assert figure.size[0] > 300 and figure.size[1] > 200, name
        assert name in text


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


def test_fit_predict_evaluate_on_zarr_stores(tmp_path, capsys, caplog):
    import spatialdata as sd

    import hyperst as hst

    slides = hst.datasets.synthetic(n_slides=3, n_spots=100, n_genes=40, seed=5)
    paths = []
    for i, s in enumerate(slides):
        paths.append(str(tmp_path / f"slide{i}.zarr"))
        s.write(paths[-1])
    model_dir = tmp_path / "model"
    fit = ["fit", *paths[:2], "--out", str(model_dir), "--genes", "15", "--encoder", "squidpy", "--max-epochs", "3"]
    assert main([*fit, "--monitor", "mse", "--embed-dim", "64"]) == 0
    assert "Fitted HyperST" in capsys.readouterr().out and (model_dir / "config.json").is_file()
    config = hst.HyperST.load(model_dir).config
    assert config.monitor == "mse" and config.module.embed_dim == 64
    before = set(sd.read_zarr(paths[2]).tables)
    assert main(["predict", paths[2], "--model", str(model_dir)]) == 0
    after = sd.read_zarr(paths[2])
    assert set(after.tables) == before | {"hyperst"}  # only the predictions table is added
    assert after.tables["hyperst"].shape == (100, 15) and "hyperst_upper" in after.tables["hyperst"].layers
    # predicting again without --overwrite is refused, with a one-line error
    assert main(["predict", paths[2], "--model", str(model_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    csv = tmp_path / "scores.csv"
    caplog.clear()
    with caplog.at_level("INFO", logger="hyperst"):
        assert main(["evaluate", paths[2], "--csv", str(csv)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "pcc_mean" in text and "pcc_at_10" in text
    # 15 genes: PCC@50 and PCC@200 would be the mean over all 15, so they are not shown as if they were
    assert re.search(r"pcc_at_50 +n/a +\(only 15 genes\)", text) and re.search(r"pcc_at_200 +n/a", text)
    assert "is not modified" in text and "Adding" not in caplog.text  # it says what it writes, and only that
    import pandas as pd

    scores = pd.read_csv(csv, index_col=0)
    assert len(scores) == 15 and "pearson" in scores.columns


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fit", "/nonexistent.zarr", "--out", "x"], "No SpatialData store"),
        (["predict", "/nonexistent.zarr", "--model", "m"], "No SpatialData store"),
        (["evaluate", "/nonexistent.zarr"], "No SpatialData store"),
    ],
)
def test_tl_commands_refuse_missing_stores(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_tl_commands_have_help():
    for command in ("fit", "predict", "evaluate"):
        result = subprocess.run(
            [sys.executable, "-m", "hyperst._cli", command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0 and "--table-key" in result.stdout


_QUIET_RUN = """
import sys
import hyperst as hst
from hyperst._cli import main

hst.settings.progress_bar = False
hst.settings.verbosity = "error"
train, store, model = sys.argv[1:4]
import spatialdata as sd
m = hst.tl.fit(sd.read_zarr(train), genes=8, encoder="squidpy", max_epochs=1, views=1, embed_dim=16, cache=False)
hst.tl.predict(sd.read_zarr(store), m, cache=False)
m.save(model)
assert main(["predict", store, "--model", model]) == 0
"""


def test_fit_predict_and_the_cli_write_print_no_third_party_warning(tmp_path):
    import warnings

    import hyperst as hst

    paths = []
    for i, s in enumerate(hst.datasets.synthetic(n_slides=2, n_spots=60, n_genes=20, seed=0)):
        paths.append(str(tmp_path / f"s{i}.zarr"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the test's own writes are not hyperst's
            s.write(paths[-1])
    # a fresh interpreter with Python's default filters, as a user's script has: squidpy's first import too
    run = subprocess.run(
        [sys.executable, "-c", _QUIET_RUN, paths[0], paths[1], str(tmp_path / "model")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    warned = [line for line in run.stderr.splitlines() if "Warning" in line or "deprecated" in line]
    assert not warned, warned


_HEAVY = ("torch", "lightning", "spatialdata", "squidpy", "scanpy", "anndata", "dask", "zarr")
_IMPORTS = """
import json, sys
{code}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))))
"""


@pytest.mark.parametrize(
    "code",
    [
        "import hyperst",
        "import hyperst; hyperst.settings.progress_bar = False; hyperst.__version__",
        "from hyperst._cli import _parser; _parser().format_help()",
        "from hyperst._cli import main; assert main(['predict', '/nonexistent.zarr', '--model', '/none']) == 2",
        "from hyperst._cli import main; assert main(['fit', '/nonexistent.zarr', '--out', '/tmp/hyperst-none']) == 2",
        "from hyperst._cli import main; assert main(['evaluate', '/nonexistent.zarr']) == 2",
    ],
    ids=["import", "settings", "help", "predict-missing-store", "fit-missing-store", "evaluate-missing-store"],
)
def test_start_up_and_argument_errors_import_nothing_heavy(code):
    script = _IMPORTS.format(code=code, heavy=_HEAVY)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout


def test_the_model_path_is_checked_before_the_store_is_read(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    script = _IMPORTS.format(
        code=f"from hyperst._cli import main; assert main(['predict', {str(store)!r}, '--model', '/none']) == 2",
        heavy=_HEAVY,
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "No hyperst model at `/none`: the folder does not exist" in run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
