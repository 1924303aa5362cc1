"""Gene-side inputs: HMHVG gene selection and log2 targets for spots and niches.

HMHVG ("high-mean, highly variable genes", as in the authors' ``dataset_preprocess.py``): the union of each
slide's top highly variable genes (scanpy, Seurat flavour, on normalised log counts), without mitochondrial and
ribosomal genes, ranked on the raw counts of all training spots by mean and by standard deviation. A gene enters
the intersection of the top-N-by-mean and top-N-by-std sets at ``N = max(rank_mean, rank_std) + 1``; taking the
``n_genes`` genes that enter first gives exactly ``n_genes`` genes (the authors tune N by hand until the
intersection has 200).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._validation import expected, expected_in, key_not_found

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["counts_matrix", "log2_targets", "niche_mean", "select_hmhvg"]

#: Mitochondrial and ribosomal-protein symbols (human and mouse). The authors' code drops every symbol that
#: merely starts with "MT"/"RP", which also removes genes such as MTOR or RPA1; we match the families only.
EXCLUDE_PATTERN = r"^(MT-|mt-|Mt-|RP[SL]\d|Rp[sl]\d|MRP[SL]\d|Mrp[sl]\d)"

#: Stored counts (all slides together) per block of genes when ranking the HMHVG pool: about 8 bytes each in
#: the stacked block and as much in each of the few copies taken of it, so ~20 MiB at most (one gene if more).
STATS_BLOCK_ENTRIES = 2**19


def counts_matrix(adata: AnnData, layer: str | None = None, *, name: str = "table") -> sp.csr_matrix:
    """Raw counts of ``adata`` (``X`` or ``layers[layer]``) as float32 CSR, checked to be counts.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        If the values are negative, non-finite or not integers (already normalised or log-transformed).
    """
    if layer is not None and layer not in adata.layers:
        msg = key_not_found(
            layer,
            f"{name}.layers",
            adata.layers.keys(),
            "Pass `layer=None` to read `X`, or name a layer of raw counts.",
        )
        raise KeyError(msg)
    x = adata.X if layer is None else adata.layers[layer]
    if x is None:
        msg = f"{expected_in('raw counts', f'`{name}.X`', 'none (`X` is None)')} Pass `layer=` naming the raw counts."
        raise ValueError(msg)
    x = sp.csr_matrix(x, dtype=np.float32)
    vals = x.data
    where = f"`{name}.{'X' if layer is None else f'layers[{layer!r}]'}`"
    if vals.size and not np.isfinite(vals).all():
        problem = expected_in("raw counts", where, "NaN or infinite values")
        msg = f"{problem} Fill them (e.g. with 0) or drop those spots first."
        raise ValueError(msg)
    if vals.size and vals.min() < 0:
        found = f"negative values (min {vals.min():g})"
        msg = (
            f"{expected_in('raw counts', where, found)} The matrix looks centred or scaled. Pass the raw counts "
            "(e.g. `layer='counts'`)."
        )
        raise ValueError(msg)
    if vals.size and not np.allclose(vals, np.round(vals)):
        msg = (
            f"{expected_in('raw (integer) counts', where, 'non-integer values')} The matrix looks normalised or "
            "log-transformed. Pass the raw counts (e.g. `layer='counts'`)."
        )
        raise ValueError(msg)
    return x


def select_hmhvg(
    tables: Sequence[AnnData],
    n_genes: int = 200,
    *,
    n_top_hvg: int = 2000,
    layer: str | None = None,
    exclude: str | None = EXCLUDE_PATTERN,
) -> list[str]:
    """Pick exactly ``n_genes`` HMHVG genes from the training slides' raw counts.

    Parameters
    ----------
    tables
        One AnnData of raw counts per training slide.
    n_genes
        Genes to return.
    n_top_hvg
        Highly variable genes taken per slide before the union.
    layer
        Layer holding raw counts (``None``: ``X``).
    exclude
        Regular expression of gene symbols to drop (mitochondrial and ribosomal by default).

    Returns
    -------
    Gene names, ordered by the ``N`` at which they enter the top-N-by-mean ∩ top-N-by-std set.
    """
    if not isinstance(n_genes, int) or n_genes < 1:
        raise ValueError(expected("genes", "a positive integer", n_genes))
    common = set(tables[0].var_names)
    for t in tables[1:]:
        common &= set(t.var_names)
    genes = [g for g in tables[0].var_names if g in common]
    union: set[str] = set()
    stored = np.zeros(len(genes), np.int64)
    for t in tables:
        hvg, nnz = _slide_hvg(t, genes, layer, n_top_hvg)
        union |= hvg
        stored += nnz
    if exclude:
        rx = re.compile(exclude)
        union = {g for g in union if not rx.match(g)}
    keep = [i for i, g in enumerate(genes) if g in union]
    pool = [genes[i] for i in keep]
    if len(pool) < n_genes:
        msg = (
            f"Only {len(pool)} candidate genes (highly variable in some training slide, not mitochondrial or "
            f"ribosomal, of the {len(genes)} genes the training tables share) for `genes={n_genes}`. Ask for fewer "
            f"genes or pass a list of names (a targeted panel such as Xenium's: `genes={len(pool)}` or fewer)."
        )
        raise ValueError(msg)
    mean, sq = _pool_moments(tables, pool, stored[keep], layer)
    std = np.sqrt(np.maximum(sq - mean**2, 0))
    rank_mean = np.empty(len(pool), int)
    rank_mean[np.argsort(-mean, kind="stable")] = np.arange(len(pool))
    rank_std = np.empty(len(pool), int)
    rank_std[np.argsort(-std, kind="stable")] = np.arange(len(pool))
    enter = np.maximum(rank_mean, rank_std)
    order = np.lexsort((rank_mean, enter))
    return [pool[i] for i in order[:n_genes]]


def _slide_hvg(t: AnnData, genes: list[str], layer: str | None, n_top_hvg: int) -> tuple[set[str], np.ndarray]:
    """One slide's highly variable genes among ``genes``, and the entries its counts store per gene."""
    import anndata as ad
    import scanpy as sc

    x = counts_matrix(t, layer)[:, t.var_names.get_indexer(genes)]
    nnz = np.bincount(x.indices, minlength=len(genes)).astype(np.int64)
    a = ad.AnnData(x, var={"gene": genes})
    a.var_names = genes
    a = a[np.asarray((a.X > 0).sum(1)).ravel() > 0].copy()
    a = a[:, np.asarray((a.X > 0).sum(0)).ravel() > 0].copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    top = min(n_top_hvg, a.n_vars)
    sc.pp.highly_variable_genes(a, n_top_genes=top, flavor="seurat")
    return set(a.var_names[a.var["highly_variable"].to_numpy()]), nnz


def _pool_moments(
    tables: Sequence[AnnData], pool: list[str], stored: np.ndarray, layer: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(P,)`` float32 mean and mean square of the ``pool`` genes' raw counts over every spot of ``tables``.

    Computed by blocks of genes (at most :data:`STATS_BLOCK_ENTRIES` stored counts, or one gene), each the
    column block of all slides' stacked counts: a column's float32 sum is numpy's pairwise sum of its entries in
    spot order, which per-slide partial sums would not reproduce bit for bit (and the ranking by mean and
    standard deviation, ties included, depends on the last bit). Memory: one block, not the cohort's counts.
    """
    mean = np.empty(len(pool), np.float32)
    sq = np.empty(len(pool), np.float32)
    ends = np.cumsum(stored)
    start = 0
    while start < len(pool):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - stored[start] + STATS_BLOCK_ENTRIES, "right")))
        block = pool[start:stop]
        parts = [sp.csr_matrix(_counts(t, layer)[:, t.var_names.get_indexer(block)], dtype=np.float32) for t in tables]
        stacked = sp.vstack(parts).tocsc()
        del parts
        mean[start:stop] = np.asarray(stacked.mean(0)).ravel()
        sq[start:stop] = np.asarray(stacked.multiply(stacked).mean(0)).ravel()
        start = stop
    return mean, sq


def _counts(adata: AnnData, layer: str | None) -> Any:
    """``X`` or ``layers[layer]`` of ``adata`` as stored (already checked by :func:`counts_matrix`)."""
    return adata.X if layer is None else adata.layers[layer]


def log2_targets(counts: sp.spmatrix | np.ndarray) -> np.ndarray:
    """``log2(1 + counts)`` as a dense float32 array."""
    dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    return np.log2(1.0 + dense.astype(np.float32))


def niche_mean(counts: sp.spmatrix | np.ndarray, connectivities: sp.spmatrix) -> np.ndarray:
    """Mean raw counts over each spot and its niche neighbours (the niche gene input of HyperST), dense float32."""
    adj = sp.csr_matrix(connectivities, dtype=np.float32)
    adj = (adj + sp.eye(adj.shape[0], dtype=np.float32, format="csr")).tocsr()
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(1)).ravel()
    summed = adj @ (counts if sp.issparse(counts) else sp.csr_matrix(counts))
    dense = summed.toarray() if sp.issparse(summed) else np.asarray(summed)
    return (dense / deg[:, None]).astype(np.float32)
