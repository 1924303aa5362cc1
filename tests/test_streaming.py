"""Training streams from the feature caches: bounded chunk cache, exact streamed statistics, same fit as in memory."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import hyperst as hst
from hyperst._data._dataset import ChunkShuffleSampler, FeatureDataset
from hyperst._data._store import (
    RowSource,
    RunningMoments,
    SlideArrays,
    chunk_cache,
    column_mean_std,
    take,
    write_rows,
)

FIT = {
    "genes": 20,
    "encoder": "squidpy",
    "patch_px": 32,
    "max_epochs": 3,
    "batch_size": 32,
    "embed_dim": 16,
    "random_state": 0,
}


@pytest.fixture(scope="module")
def slides():
    return hst.datasets.synthetic(n_slides=2, n_spots=120, n_genes=40, seed=2)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory, slides):
    """Caches of both slides, built once by a fit's own extraction path."""
    folder = tmp_path_factory.mktemp("features")
    hst.tl.fit(slides, cache=folder, **{**FIT, "max_epochs": 1, "refit": False})
    return folder


@pytest.fixture
def in_memory(monkeypatch, feature_cache):
    """``cache=False`` fits (features and gene arrays in memory) read the same features as the cached fits."""
    from hyperst.tl import _fit_setup
    from hyperst.tl._features import extract_features

    def from_cache(*args, **kwargs):
        kwargs.update(cache=feature_cache, lazy=False)
        return tuple(RowSource(a) for a in extract_features(*args, **kwargs))

    monkeypatch.setattr(_fit_setup, "extract_features", from_cache)


def _weights(model):
    return model.module.state_dict()


def _assert_same(a, b):
    sa, sb = _weights(a), _weights(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_streamed_statistics_equal_numpy_to_the_last_bit():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 23)) * rng.uniform(1e-3, 1e3, 23) + 5).astype(np.float32)
    for size in (1, 7, 128, 999, 1000):
        mean, std = column_mean_std(lambda size=size: (x[a : a + size] for a in range(0, len(x), size)))
        np.testing.assert_array_equal(mean, x.mean(0))
        np.testing.assert_array_equal(std, x.std(0))
    with pytest.raises(ValueError, match="No rows"):
        column_mean_std(lambda: iter([]))


def test_running_moments_are_the_exact_moments_rounded():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 23)) * rng.uniform(1e-3, 1e3, 23) + 5).astype(np.float32)
    exact = x.astype(np.float64)
    for size in (1, 7, 128, 1000):
        moments = RunningMoments()
        for a in range(0, len(x), size):
            moments.add(x[a : a + size])
            moments.add(x[:0])  # an empty block changes nothing
        mean, std = moments.result()
        assert mean.dtype == std.dtype == np.float32
        np.testing.assert_allclose(mean, exact.mean(0), rtol=1e-6, atol=1e-6 * exact.std(0).max())
        np.testing.assert_allclose(std, exact.std(0), rtol=1e-6)
        np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)  # the stacked float32 statistics, to rounding
    with pytest.raises(ValueError, match="No rows"):
        RunningMoments().result()


def test_rows_read_through_the_chunk_cache_stay_within_its_budget(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    spot = rng.standard_normal((500, 4, 64)).astype(np.float32)  # 1 KiB per row
    source = write_rows(tmp_path / "s.zarr", {"spot": spot}, chunk_len=50)["spot"]
    assert not source.in_memory and source.chunk_len == 50 and source.row_nbytes == 1024
    monkeypatch.setattr(hst.settings, "feature_cache_mb", 0)  # keeps one chunk only
    chunk_cache.clear()
    rows = rng.permutation(500)[:64]
    views = rng.integers(0, 4, 64)
    np.testing.assert_array_equal(take(source, rows, views), spot[rows, views])
    np.testing.assert_array_equal(take(source, rows), spot[rows])
    assert chunk_cache.nbytes <= 50 * 1024
    # a pickled source (a spawned DataLoader worker's copy) travels as its path and reopens itself
    copy = pickle.loads(pickle.dumps(source))
    assert copy._handle is None
    np.testing.assert_array_equal(take(copy, rows[:5]), spot[rows[:5]])
    chunk_cache.clear()


def test_chunk_shuffle_reads_whole_chunks_in_windows_and_changes_with_the_epoch():
    chunks = np.repeat(np.arange(20), 10)  # 20 chunks of 10 items
    sampler = ChunkShuffleSampler(chunks, 30, seed=0)
    order = np.array(list(sampler))
    assert sorted(order.tolist()) == list(range(200))
    for w in range(0, 180, 30):  # each window of 30 items is 3 whole chunks (the last: 2)
        assert len(np.unique(chunks[order[w : w + 30]])) == 3
    again = np.array(list(sampler))
    sampler.set_epoch(1)
    np.testing.assert_array_equal(order, again)
    assert not np.array_equal(order, np.array(list(sampler)))


def test_chunk_shuffle_yields_its_order_a_block_at_a_time():
    sampler = ChunkShuffleSampler(np.repeat(np.arange(500), 41), 1000, seed=3)  # 20,500 items: three blocks
    items = list(sampler)
    assert all(type(i) is int for i in items[:3])
    assert items == sampler.order().tolist()


def test_dataset_uses_the_chunk_shuffle_only_beyond_the_budget(tmp_path, monkeypatch):
    class Slide:
        name = "a"

    rng = np.random.default_rng(2)
    stored = write_rows(tmp_path / "f.zarr", {"spot": rng.random((300, 2, 8), dtype=np.float32)}, chunk_len=32)
    niche = write_rows(tmp_path / "n.zarr", {"niche": rng.random((300, 2, 8), dtype=np.float32)}, chunk_len=32)
    genes = tuple(RowSource(rng.random((300, 3), dtype=np.float32)) for _ in range(3))
    arrays = {"a": SlideArrays(genes, stored["spot"], niche["niche"])}
    data = FeatureDataset([(Slide(), np.arange(10, 290))], arrays, augment=True, seed=0)
    assert data.nbytes() == 2 * 10 * 32 * 64 and data.sampler() is None
    monkeypatch.setattr(hst.settings, "feature_cache_mb", 0)
    sampler = data.sampler()
    assert isinstance(sampler, ChunkShuffleSampler) and sorted(sampler) == list(range(280))
    items = data.__getitems__([0, 279, 5])
    spot = stored["spot"].read_chunk(0)
    np.testing.assert_array_equal(items[0][0].numpy(), spot[10, data.views[0]])
    np.testing.assert_array_equal(items[2][4].numpy(), genes[2].array[15])
    chunk_cache.clear()


def test_a_streamed_fit_equals_the_fit_in_memory(slides, feature_cache, in_memory):
    streamed = hst.tl.fit(slides, cache=feature_cache, **FIT)
    assert not list(feature_cache.glob(".fit-*"))  # the gene arrays' folder is removed after the fit
    assert chunk_cache.nbytes == 0
    memory = hst.tl.fit(slides, cache=False, **FIT)
    _assert_same(streamed, memory)
    assert streamed.training.qc == memory.training.qc
    assert streamed.training.val_pcc == memory.training.val_pcc
    assert streamed.training.calibration == memory.training.calibration


def test_a_fit_beyond_the_budget_streams_with_the_same_statistics(slides, feature_cache, in_memory, monkeypatch):
    memory = hst.tl.fit(slides, cache=False, **FIT)
    held = []
    original = chunk_cache.get

    def watched(source, c):
        out = original(source, c)
        held.append(chunk_cache.nbytes)
        return out

    monkeypatch.setattr(chunk_cache, "get", watched)
    monkeypatch.setattr(hst.settings, "feature_cache_mb", 0)  # one chunk at a time: the chunk-aware shuffle
    small = hst.tl.fit(slides, cache=feature_cache, **FIT)
    largest = max(a.row_nbytes * a.chunk_len for a in _cached_sources(feature_cache))
    assert held and max(held) <= largest
    for k in ("feature_shift", "feature_scale"):  # streamed by blocks, equal to the last bit
        assert torch.equal(_weights(small)[k], _weights(memory)[k])
    assert all(np.isfinite(v.numpy()).all() for v in _weights(small).values())
    assert small.training.qc["feature_distance"] == memory.training.qc["feature_distance"]


def _cached_sources(folder):
    return [RowSource(path=p, name=n) for p in folder.glob("*.zarr") for n in ("spot", "niche")]


DDP = {**FIT, "dropout": 0.0, "max_epochs": 2, "patience": 50}


@pytest.mark.slow
def test_a_two_process_gloo_fit_equals_one_process_on_the_same_global_batches(slides, feature_cache, monkeypatch):
    """DDP (2 forked CPU processes, gloo) with 16 spots a process = one process with batches of 32.

    The single process draws the order a DDP sampler draws (``DistributedSampler`` of one replica, same
    seed), so its batch ``k`` holds exactly the spots of the two processes' batches ``k``; with equal shards
    DDP's averaged gradients are the gradients of the global batch. Equal up to float32 reduction order.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from hyperst import _train

    ddp = hst.tl.fit(
        slides,
        cache=feature_cache,
        accelerator="cpu",
        devices=2,
        strategy="ddp_notebook",
        **{**DDP, "batch_size": 16},
    )
    original = _train._loader

    def like_ddp(ds, cfg, *, train, world_size=1):
        if not train:
            return original(ds, cfg, train=train)
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=cfg.random_state)
        return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)

    monkeypatch.setattr(_train, "_loader", like_ddp)
    single = hst.tl.fit(slides, cache=feature_cache, accelerator="cpu", devices=1, **{**DDP, "batch_size": 32})
    assert ddp.training.best_epoch == single.training.best_epoch
    a, b = _weights(ddp), _weights(single)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    init = type(single.module)(single.module.n_features, len(single.genes), single.config.module).state_dict()
    assert any(not torch.equal(init[k], b[k]) for k in b if "feature_" not in k)


@pytest.mark.slow
def test_fit_under_ddp_streams_with_the_chunk_shuffle(slides, feature_cache, monkeypatch):
    monkeypatch.setattr(hst.settings, "feature_cache_mb", 0)
    model = hst.tl.fit(
        slides, cache=feature_cache, accelerator="cpu", devices=2, strategy="ddp_notebook", **{**DDP, "batch_size": 16}
    )
    assert all(np.isfinite(v.numpy()).all() for v in _weights(model).values())
    assert len(model.history) == DDP["max_epochs"]


def test_ddp_batches_fit_each_process_share_so_no_step_is_dropped():
    """40 spots on 2 processes with batch 32: each process sees 20, so a batch of 32 with drop_last would train
    nothing; the batch shrinks to the share instead."""
    from torch.utils.data import TensorDataset

    from hyperst import HyperSTConfig, _train

    ds = TensorDataset(torch.zeros(40, 1))
    cfg = HyperSTConfig(batch_size=32)
    one = _train._loader(ds, cfg, train=True)
    two = _train._loader(ds, cfg, train=True, world_size=2)
    assert (one.batch_size, one.drop_last) == (32, True)
    assert (two.batch_size, two.drop_last) == (20, False)
    assert _train._loader(ds, cfg, train=True, world_size=8).batch_size == 5
