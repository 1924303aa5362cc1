"""``hst.tl.cache_features`` and ``hyperst features``: feature caches of a cohort built ahead of training."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import hyperst as hst
from hyperst._cli import main

#: Settings a fit and its caches share in these tests: one view, small tiny-model widths.
TINY = {"views": 1, "max_epochs": 2, "embed_dim": 16, "random_state": 3}


@pytest.fixture(scope="module")
def cohort():
    return hst.datasets.synthetic(n_slides=3, n_spots=50, n_genes=20, seed=2)


@pytest.fixture(scope="module")
def stores(cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    paths = []
    for i, s in enumerate(cohort):
        paths.append(str(root / f"slide{i}.zarr"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the test's own writes are not hyperst's
            s.write(paths[-1])
    return paths


def _files(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_fit_after_cache_features_computes_nothing_and_gives_the_same_model(
    cohort, tmp_path, monkeypatch, one_torch_thread
):
    import torch

    from hyperst.tl._features import FeatureExtractor

    train = cohort[:2]
    encoder = {"encoder": "mobilenet_v3_small", "weights": None}  # random weights: seeded as the fit seeds them
    summary = hst.tl.cache_features(train, **encoder, cache=tmp_path / "ahead", **TINY)
    assert list(summary["status"]) == ["cached", "cached"] and list(summary["spots"]) == [50, 50]
    before = _files(tmp_path / "ahead")

    def no_features(self, patches):
        msg = "features were computed again"
        raise AssertionError(msg)

    with monkeypatch.context() as m:
        m.setattr(FeatureExtractor, "__call__", no_features)
        ahead = hst.tl.fit(train, genes=8, **encoder, cache=tmp_path / "ahead", **TINY)
    assert _files(tmp_path / "ahead") == before  # read, not rewritten
    itself = hst.tl.fit(train, genes=8, **encoder, cache=tmp_path / "itself", **TINY)
    assert sorted(p.name for p in (tmp_path / "itself").iterdir()) == sorted(
        p.name for p in (tmp_path / "ahead").iterdir()
    )
    a, b = ahead.module.state_dict(), itself.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_rerun_skips_cached_slides_and_a_failing_slide_leaves_the_others(cohort, stores, tmp_path):
    missing = str(tmp_path / "missing.zarr")
    given = [cohort[0], missing, stores[1]]
    first = hst.tl.cache_features(given, encoder="squidpy", cache=tmp_path / "c", views=2)
    assert list(first.columns) == ["slide", "store", "status", "spots", "seconds", "cache", "error"]
    assert list(first["status"]) == ["cached", "failed", "cached"]
    assert list(first["slide"]) == ["synthetic_0", "missing.zarr", "synthetic_1"]
    assert first.loc[1, "store"] == missing and "missing.zarr" in first.loc[1, "error"]
    assert first["error"].isna()[[0, 2]].all() and first["spots"].isna().tolist() == [False, True, False]
    cached = {p.name for p in (tmp_path / "c").iterdir()}
    assert cached == {first.loc[0, "cache"].rsplit("/", 1)[1], first.loc[2, "cache"].rsplit("/", 1)[1]}
    again = hst.tl.cache_features(given, encoder="squidpy", cache=tmp_path / "c", views=2)
    assert list(again["status"]) == ["skipped", "failed", "skipped"]
    assert list(again["cache"]) == list(first["cache"])
    other = hst.tl.cache_features(stores[0], encoder="squidpy", cache=tmp_path / "c", views=1)
    assert other.loc[0, "status"] == "cached" and other.loc[0, "cache"] != first.loc[0, "cache"]  # views are in the key


def test_a_clients_cluster_takes_the_slides_and_is_left_running(stores, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            given = [*stores, str(tmp_path / "missing.zarr")]
            summary = hst.tl.cache_features(given, encoder="squidpy", cache=tmp_path / "c", views=1, client=client)
            assert list(summary["status"]) == ["cached", "cached", "cached", "failed"]
            assert client.submit(sum, [1, 2]).result() == 3  # still running
            serial = hst.tl.cache_features(stores, encoder="squidpy", cache=tmp_path / "c", views=1)
            assert list(serial["status"]) == ["skipped"] * 3 and list(serial["cache"]) == list(summary["cache"][:3])


def test_a_cluster_started_for_the_call_is_closed_after_it(stores, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    from hyperst.tl import _cohort

    started = []

    def local_client(n_workers):  # in-process workers: the same scheduling, without spawning interpreters
        started.append(Client(LocalCluster(n_workers=n_workers, processes=False, dashboard_address=None)))
        return started[-1]

    monkeypatch.setattr(_cohort, "_local_client", local_client)
    summary = hst.tl.cache_features(stores[:2], encoder="squidpy", cache=tmp_path / "c", views=1, n_workers=2)
    assert list(summary["status"]) == ["cached", "cached"]
    assert len(started) == 1 and started[0].status == "closed" and started[0].cluster.status.name == "closed"


@pytest.mark.slow
def test_local_worker_processes_are_started_and_closed(stores, tmp_path):
    import multiprocessing

    summary = hst.tl.cache_features(stores[:2], encoder="squidpy", cache=tmp_path / "c", views=1, n_workers=2)
    assert list(summary["status"]) == ["cached", "cached"]
    assert not multiprocessing.active_children()  # the cluster is gone


def test_started_workers_keep_glibcs_adaptive_malloc(monkeypatch):
    # dask sets MALLOC_TRIM_THRESHOLD_ in its workers and leaves it in this process once a nanny has run here;
    # with it a torch encoder spends ~40 % more CPU per spot, so the workers cache_features starts go without
    import os

    import dask
    import distributed  # noqa: F401  (its config)

    from hyperst.tl._cohort import TRIM_VARIABLE, worker_environment

    key = f"distributed.nanny.pre-spawn-environ.{TRIM_VARIABLE}"
    monkeypatch.setenv(TRIM_VARIABLE, "65536")  # as a nanny leaves it
    assert dask.config.get(key) is not None
    with worker_environment():
        assert TRIM_VARIABLE not in os.environ
        assert dask.config.get(key) is None
    assert os.environ[TRIM_VARIABLE] == "65536" and dask.config.get(key) is not None


@pytest.mark.slow
def test_local_workers_have_no_trim_threshold(monkeypatch):
    import os

    from hyperst.tl._cohort import TRIM_VARIABLE, _local_client

    monkeypatch.setenv(TRIM_VARIABLE, "65536")
    client = _local_client(1)
    try:
        assert list(client.run(lambda: os.environ.get(TRIM_VARIABLE)).values()) == [None]
    finally:
        client.close()
        client.cluster.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cache": False}, ValueError, r"writes caches: pass `cache=True`"),
        ({"n_workers": 0}, ValueError, r"Expected `n_workers` to be a positive integer, found `0`"),
        ({"batch_size": 1.5}, ValueError, r"Expected `batch_size` to be a positive integer"),
        ({"epochs": 3}, TypeError, r"Unknown option\(s\) \['epochs'\]"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(cohort, kwargs, error, match):
    with pytest.raises(error, match=match):
        hst.tl.cache_features(cohort[0], encoder="squidpy", **kwargs)


def test_slides_must_be_slides_or_paths():
    with pytest.raises(TypeError, match=r"Expected `sdata` to be a SpatialData, an AnnData, a path"):
        hst.tl.cache_features(42, encoder="squidpy")


def _no_work(*args, **kwargs):
    msg = "work started before the repeated slide was refused"
    raise AssertionError(msg)


def test_a_slide_given_twice_is_refused_before_any_work(stores, tmp_path, monkeypatch):
    import os

    import spatialdata as sd

    from hyperst.tl import _cohort, _fit_setup

    monkeypatch.setattr(_fit_setup, "load_slide", _no_work)  # nothing is loaded, read or cached
    monkeypatch.setattr(_cohort, "_run_serial", _no_work)
    monkeypatch.setattr(hst.tl._fit, "lora_encoder", _no_work)
    cache = tmp_path / "c"
    fresh = hst.datasets.synthetic(n_slides=2, n_spots=30, n_genes=10, seed=5)  # in memory: no store
    twice = [
        ([fresh[0], fresh[1], fresh[0]], r"`sdata\[2\]` is slide `sdata\[0\]` again \(the same object\)"),
        (
            [stores[0], stores[1], stores[1] + "/"],
            r"`sdata\[2\]` is slide `sdata\[1\]` again \(read from the same store",
        ),
        ([stores[0], os.path.relpath(stores[0])], "read from the same store"),
        ([sd.read_zarr(stores[0]), sd.read_zarr(stores[0])], "read from the same store"),
    ]
    for slides, match in twice:
        with pytest.raises(ValueError, match=match) as err:
            hst.tl.cache_features(slides, encoder="squidpy", cache=cache)
        assert "Pass every slide once" in str(err.value)
        objects = [sd.read_zarr(s) if isinstance(s, str) else s for s in slides]  # fit takes objects
        with pytest.raises(ValueError, match=match):
            hst.tl.fit(objects, genes=5, encoder="squidpy", cache=cache)
        with pytest.raises(ValueError, match=match):
            hst.tl.fit(objects, finetune="lora", encoder="resnet18")
    assert not cache.exists()


def test_slides_sharing_only_a_name_are_distinct(cohort):
    from hyperst.tl._prepare import check_distinct

    check_distinct([cohort[0], cohort[1], cohort[2]])  # all synthetic slides name their shapes alike


def test_the_features_command_caches_then_skips(stores, tmp_path, capsys):
    argv = ["features", *stores[:2], "--encoder", "squidpy", "--views", "1", "--cache", str(tmp_path / "c")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic_0" in out and "cached" in out and "2 cached, 0 skipped, 0 failed" in out
    assert main([*argv[:2], stores[2], *argv[3:]]) == 0
    out = capsys.readouterr().out
    assert "1 cached, 1 skipped, 0 failed" in out and "skipped" in out


def test_hyperst_fit_reads_the_caches_of_hyperst_features(stores, tmp_path, capsys):
    cache = str(tmp_path / "c")
    assert main(["features", *stores[:2], "--encoder", "squidpy", "--cache", cache, "--seed", "1"]) == 0
    before = _files(tmp_path / "c")
    fit = ["fit", *stores[:2], "--out", str(tmp_path / "m"), "--genes", "8", "--encoder", "squidpy"]
    assert main([*fit, "--max-epochs", "1", "--embed-dim", "16", "--cache", cache, "--seed", "1"]) == 0
    assert _files(tmp_path / "c") == before and "Fitted HyperST" in capsys.readouterr().out


def test_the_features_command_reports_a_failed_slide_with_status_1(stores, tmp_path, capsys):
    bad = tmp_path / "empty.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    argv = ["features", stores[0], str(bad), "--encoder", "squidpy", "--views", "1", "--cache", str(tmp_path / "c")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "1 cached, 0 skipped, 1 failed" in captured.out and "empty.zarr" in captured.err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["features", "/nonexistent.zarr"], "No SpatialData store at `/nonexistent.zarr`"),
        (["features", "/tmp", "--workers", "0"], "Expected `--workers` to be a positive integer, found `0`"),
    ],
    ids=["missing-store", "workers"],
)
def test_the_features_command_refuses_bad_arguments_without_heavy_imports(argv, needle):
    heavy = ("torch", "lightning", "spatialdata", "squidpy", "anndata", "dask", "distributed", "zarr")
    script = (
        "import json, sys\nfrom hyperst._cli import main\n"
        f"assert main({argv!r}) == 2\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
    assert needle in run.stderr and len(run.stderr.strip().splitlines()) == 1
