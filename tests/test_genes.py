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
