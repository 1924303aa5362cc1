"""Gene programs and counts of the synthetic slides.

Each gene's log mean is a baseline plus the effects of its role (``var["synthetic_role"]``):

- ``"domain"``: a strong boost in one tissue domain;
- ``"subdomain"``: a moderate boost in one sub-domain and a weaker one in its parent domain;
- ``"morphology"``: grows with the nuclear fraction of the pixels under the spot (proliferation-like);
- ``"niche"``: grows with the fraction of the spot's grid neighbours that lie in one other domain
  (interface genes);
- ``"noise"``: baseline only.

Counts are negative binomial (a Gamma-Poisson mixture) around that mean times a per-spot library size. The
programs are shared by all slides of one call, so a model trained on some slides transfers to the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._synthetic_tissue import DOMAINS, PARENT, SUBDOMAINS

__all__ = ["ROLES", "GenePrograms", "gene_programs", "niche_composition", "sample_counts"]

#: Gene roles, in the order genes are allotted to them (the rest are ``"noise"``).
ROLES = ("domain", "subdomain", "morphology", "niche", "noise")
_SHARE = {"domain": 0.3, "subdomain": 0.25, "morphology": 0.1, "niche": 0.1}
#: Nuclear fraction at which morphology genes sit at their baseline, and the step of one log unit per effect.
_NUCLEAR_REFERENCE, _NUCLEAR_STEP = 0.2, 0.1


@dataclass
class GenePrograms:
    """Per-gene parameters of the count model (arrays over genes, ``(G,)`` unless stated).

    Attributes
    ----------
    role
        Role of each gene, one of :data:`ROLES`.
    baseline
        Log mean before any effect.
    domain_effect
        ``(G, n_domains)`` log-fold change in each domain.
    subdomain_effect
        ``(G, n_subdomains)`` log-fold change in each sub-domain.
    morphology_effect
        Log-fold change per :data:`_NUCLEAR_STEP` of nuclear fraction above :data:`_NUCLEAR_REFERENCE`.
    niche_effect
        ``(G, n_domains)`` log-fold change when all of a spot's neighbours lie in that (other) domain.
    dispersion
        Negative-binomial shape (inverse over-dispersion).
    """

    role: np.ndarray
    baseline: np.ndarray
    domain_effect: np.ndarray
    subdomain_effect: np.ndarray
    morphology_effect: np.ndarray
    niche_effect: np.ndarray
    dispersion: np.ndarray


def gene_programs(rng: np.random.Generator, n_genes: int) -> GenePrograms:
    """Draw the gene programs shared by all slides.

    Parameters
    ----------
    rng
        Random generator of the programs.
    n_genes
        Number of genes (at least one per role is guaranteed for ``n_genes >= 5``).

    Returns
    -------
    The :class:`GenePrograms`; genes of each role are spread over the gene order at random.
    """
    sizes = {role: max(1, int(share * n_genes)) for role, share in _SHARE.items()}
    role = np.array([r for r, k in sizes.items() for _ in range(k)] + ["noise"] * (n_genes - sum(sizes.values())))
    role = role[rng.permutation(n_genes)]
    n_dom, n_sub = len(DOMAINS), len(SUBDOMAINS)
    domain_effect = np.zeros((n_genes, n_dom))
    subdomain_effect = np.zeros((n_genes, n_sub))
    niche_effect = np.zeros((n_genes, n_dom))
    morphology_effect = np.zeros(n_genes)
    baseline = rng.normal(0.5, 0.7, n_genes)

    genes = np.flatnonzero(role == "domain")
    domain_effect[genes, np.arange(genes.size) % n_dom] = rng.uniform(1.5, 2.5, genes.size)
    genes = np.flatnonzero(role == "subdomain")
    target = np.arange(genes.size) % n_sub
    subdomain_effect[genes, target] = rng.uniform(0.8, 1.3, genes.size)
    domain_effect[genes, PARENT[target]] = rng.uniform(0.4, 0.8, genes.size)
    genes = np.flatnonzero(role == "morphology")
    morphology_effect[genes] = rng.uniform(0.5, 0.8, genes.size)
    baseline[genes] += 0.5
    genes = np.flatnonzero(role == "niche")
    niche_effect[genes, np.arange(genes.size) % n_dom] = rng.uniform(2.5, 3.5, genes.size)
    baseline[genes] += 0.5
    return GenePrograms(
        role=role,
        baseline=baseline,
        domain_effect=domain_effect,
        subdomain_effect=subdomain_effect,
        morphology_effect=morphology_effect,
        niche_effect=niche_effect,
        dispersion=rng.uniform(5.0, 20.0, n_genes),
    )


def niche_composition(domain: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Fraction of each spot's grid neighbours in each domain.

    Parameters
    ----------
    domain
        ``(N,)`` domain code of each spot.
    neighbours
        ``(N, K)`` neighbour indices, ``-1`` where the neighbour is not an in-tissue spot.

    Returns
    -------
    ``(N, n_domains)`` fractions over the neighbours present (all zero for a spot without neighbours).
    """
    present = neighbours >= 0
    codes = np.where(present, domain[np.maximum(neighbours, 0)], -1)
    counts = np.stack([(codes == d).sum(axis=1) for d in range(len(DOMAINS))], axis=1)
    return counts / np.maximum(present.sum(axis=1, keepdims=True), 1)


def sample_counts(
    rng: np.random.Generator,
    programs: GenePrograms,
    subdomain: np.ndarray,
    nuclear_fraction: np.ndarray,
    composition: np.ndarray,
    size_factor: float | np.ndarray = 1.0,
) -> np.ndarray:
    """Sample the ``(N, G)`` integer counts of one slide.

    Parameters
    ----------
    rng
        Random generator of the slide.
    programs
        Gene programs from :func:`gene_programs`.
    subdomain
        ``(N,)`` sub-domain code of each spot.
    nuclear_fraction
        ``(N,)`` fraction of nuclear pixels under each spot.
    composition
        ``(N, n_domains)`` neighbour composition from :func:`niche_composition`.
    size_factor
        Expected counts relative to a Visium spot's, scalar or ``(N,)``: the captured area of a bin or a cell
        over a 55 µm spot's (1 for spots).

    Returns
    -------
    ``(N, G)`` int64 counts.
    """
    domain = PARENT[subdomain]
    other = composition * (np.arange(len(DOMAINS))[None, :] != domain[:, None])  # neighbours in other domains
    log_mean = (
        programs.baseline[None, :]
        + programs.domain_effect[:, domain].T
        + programs.subdomain_effect[:, subdomain].T
        + np.outer((nuclear_fraction - _NUCLEAR_REFERENCE) / _NUCLEAR_STEP, programs.morphology_effect)
        + other @ programs.niche_effect.T
        + rng.normal(0.0, 0.3, subdomain.size)[:, None]  # library size
    )
    shape = programs.dispersion[None, :]
    mean = np.exp(log_mean) * rng.gamma(shape, 1.0 / shape, size=log_mean.shape)
    if not np.all(np.asarray(size_factor) == 1.0):
        mean *= np.reshape(size_factor, (-1, 1)) if np.ndim(size_factor) else size_factor
    return rng.poisson(mean)
