"""Gene-side inputs: HMHVG selection, count checks, log2 targets, niche means."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from hyperst._data._genes import counts_matrix, log2_targets, niche_mean, select_hmhvg


def _slide(seed: int, n_spots: int = 300, n_genes: int = 400) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    means = rng.gamma(0.5, 4.0, n_genes)
    spread = rng.uniform(0.2, 3.0, n_genes)  # per-gene overdispersion: variable genes vary more
    lam = means * rng.gamma(1 / spread[None, :] ** 2, spread[None, :] ** 2, size=(n_spots, n_genes))
    a = ad.AnnData(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    names = [f"G{i:03d}" for i in range(n_genes)]
    names[0], names[1], names[2], names[3] = "MT-CO1", "RPL13", "MTOR", "RPA1"
    a.var_names = names
    return a


def test_hmhvg_returns_exactly_n_genes_in_entry_order():
    slides = [_slide(0), _slide(1)]
    genes = select_hmhvg(slides, 50, n_top_hvg=200)
    assert len(genes) == 50 == len(set(genes))
    assert "MT-CO1" not in genes and "RPL13" not in genes
    # the defining property: the first k genes are within the top-N by mean and by std for N = entry of gene k
    x = sp.vstack([s[:, genes].X for s in slides]).toarray()
    assert x.mean(0)[:10].mean() > x.mean(0)[-10:].mean()
    assert select_hmhvg(slides, 50, n_top_hvg=200) == genes  # deterministic


def test_hmhvg_matches_a_brute_force_intersection():
    slides = [_slide(2)]
    genes = select_hmhvg(slides, 30, n_top_hvg=400, exclude=None)
    # brute force over N on the same candidate pool: smallest N whose intersection has >= 30 genes
    import scanpy as sc

    a = slides[0].copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=400, flavor="seurat")
    pool = list(a.var_names[a.var["highly_variable"]])
    x = slides[0][:, pool].X.toarray()
    by_mean = np.argsort(-x.mean(0), kind="stable")
    by_std = np.argsort(-x.std(0), kind="stable")
    for n in range(1, len(pool) + 1):
        inter = set(by_mean[:n]) & set(by_std[:n])
        if len(inter) >= 30:
            break
    assert set(genes) <= {pool[i] for i in inter}
    assert len(inter) - 30 <= 2  # at most the genes entering at the same N are left out


def test_too_few_candidates_is_a_clear_error():
    with pytest.raises(ValueError, match="Ask for fewer genes"):
        select_hmhvg([_slide(0, n_genes=40)], 100, n_top_hvg=20)


def test_counts_are_checked():
    a = _slide(0, 20, 10)
    assert counts_matrix(a).dtype == np.float32
    a.layers["lognorm"] = np.log1p(a.X.toarray()) + 0.1
    with pytest.raises(ValueError, match="looks normalised or log-transformed"):
        counts_matrix(a, "lognorm", name="sdata.tables['table']")
    with pytest.raises(KeyError, match="Available keys"):
        counts_matrix(a, "counts")
    a.X = -a.X
    with pytest.raises(ValueError, match="negative"):
        counts_matrix(a)


def test_log2_targets_and_niche_mean():
    counts = sp.csr_matrix(np.array([[1, 3], [3, 1], [7, 0]], dtype=np.float32))
    np.testing.assert_allclose(log2_targets(counts), np.log2(1 + counts.toarray()))
    adj = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32))
    expected = np.array([[2, 2], [11 / 3, 4 / 3], [5, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(niche_mean(counts, adj), expected, rtol=1e-6)


def _stacked_hmhvg(tables, n_genes, *, n_top_hvg=2000, layer=None, exclude=None):
    """The ranking as it was before the blocks: every slide's counts of the pool stacked, then one mean."""
    import re

    import scanpy as sc

    common = set(tables[0].var_names)
    for t in tables[1:]:
        common &= set(t.var_names)
    genes = [g for g in tables[0].var_names if g in common]
    union = set()
    for t in tables:
        x = counts_matrix(t, layer)
        a = ad.AnnData(x[:, t.var_names.get_indexer(genes)], var={"gene": genes})
        a.var_names = genes
        a = a[np.asarray((a.X > 0).sum(1)).ravel() > 0].copy()
        a = a[:, np.asarray((a.X > 0).sum(0)).ravel() > 0].copy()
        sc.pp.normalize_total(a)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=min(n_top_hvg, a.n_vars), flavor="seurat")
        union |= set(a.var_names[a.var["highly_variable"].to_numpy()])
    if exclude:
        union = {g for g in union if not re.compile(exclude).match(g)}
    pool = [g for g in genes if g in union]
    stacked = sp.vstack([counts_matrix(t, layer)[:, t.var_names.get_indexer(pool)] for t in tables]).tocsc()
    mean = np.asarray(stacked.mean(0)).ravel()
    sq = np.asarray(stacked.multiply(stacked).mean(0)).ravel()
    std = np.sqrt(np.maximum(sq - mean**2, 0))
    rank_mean = np.empty(len(pool), int)
    rank_mean[np.argsort(-mean, kind="stable")] = np.arange(len(pool))
    rank_std = np.empty(len(pool), int)
    rank_std[np.argsort(-std, kind="stable")] = np.arange(len(pool))
    order = np.lexsort((rank_mean, np.maximum(rank_mean, rank_std)))
    return [pool[i] for i in order[:n_genes]]


@pytest.mark.parametrize("block", [2**21, 5000, 1])
def test_hmhvg_by_gene_blocks_is_the_stacked_ranking(monkeypatch, block):
    """Blocks of genes (one gene each at ``block=1``) give the genes and order of one stacked matrix, bit for bit."""
    from hyperst._data import _genes

    monkeypatch.setattr(_genes, "STATS_BLOCK_ENTRIES", block)
    slides = [_slide(s, n_spots=150 + 40 * s) for s in range(5)]
    slides[1].X = slides[1].X.toarray()  # dense X on one slide
    slides[2].layers["counts"] = slides[2].X.copy()
    slides[2].X = None
    x = slides[3].X.tocoo()
    slides[3].X = sp.csr_matrix((np.r_[x.data, 0.0, 0.0], (np.r_[x.row, 0, 5], np.r_[x.col, 7, 9])), x.shape)
    slides[4] = slides[4][:, ::-1].copy()  # the same genes in another column order
    for s in slides:
        if "counts" not in s.layers:
            s.layers["counts"] = s.X
    before = [s.copy() for s in slides]
    pool = list(slides[0].var_names[::3])
    stored = np.array(
        [sum(sp.csr_matrix(s.layers["counts"])[:, [s.var_names.get_loc(g)]].nnz for s in slides) for g in pool]
    )
    mean, sq = _genes._pool_moments(slides, pool, stored, "counts")
    stacked = sp.vstack([counts_matrix(s, "counts")[:, s.var_names.get_indexer(pool)] for s in slides]).tocsc()
    assert np.array_equal(mean, np.asarray(stacked.mean(0)).ravel())  # the float32 values, not only the order
    assert np.array_equal(sq, np.asarray(stacked.multiply(stacked).mean(0)).ravel())
    for n, top in [(50, 200), (120, 400), (10, 30)]:
        new = select_hmhvg(slides, n, n_top_hvg=top, layer="counts", exclude=_genes.EXCLUDE_PATTERN)
        assert new == _stacked_hmhvg(slides, n, n_top_hvg=top, layer="counts", exclude=_genes.EXCLUDE_PATTERN)
    for s, b in zip(slides, before, strict=True):  # inputs untouched
        assert (sp.csr_matrix(s.layers["counts"]) != sp.csr_matrix(b.layers["counts"])).nnz == 0


def test_hmhvg_on_real_sections_is_the_stacked_ranking(her2st_dir, monkeypatch):
    from hyperst._data import _genes

    tables = [ad.read_h5ad(her2st_dir / f"{s}.h5ad") for s in ("B4", "C2", "C3", "C4", "C5", "C6")]
    old = _stacked_hmhvg(tables, 200, exclude=_genes.EXCLUDE_PATTERN)
    assert select_hmhvg(tables, 200) == old
    monkeypatch.setattr(_genes, "STATS_BLOCK_ENTRIES", 20_000)  # many blocks of a few genes
    assert select_hmhvg(tables, 200) == old
