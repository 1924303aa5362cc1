"""Tests of hyperst.nn: blocks, lift, losses, the module, DDP gathering and the layering rule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyperst import lorentz
from hyperst.nn import (
    CONTRAST_PAIRS,
    ENTAIL_PAIRS,
    HyperSTModule,
    LorentzLift,
    ModuleConfig,
    ResMLP,
    cone_loss,
    contrastive_loss,
    entailment_loss,
    gather_with_grad,
    pair_logits,
    prediction_loss,
)

SRC = Path(__file__).resolve().parents[1] / "src"
N_FEATURES, N_GENES, BATCH, DIM = 20, 12, 8, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(seed: int = 0, batch: int = BATCH) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "spot_img": torch.randn(batch, N_FEATURES, generator=gen),
        "niche_img": torch.randn(batch, N_FEATURES, generator=gen),
        "spot_gene": torch.rand(batch, N_GENES, generator=gen) * 4,
        "niche_gene": torch.rand(batch, N_GENES, generator=gen) * 4,
    }


def _module(**overrides) -> HyperSTModule:
    torch.manual_seed(0)
    return HyperSTModule(N_FEATURES, N_GENES, ModuleConfig(embed_dim=DIM, **overrides))


def _streams(spot_image, niche_image, spot_gene=None, niche_gene=None) -> dict[str, torch.Tensor]:
    given = {"spot_image": spot_image, "niche_image": niche_image, "spot_gene": spot_gene, "niche_gene": niche_gene}
    return {k: v for k, v in given.items() if v is not None}


def _ref_dist(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """Float64 closed form acosh(-c <x, y>_L) / sqrt(c) for all pairs."""
    xt = np.sqrt(1 / c + (x**2).sum(-1))
    yt = np.sqrt(1 / c + (y**2).sum(-1))
    return np.arccosh(np.maximum(-c * (x @ y.T - np.outer(xt, yt)), 1)) / np.sqrt(c)


# ---- ResMLP ----


def test_resmlp_shapes_init_and_residual_structure():
    torch.manual_seed(0)
    mlp = ResMLP(10, 6, mlp_ratio=2, dropout=0.0, depth=2)
    assert mlp(torch.randn(4, 3, 10)).shape == (4, 3, 6)
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(6, 10), (12, 6), (6, 12), (12, 6), (6, 12)]
    for m in linears:
        assert torch.all(m.bias == 0)
        bound = math.sqrt(6 / sum(m.weight.shape))  # Xavier-uniform bound
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.7 * bound
    # with the blocks' output layers zeroed, each residual block is the identity
    for block in mlp.blocks:
        torch.nn.init.zeros_(block.mlp.fc2.weight)
    x = torch.randn(5, 10)
    expected = mlp.output_norm(mlp.input_proj(mlp.input_norm(x)))
    torch.testing.assert_close(mlp(x), expected)
    assert ResMLP(10, 6, depth=0)(x).shape == (5, 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_dim": 0}, r"Expected `in_dim` to be positive, found `0`"),
        ({"dropout": 1.0}, r"Expected `dropout` to be in \[0, 1\), found `1.0`"),
        ({"depth": -1}, r"Expected `depth` to be non-negative, found `-1`"),
    ],
)
def test_resmlp_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResMLP(**{"in_dim": 4, "hidden": 4, **kwargs})


# ---- LorentzLift ----


def test_lift_initial_values_and_output():
    lift = LorentzLift(64, ("image", "gene"), curv_init=2.0)
    assert lift.alpha("image").item() == pytest.approx(1 / 8)
    assert lift.curv.item() == pytest.approx(2.0)
    x = torch.randn(5, 64)
    torch.testing.assert_close(lift(x, "gene"), lorentz.exp_map0(x / 8, 2.0))
    with pytest.raises(KeyError, match=r"Key `'text'` not found in the lift's modalities"):
        lift(x, "text")


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_lift_curvature_and_scale_stay_in_band_under_optimiser_push(direction):
    lift = LorentzLift(4, ("image",))
    opt = torch.optim.SGD(lift.parameters(), lr=10.0)
    x = torch.randn(3, 4)
    for _ in range(5):
        opt.zero_grad()
        # push curv (and alpha) out of the band: up for direction 1, curv down for direction -1
        loss = -direction * lift.curv * 10 - lift.alpha("image") * 10 + 0 * lift(x, "image").sum()
        loss.backward()
        opt.step()
        assert 0.1 - 1e-6 <= lift.curv.item() <= 10 + 1e-6  # every read is inside the band
        assert lift.alpha("image").item() <= 1.0
    raw = lift.log_curv.exp().item()
    assert raw > 10 if direction > 0 else raw < 0.1  # the push really left the band
    lift.clamp_parameters_()
    assert lift.log_curv.exp().item() == pytest.approx(10.0 if direction > 0 else 0.1)
    assert lift.log_alpha["image"].item() == 0.0
    # on the bound the gradient still flows, so the parameters can move back inside
    grad_curv, grad_alpha = torch.autograd.grad(
        lift.curv + lift.alpha("image"), [lift.log_curv, lift.log_alpha["image"]]
    )
    assert grad_curv.item() == pytest.approx(lift.curv.item()) and grad_alpha.item() == pytest.approx(1.0)


def test_lift_fixed_curvature_and_validation():
    lift = LorentzLift(4, learn_curv=False, curv_init=0.5)
    assert not lift.log_curv.requires_grad and lift.curv.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"Expected `curv_init` to be within `curv_bounds` \(0.1, 10.0\), found `20"):
        LorentzLift(4, curv_init=20.0)
    with pytest.raises(ValueError, match=r"Expected `modalities` to be distinct names"):
        LorentzLift(4, ("image", "image"))


# ---- losses: hand-checked values ----


@pytest.mark.parametrize("curv", [0.1, 1.0, 10.0])
def test_contrastive_loss_two_points_closed_form(curv):
    rows = torch.tensor([[0.3, 0.0], [-0.2, 0.5]], dtype=torch.float64)
    cols = torch.tensor([[0.4, 0.1], [0.0, 0.9]], dtype=torch.float64)
    scale = 5.0
    d = _ref_dist(rows.numpy(), cols.numpy(), curv)

    def ce(dists: np.ndarray) -> float:  # rows of logits -scale * d, targets on the diagonal
        logits = -scale * dists
        return float(np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)]))

    one = contrastive_loss(_streams(rows, rows, cols), logit_scale=scale, curv=curv, pairs=("is_gs",))
    assert one.total.item() == pytest.approx(ce(d), rel=1e-6)
    assert set(one.terms) == {"hca_is_gs"}
    back = contrastive_loss(_streams(rows, rows, cols), logit_scale=scale, curv=curv, pairs=("gs_is",))
    assert back.total.item() == pytest.approx(ce(d.T), rel=1e-6)
    assert ce(d) != pytest.approx(ce(d.T), rel=1e-3)  # the two directions differ on this example
    niche = rows.flip(0)
    full = contrastive_loss(_streams(rows, niche, cols, cols.flip(0)), logit_scale=scale, curv=curv)
    d_niche = _ref_dist(niche.numpy(), cols.numpy(), curv)
    d_gn = _ref_dist(cols.flip(0).numpy(), rows.numpy(), curv)
    expected = {"hca_is_gs": ce(d), "hca_gs_is": ce(d.T), "hca_in_gs": ce(d_niche), "hca_gn_is": ce(d_gn)}
    assert {k: v.item() for k, v in full.terms.items()} == pytest.approx(expected, rel=1e-6)
    assert full.total.item() == pytest.approx(np.mean(list(expected.values())), rel=1e-6)


def test_pair_logits_both_geometries():
    a, b = torch.randn(3, 4), torch.randn(5, 4)
    torch.testing.assert_close(pair_logits(a, b, logit_scale=2.0, curv=0.5), -2.0 * lorentz.pairwise_dist(a, b, 0.5))
    cosine = F.cosine_similarity(a[:, None], b[None], dim=-1)
    torch.testing.assert_close(pair_logits(a, b, logit_scale=3.0, geometry="euclidean"), 3.0 * cosine)
    with pytest.raises(ValueError, match=r"Expected `curv` to be a positive number or tensor"):
        pair_logits(a, b, logit_scale=1.0)
    with pytest.raises(ValueError, match=r"Expected `geometry` to be 'lorentz' or 'euclidean', found `'poincare'`"):
        pair_logits(a, b, logit_scale=1.0, curv=1.0, geometry="poincare")


@pytest.mark.parametrize("curv", [0.1, 1.0, 10.0])
def test_cone_loss_zero_on_ray_and_hinge_outside(curv):
    parent = torch.tensor([[1.0, 0.5]], dtype=torch.float64) / math.sqrt(curv)
    on_ray = parent * 2.0
    assert cone_loss(parent, on_ray, curv=curv, aperture_scale=0.7).item() == 0.0
    # a child beside the parent: exterior angle from the law of cosines, aperture asin(2K / (sqrt(c)|p|))
    child = parent + torch.tensor([[-0.6, 1.2]], dtype=torch.float64) / math.sqrt(curv)
    p, q = parent.numpy(), child.numpy()
    zero = np.zeros((1, 2))
    a, e = np.sqrt(curv) * _ref_dist(p, zero, curv)[0, 0], np.sqrt(curv) * _ref_dist(q, zero, curv)[0, 0]
    b = np.sqrt(curv) * _ref_dist(p, q, curv)[0, 0]
    ext = np.pi - np.arccos((np.cosh(a) * np.cosh(b) - np.cosh(e)) / (np.sinh(a) * np.sinh(b)))
    aper = np.arcsin(2 * 0.1 / (np.sqrt(curv) * np.linalg.norm(p)))
    for m in (0.7, 1.2):
        assert ext - m * aper > 0.1  # outside the cone for both margins
        got = cone_loss(parent, child, curv=curv, aperture_scale=m, min_radius=0.1).item()
        assert got == pytest.approx(ext - m * aper, rel=1e-7)


def test_entailment_loss_margins_factor_and_pair_switches():
    gen = torch.Generator().manual_seed(1)
    parent = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    child = parent + 0.8 * torch.randn(6, 3, generator=gen, dtype=torch.float64)
    grandchild = child + 0.8 * torch.randn(6, 3, generator=gen, dtype=torch.float64)
    # spot image -> {spot gene, niche image} see parent -> child, and niche image / spot gene -> niche gene
    # see child -> grandchild, so each margin is checked on two pairs
    out = entailment_loss(_streams(parent, child, child, grandchild), curv=1.0)

    def cone(p, q, m):
        return cone_loss(p, q, curv=1.0, aperture_scale=m)

    expected = {
        "hea_is_gs": cone(parent, child, 0.7),
        "hea_is_in": cone(parent, child, 1.2),
        "hea_in_gn": cone(child, grandchild, 0.7),
        "hea_gs_gn": cone(child, grandchild, 1.2),
    }
    assert expected["hea_is_gs"] > expected["hea_is_in"] > 0  # the margins differ
    assert expected["hea_in_gn"] > expected["hea_gs_gn"] > 0
    torch.testing.assert_close(dict(out.terms), expected)
    torch.testing.assert_close(out.total, 0.5 * sum(expected.values()))
    cross = expected["hea_is_in"]
    quarter = entailment_loss(_streams(parent, child), curv=1.0, factor=0.25, pairs=("is_in",))
    assert set(quarter.terms) == {"hea_is_in"}
    torch.testing.assert_close(quarter.total, 0.25 * cross)
    with pytest.raises(ValueError, match=r"Expected `embeddings` to hold \['spot_gene'\] \(used by the selected"):
        entailment_loss(_streams(parent, child, None, child), curv=1.0, pairs=("is_gs",))
    with pytest.raises(ValueError, match=r"Expected `pairs` to be distinct names from"):
        entailment_loss(_streams(parent, child), curv=1.0, pairs=("gs_is",))
    with pytest.raises(ValueError, match=r"Expected `pairs` to be distinct names from .* at least one, found `\[\]`"):
        entailment_loss(_streams(parent, child), curv=1.0, pairs=())


def test_euclidean_cone_hand_values():
    parent = torch.tensor([[1.0, 0.0]])
    assert cone_loss(parent, torch.tensor([[3.0, 0.0]]), geometry="euclidean").item() == 0.0
    inward = cone_loss(parent, torch.tensor([[0.5, 0.0]]), geometry="euclidean", aperture_scale=1.0)
    assert inward.item() == pytest.approx(math.pi - math.asin(0.2), abs=1e-5)
    side = cone_loss(parent, torch.tensor([[1.0, 1.0]]), geometry="euclidean", aperture_scale=1.0)
    assert side.item() == pytest.approx(math.pi / 2 - math.asin(0.2), abs=1e-5)
    # degenerate cones (child == parent, parent at the origin) keep finite gradients
    parents = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    children = torch.tensor([[1.0, 0.0], [0.5, 0.5]], requires_grad=True)
    for geometry, curv in (("euclidean", None), ("lorentz", 1.0)):
        grads = torch.autograd.grad(cone_loss(parents, children, geometry=geometry, curv=curv), [parents, children])
        assert all(torch.isfinite(g).all() for g in grads)


def test_prediction_loss():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert prediction_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item())
    with pytest.raises(ValueError, match=r"Expected `target` to have the shape of `prediction` \(4, 3\)"):
        prediction_loss(a, b[:, :2])


# ---- HyperSTModule ----


def test_module_forward_backward_shapes_and_total():
    module = _module()
    batch = _batch()
    out = module(**batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "prediction": (BATCH, N_GENES),
        "spot_image": (BATCH, DIM),
        "niche_image": (BATCH, DIM),
        "spot_gene": (BATCH, DIM),
        "niche_gene": (BATCH, DIM),
    }
    loss = module.loss(out, batch["spot_gene"])
    t = loss.terms
    expected = t["mse"] + 0.2 * (t["hca"] + 0.4 * t["hea"])
    torch.testing.assert_close(loss.total, expected)
    torch.testing.assert_close(t["hea"], 0.5 * sum(t[f"hea_{p}"] for p in ENTAIL_PAIRS))
    torch.testing.assert_close(t["hca"], sum(t[f"hca_{p}"] for p in CONTRAST_PAIRS) / 4)
    assert t["curv"].item() == pytest.approx(1.0) and t["logit_scale"].item() == pytest.approx(1 / 0.07)
    assert t["alpha_image"].item() == pytest.approx(DIM**-0.5)
    loss.total.backward()
    for name, param in module.named_parameters():  # every stream, scale and the curvature is trained
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "overrides",
    [
        {"geometry": "euclidean"},
        {"entailment": False},
        {"decoder_input": "niche"},
        {"alignment": False, "decoder_input": "spot"},
    ],
)
def test_every_trainable_parameter_gets_a_gradient(overrides):
    # DDP (without find_unused_parameters) fails on trainable parameters that the loss does not reach
    module = _module(**overrides)
    batch = _batch()
    module.loss(module(**batch), batch["spot_gene"]).total.backward()
    unused = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert unused == []


def test_module_ablation_switches_change_terms():
    batch = _batch()

    def term_names(**overrides) -> set[str]:
        module = _module(**overrides)
        return set(module.loss(module(**batch), batch["spot_gene"]).terms)

    logged = {"logit_scale", "alpha_image", "alpha_gene"}
    hca = {"hca", *(f"hca_{p}" for p in CONTRAST_PAIRS)}
    hea = {"hea", *(f"hea_{p}" for p in ENTAIL_PAIRS)}
    assert term_names() == {"mse", "curv", *logged, *hca, *hea}
    assert term_names(entailment=False) == {"mse", "curv", *logged, *hca}
    assert term_names(entail_pairs=("is_in", "gs_gn")) == {
        "mse",
        "curv",
        *logged,
        *hca,
        "hea",
        "hea_is_in",
        "hea_gs_gn",
    }
    assert term_names(contrast_pairs=("is_gs",)) == {"mse", "curv", *logged, "hca", "hca_is_gs", *hea}
    assert term_names(geometry="euclidean") == {"mse", *logged, *hca, *hea}
    assert term_names(alignment=False) == {"mse"}


def test_prediction_ignores_genes_and_respects_decoder_input():
    batch = _batch()
    other = _batch(seed=1)
    for alignment in (False, True):
        module = _module(alignment=alignment).eval()
        pred = module(**batch)["prediction"]
        swapped = module(batch["spot_img"], batch["niche_img"], other["spot_gene"], other["niche_gene"])
        torch.testing.assert_close(swapped["prediction"], pred)
        torch.testing.assert_close(module.predict(batch["spot_img"], batch["niche_img"]), pred)
        assert not torch.allclose(module.predict(other["spot_img"], batch["niche_img"]), pred)
    no_alignment = _module(alignment=False)
    assert not any("gene" in name or "lift" in name for name, _ in no_alignment.named_parameters())
    assert not any("niche" in name for name, _ in _module(alignment=False, decoder_input="spot").named_parameters())
    with pytest.raises(ValueError, match=r"`embed` needs a module built with `alignment=True`"):
        no_alignment.embed(batch["spot_img"], batch["niche_img"])
    spot_only = _module(decoder_input="spot").eval()
    pred = spot_only.predict(batch["spot_img"], batch["niche_img"])
    torch.testing.assert_close(spot_only.predict(batch["spot_img"], other["niche_img"]), pred)
    assert not torch.allclose(spot_only.predict(other["spot_img"], batch["niche_img"]), pred)
    niche_only = _module(decoder_input="niche").eval()
    pred = niche_only.predict(batch["spot_img"], batch["niche_img"])
    torch.testing.assert_close(niche_only.predict(other["spot_img"], batch["niche_img"]), pred)


def test_embed_matches_forward_and_lies_on_hyperboloid():
    module = _module().eval()
    batch = _batch()
    out = module(**batch)
    emb = module.embed(batch["spot_img"], batch["niche_img"])
    torch.testing.assert_close(emb["spot_image"], out["spot_image"])
    full = lorentz.to_lorentz_full(emb["niche_image"], module.curv)
    assert lorentz.hyperboloid_residual(full.double(), module.curv.double()).abs().max() < 1e-3
    assert lorentz.dist0(emb["spot_image"], module.curv).min() > 0


def test_euclidean_geometry_runs_and_is_not_lifted():
    module = _module(geometry="euclidean")
    batch = _batch()
    out = module(**batch)
    loss = module.loss(out, batch["spot_gene"])
    loss.total.backward()
    assert torch.isfinite(loss.total)
    assert not module.lift.log_curv.requires_grad  # nothing to learn, and no unused parameter under DDP
    module.eval()  # no dropout, to compare with a manual pass
    out = module(**batch)
    spot = module.image_proj(module.spot_image_encoder(module.spot_image_projector(batch["spot_img"])))
    torch.testing.assert_close(out["spot_image"], module.lift.alpha("image") * spot)


def test_curvature_and_logit_scale_stay_in_band_after_steps_that_push_out():
    module = _module()
    batch = _batch()
    scalars = [module.lift.log_curv, module.log_logit_scale]
    opt = torch.optim.SGD(scalars, lr=1.0)
    for _ in range(4):
        opt.zero_grad()
        terms = module.loss(module(**batch), batch["spot_gene"])
        # reward large curvature and logit scale to push both past their bounds
        (terms.total - 10 * module.curv - module.logit_scale).backward()
        opt.step()
        # after every step the raw parameters are out of band, but every read is clamped
        assert module.lift.log_curv.exp().item() > 10 and module.log_logit_scale.exp().item() > 100
        assert module.curv.item() <= 10 + 1e-5 and module.logit_scale.item() <= 100 + 1e-3
    module(**batch)  # a training-mode forward pulls the raw parameters back, as the authors' code does
    assert module.lift.log_curv.exp().item() <= 10 + 1e-5
    assert module.log_logit_scale.exp().item() <= 100 + 1e-3
    for _ in range(4):  # and the curvature can leave the upper bound again, down to the lower one
        opt.zero_grad()
        (10 * module.curv).backward()
        opt.step()
        module.clamp_parameters_()
        assert 0.1 - 1e-6 <= module.lift.log_curv.exp().item() <= 10 + 1e-5
    assert module.curv.item() == pytest.approx(0.1, rel=1e-5)


def test_bf16_autocast_keeps_hyperbolic_block_float32():
    module = _module()
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(**batch)
        loss = module.loss(out, batch["spot_gene"])
    assert out["prediction"].dtype == torch.bfloat16  # the Euclidean part did run under autocast
    for key in ("spot_image", "niche_image", "spot_gene", "niche_gene"):
        assert out[key].dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in loss.terms.values())
    loss.total.backward()
    assert torch.isfinite(module.lift.log_curv.grad) and module.lift.log_curv.grad != 0
    # the loss functions alone also leave autocast: same value as float32 maths on the upcast inputs
    streams = _streams(*(lorentz.exp_map0(torch.randn(6, 32), 1.0).bfloat16() for _ in range(4)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for geometry, curv in (("lorentz", 1.0), ("euclidean", None)):
            hca = contrastive_loss(streams, logit_scale=20.0, curv=curv, geometry=geometry)
            hea = entailment_loss(streams, curv=curv, geometry=geometry)
            with torch.autocast("cpu", enabled=False):
                upcast = {k: v.float() for k, v in streams.items()}
                hca32 = contrastive_loss(upcast, logit_scale=20.0, curv=curv, geometry=geometry)
                hea32 = entailment_loss(upcast, curv=curv, geometry=geometry)
            assert hca.total.dtype == hea.total.dtype == torch.float32
            torch.testing.assert_close(hca.total, hca32.total)
            torch.testing.assert_close(hea.total, hea32.total)


def test_module_input_and_output_errors():
    module = _module()
    batch = _batch()
    with pytest.raises(ValueError, match=r"Expected `spot_img` to have shape \(B, 20\), found \(8, 19\)"):
        module(batch["spot_img"][:, :19], batch["niche_img"])
    out = module(batch["spot_img"], batch["niche_img"], batch["spot_gene"])
    with pytest.raises(ValueError, match=r"Expected `outputs` to hold \['niche_gene'\] for the alignment"):
        module.loss(out, batch["spot_gene"])
    lean = _module(contrast_pairs=("is_gs", "gs_is"), entail_pairs=("is_gs", "is_in"))
    assert torch.isfinite(
        lean.loss(lean(batch["spot_img"], batch["niche_img"], batch["spot_gene"]), batch["spot_gene"]).total
    )
    with pytest.raises(ValueError, match=r"Expected `n_genes` to be a positive integer, found `0`"):
        HyperSTModule(4, 0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"embed_dim": 0}, r"Expected `embed_dim` to be a positive integer, found `0`\."),
        ({"geometry": "poincare"}, r"Expected `geometry` to be 'lorentz' or 'euclidean', found `'poincare'`"),
        ({"entail_pairs": ()}, r"`entail_pairs` to be distinct names .* at least one with `entailment=True`"),
        ({"curv_init": 50.0}, r"Expected `curv_init` to be within `curv_bounds` \(0.1, 10.0\), found `50.0`"),
        ({"dropout": -0.1, "min_radius": 0}, r"`min_radius` to be positive, found `0`\. Expected `dropout` to be in"),
        ({"logit_scale_init": 200.0}, r"`logit_scale_init` to be at most `max_logit_scale`"),
    ],
)
def test_module_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModuleConfig(**overrides)


def test_module_config_round_trip_and_entailment_off_allows_no_pairs():
    config = ModuleConfig(embed_dim=8, entail_pairs=["is_in"], curv_bounds=[0.5, 2.0])
    assert config.entail_pairs == ("is_in",) and config.curv_bounds == (0.5, 2.0)
    assert ModuleConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ModuleConfig(entailment=False, entail_pairs=()).entail_pairs == ()


# ---- distributed gathering ----


def test_gather_with_grad_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


# The worker runs in a fresh interpreter that registers a bare `hyperst` package (as the layering test
# does), so it imports only torch and hyperst.nn: fast, whatever hyperst/__init__.py imports.
_BARE_PACKAGE = f"""
import sys, types
package = types.ModuleType("hyperst")
package.__path__ = [{str(SRC / "hyperst")!r}]
sys.modules["hyperst"] = package
"""
_DDP_WORKER = """
import sys
import torch
import torch.distributed as dist
from hyperst.nn import contrastive_loss

rank, init_file, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
gen = torch.Generator().manual_seed(3)
keys = ("spot_image", "niche_image", "spot_gene", "niche_gene")
batch = {k: torch.randn(6, 5, generator=gen, dtype=torch.float64) for k in keys}
rows = slice(0, 4) if rank == 0 else slice(4, 6)  # uneven shards: 4 + 2
local = {k: v[rows].clone().requires_grad_(True) for k, v in batch.items()}
scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
curv = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
loss = contrastive_loss(local, logit_scale=scale, curv=curv).total
loss = loss * (rows.stop - rows.start) / 6  # weighted by shard size: the sum over ranks is the global mean
loss.backward()
grads = {k: v.grad for k, v in local.items()} | {"scale": scale.grad, "curv": curv.grad}
torch.save({"loss": loss.detach(), "grads": grads}, out_file)
dist.destroy_process_group()
"""


def test_contrastive_loss_under_two_process_gloo_matches_single_process(tmp_path):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BARE_PACKAGE + _DDP_WORKER,
                str(rank),
                str(tmp_path / "store"),
                str(tmp_path / f"{rank}.pt"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    gen = torch.Generator().manual_seed(3)
    streams = {
        k: torch.randn(6, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
        for k in ("spot_image", "niche_image", "spot_gene", "niche_gene")
    }
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    curv = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(streams, logit_scale=scale, curv=curv).total
    loss.backward()
    torch.testing.assert_close(ranks[0]["loss"] + ranks[1]["loss"], loss.detach())
    for key, tensor in streams.items():
        gathered = torch.cat([ranks[0]["grads"][key], ranks[1]["grads"][key]])
        torch.testing.assert_close(gathered, tensor.grad)
        assert tensor.grad.abs().sum() > 0
    for key, tensor in (("scale", scale), ("curv", curv)):  # DDP would all-reduce these parameter grads
        torch.testing.assert_close(ranks[0]["grads"][key] + ranks[1]["grads"][key], tensor.grad)


# ---- layering ----


def test_lorentz_and_nn_import_without_data_libraries():
    code = (
        _BARE_PACKAGE  # the real hyperst/__init__.py never runs
        + """
import json
import hyperst.lorentz, hyperst.nn
assert hyperst.nn.HyperSTModule and hyperst.lorentz.exp_map0
forbidden = ("anndata", "spatialdata", "scanpy", "squidpy", "pandas")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden or m == "hyperst._settings")))
"""
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
