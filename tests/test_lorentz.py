"""Tests of hyperst.lorentz against float64 closed forms and geoopt."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from hyperst import lorentz

CURVS = [0.1, 1.0, 10.0]  # both ends of the module's curvature clamp, and the initial value


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _geoopt(curv: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # geoopt's torch.jit.script deprecation warnings
        return lorentz.geoopt_manifold(curv, dtype=torch.float64)


def _points(n: int, d: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * scale


# ---- float64 closed-form references, written independently of the module (numpy) ----


def _ref_time(x: np.ndarray, c: float) -> np.ndarray:
    return np.sqrt(1 / c + (x**2).sum(-1))


def _ref_pairwise_dist(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    ip = x @ y.T - np.outer(_ref_time(x, c), _ref_time(y, c))
    return np.arccosh(np.maximum(-c * ip, 1.0)) / np.sqrt(c)


def _ref_exp0(v: np.ndarray, c: float) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.sinh(np.sqrt(c) * n) * v / (np.sqrt(c) * n)


def _ref_ext_angle(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """Exterior angle at x from the hyperbolic law of cosines on triangle O-x-y (curvature -1 units)."""
    zero = np.zeros((1, x.shape[1]))
    a = np.sqrt(c) * _ref_pairwise_dist(x, zero, c)[:, 0]  # |Ox|
    b = np.sqrt(c) * np.diag(_ref_pairwise_dist(x, y, c))  # |xy|
    e = np.sqrt(c) * _ref_pairwise_dist(y, zero, c)[:, 0]  # |Oy|
    cos_interior = (np.cosh(a) * np.cosh(b) - np.cosh(e)) / (np.sinh(a) * np.sinh(b))
    return np.pi - np.arccos(np.clip(cos_interior, -1, 1))


# ---- manifold constraint, maps ----


@pytest.mark.parametrize("curv", CURVS)
def test_exp_map0_lands_on_hyperboloid_and_matches_geoopt(curv):
    v = _points(16, 5, scale=0.7)
    x = lorentz.exp_map0(v, curv)
    full = lorentz.to_lorentz_full(x, curv)
    # relative residual: <x,x>_L + 1/c scaled by the size of the terms
    residual = lorentz.hyperboloid_residual(full, curv) / (full[:, 0] ** 2)
    assert residual.abs().max() < 1e-12
    assert (full[:, 0] > 0).all()
    np.testing.assert_allclose(x.numpy(), _ref_exp0(v.numpy(), curv), rtol=1e-10)
    manifold = _geoopt(curv)
    ok, reason = manifold.check_point_on_manifold(full, explain=True, atol=1e-8, rtol=1e-8)
    assert ok, reason
    ambient_v = torch.cat([torch.zeros(16, 1, dtype=torch.float64), v], dim=-1)
    expected = manifold.expmap0(ambient_v, project=False)
    torch.testing.assert_close(full, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("curv", CURVS)
def test_log_map0_inverts_exp_map0_and_matches_geoopt(curv):
    v = _points(16, 5, scale=1.5 / math.sqrt(curv), seed=1)  # below the sinh cap of exp_map0
    x = lorentz.exp_map0(v, curv)
    torch.testing.assert_close(lorentz.log_map0(x, curv), v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lorentz.exp_map0(lorentz.log_map0(x, curv), curv), x, rtol=1e-10, atol=1e-12)
    ambient = _geoopt(curv).logmap0(lorentz.to_lorentz_full(x, curv))
    assert ambient[:, 0].abs().max() < 1e-8  # geoopt's tangent vector at the origin has no time part
    torch.testing.assert_close(ambient[:, 1:], v, rtol=1e-7, atol=1e-7)


def test_exp_map0_tiny_and_huge_vectors():
    v = torch.tensor([[1e-12, -2e-12, 0.0], [0.0, 0.0, 0.0], [1e4, 0.0, 0.0]])
    x = lorentz.exp_map0(v, 1.0)
    torch.testing.assert_close(x[:2], v[:2], rtol=1e-6, atol=0)  # sinh(t)/t -> 1
    assert torch.isfinite(x).all()
    # the sinh argument is capped at asinh(2**15): the space norm saturates at 2**15 / sqrt(curv)
    assert x[2, 0].item() == pytest.approx(2.0**15, rel=1e-5)
    assert lorentz.exp_map0(v, 0.1)[2, 0].item() == pytest.approx(2.0**15 / math.sqrt(0.1), rel=1e-5)
    torch.testing.assert_close(lorentz.log_map0(v[:2], 1.0), v[:2], rtol=1e-6, atol=0)


# ---- inner products and distances ----


@pytest.mark.parametrize("curv", CURVS)
def test_inner_matches_geoopt_and_self_inner(curv):
    x, y = _points(6, 4, seed=2), _points(7, 4, seed=3)
    full_x, full_y = lorentz.to_lorentz_full(x, curv), lorentz.to_lorentz_full(y, curv)
    manifold = _geoopt(curv)
    expected = manifold.inner(None, full_x[:, None, :], full_y[None, :, :])
    torch.testing.assert_close(lorentz.pairwise_inner(x, y, curv), expected)
    torch.testing.assert_close(lorentz.inner(x, y[:6], curv), torch.diagonal(expected))
    torch.testing.assert_close(lorentz.inner(x, x, curv), torch.full((6,), -1 / curv, dtype=torch.float64))


@pytest.mark.parametrize("curv", CURVS)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_pairwise_dist_matches_closed_form_and_geoopt(curv, scale):
    x, y = _points(6, 4, scale, seed=4), _points(5, 4, scale, seed=5)
    d = lorentz.pairwise_dist(x, y, curv)
    expected = _ref_pairwise_dist(x.numpy(), y.numpy(), curv)
    np.testing.assert_allclose(d.numpy(), expected, rtol=1e-7, atol=1e-9)
    full_x, full_y = lorentz.to_lorentz_full(x, curv), lorentz.to_lorentz_full(y, curv)
    expected = _geoopt(curv).dist(full_x[:, None, :], full_y[None, :, :])
    torch.testing.assert_close(d, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lorentz.dist(x[:5], y, curv), torch.diagonal(d))


@pytest.mark.parametrize("curv", CURVS)
def test_pairwise_dist_symmetric_with_zero_diagonal_float32(curv):
    x = torch.cat([_points(4, 8, 1.0, seed=6), _points(4, 8, 1e4, seed=7)]).float()
    d = lorentz.pairwise_dist(x, x, curv)
    torch.testing.assert_close(d, d.T, rtol=1e-5, atol=1e-5)
    assert torch.diagonal(d).abs().max() < 1e-6  # the textbook acosh form gives O(1) here in float32
    off = d[~torch.eye(8, dtype=torch.bool)]
    assert (off > 0.1).all()


def test_triangle_inequality():
    pts = _points(24, 3, 2.0, seed=8)
    for curv in CURVS:
        d = lorentz.pairwise_dist(pts, pts, curv)
        # d[i, k] <= d[i, j] + d[j, k] for all triples
        slack = d[:, None, :] - (d[:, :, None] + d[None, :, :])
        assert slack.max() <= 1e-9


@pytest.mark.parametrize("curv", CURVS)
def test_dist0_is_norm_of_log_map0_and_distance_to_origin(curv):
    x = _points(10, 6, 3.0, seed=9)
    d0 = lorentz.dist0(x, curv)
    torch.testing.assert_close(d0, torch.linalg.vector_norm(lorentz.log_map0(x, curv), dim=-1))
    origin = torch.zeros(1, 6, dtype=torch.float64)
    torch.testing.assert_close(d0, lorentz.pairwise_dist(x, origin, curv)[:, 0])
    torch.testing.assert_close(d0, _geoopt(curv).dist0(lorentz.to_lorentz_full(x, curv)))
    v = _points(10, 6, 0.5, seed=10)  # geodesics from the origin have unit speed
    speed = torch.linalg.vector_norm(v, dim=-1)
    torch.testing.assert_close(lorentz.dist0(lorentz.exp_map0(v, curv), curv), speed)


# ---- Poincaré ball ----


@pytest.mark.parametrize("curv", CURVS)
def test_to_poincare_closed_form_and_distance(curv):
    x = torch.cat([_points(8, 3, 1.0, seed=11), _points(4, 3, 1e4, seed=12)])
    p = lorentz.to_poincare(x, curv)
    radius = 1 / math.sqrt(curv)
    p_norm = torch.linalg.vector_norm(p, dim=-1)
    assert (p_norm < radius).all()
    expected = np.tanh(np.sqrt(curv) * lorentz.dist0(x, curv).numpy() / 2) / np.sqrt(curv)
    np.testing.assert_allclose(p_norm.numpy(), expected, rtol=1e-10)
    # same direction as x, and Poincaré-ball distance equals Lorentz distance
    torch.testing.assert_close(p / p_norm[:, None], x / torch.linalg.vector_norm(x, dim=-1, keepdim=True))
    pn, qn = p[:8].numpy(), p[:8].numpy()[::-1]
    sq = ((pn - qn) ** 2).sum(-1)
    denom = (1 - curv * (pn**2).sum(-1)) * (1 - curv * (qn**2).sum(-1))
    d_ball = np.arccosh(1 + 2 * curv * sq / denom) / np.sqrt(curv)
    d_lorentz = lorentz.dist(x[:8], x[:8].flip(0), curv).numpy()
    np.testing.assert_allclose(d_lorentz, d_ball, rtol=1e-8, atol=1e-10)
    assert (torch.linalg.vector_norm(lorentz.to_poincare(x.float(), curv), dim=-1) < radius).all()


# ---- cones ----


def test_half_aperture_hand_values():
    k = 0.1
    # sqrt(c) |x| = 2K / sin(theta)  =>  aperture theta
    for curv in CURVS:
        for theta in (math.pi / 6, math.pi / 4, 1.2):
            norm = 2 * k / (math.sin(theta) * math.sqrt(curv))
            x = torch.tensor([[norm, 0.0], [0.0, -norm]], dtype=torch.float64)
            expected = torch.full((2,), theta, dtype=torch.float64)
            torch.testing.assert_close(lorentz.half_aperture(x, curv, min_radius=k), expected)
    near_origin = torch.tensor([[0.0, 0.0], [0.05, 0.0]])
    aper = lorentz.half_aperture(near_origin, 1.0, min_radius=k)
    assert (aper > math.pi / 2 - 1e-3).all() and (aper < math.pi / 2).all()
    far = torch.tensor([[1e4, 0.0]])
    assert lorentz.half_aperture(far, 1.0).item() == pytest.approx(2e-5, rel=1e-4)


@pytest.mark.parametrize("curv", CURVS)
def test_oxy_angle_ray_hand_values(curv):
    parent = torch.tensor([[0.6, -0.3, 0.2]], dtype=torch.float64).repeat(3, 1)
    outward = parent * torch.tensor([[1.5], [3.0], [40.0]], dtype=torch.float64)
    inward = parent * torch.tensor([[0.5], [0.1], [0.0]], dtype=torch.float64)
    assert lorentz.oxy_angle(parent, outward, curv).max() < 1e-3
    assert lorentz.oxy_angle(parent, inward, curv).min() > math.pi - 1e-3
    assert lorentz.oxy_angle(parent.float(), outward.float(), curv).max() < 1e-3
    assert lorentz.oxy_angle(parent.float(), inward.float(), curv).min() > math.pi - 1e-3
    # a child displaced orthogonally to the parent's ray: pi/2 for an infinitesimal step (the step is
    # orthogonal in the hyperboloid metric too), above pi/2 for a finite step (geodesics bend towards
    # the origin), and more so at higher curvature
    on_axis = torch.tensor([[0.6, 0.0, 0.0]], dtype=torch.float64)
    step = torch.tensor([[0.0, 1e-6, 0.0]], dtype=torch.float64)
    assert lorentz.oxy_angle(on_axis, on_axis + step, curv).item() == pytest.approx(math.pi / 2, abs=1e-5)
    sideways = on_axis + 5e5 * step
    angle = lorentz.oxy_angle(on_axis, sideways, curv).item()
    assert angle > math.pi / 2 + 0.01
    assert angle == pytest.approx(_ref_ext_angle(on_axis.numpy(), sideways.numpy(), curv)[0], rel=1e-9)


def test_oxy_angle_grows_with_curvature_and_is_pi_half_when_undefined():
    parent, child = torch.tensor([[0.6, 0.0]]), torch.tensor([[0.6, 0.5]])
    angles = [lorentz.oxy_angle(parent, child, c).item() for c in CURVS]
    assert angles[0] < angles[1] < angles[2]
    assert angles[0] == pytest.approx(math.pi / 2, abs=0.02)  # nearly Euclidean at curv 0.1
    # parent at the origin, or child == parent: the angle is undefined and set to pi/2 (as MERU's eps gives)
    parents, children = torch.tensor([[0.0, 0.0], [0.3, 0.4]]), torch.tensor([[0.2, 0.1], [0.3, 0.4]])
    undefined = lorentz.oxy_angle(parents, children, 1.0)
    torch.testing.assert_close(undefined, torch.full((2,), math.pi / 2))


@pytest.mark.parametrize("curv", CURVS)
def test_oxy_angle_matches_law_of_cosines(curv):
    x, y = _points(32, 4, 1.0, seed=13), _points(32, 4, 1.5, seed=14)
    expected = _ref_ext_angle(x.numpy(), y.numpy(), curv)
    np.testing.assert_allclose(lorentz.oxy_angle(x, y, curv).numpy(), expected, rtol=1e-7, atol=1e-7)
    assert expected.max() - expected.min() > 1.0  # the sample covers a wide range of angles


# ---- precision, gradients, devices ----


@pytest.mark.parametrize("curv", CURVS)
def test_float32_agrees_with_float64(curv):
    x, y = _points(64, 16, 0.5, seed=15), _points(64, 16, 0.8, seed=16)
    x, y = lorentz.exp_map0(x, curv), lorentz.exp_map0(y, curv)
    x32, y32 = x.float(), y.float()
    pairs = [
        (lorentz.pairwise_dist(x32, y32, curv), lorentz.pairwise_dist(x, y, curv)),
        (lorentz.dist(x32, y32, curv), lorentz.dist(x, y, curv)),
        (lorentz.dist0(x32, curv), lorentz.dist0(x, curv)),
        (lorentz.log_map0(x32, curv), lorentz.log_map0(x, curv)),
        (lorentz.to_poincare(x32, curv), lorentz.to_poincare(x, curv)),
        (lorentz.half_aperture(x32, curv), lorentz.half_aperture(x, curv)),
        (lorentz.oxy_angle(x32, y32, curv), lorentz.oxy_angle(x, y, curv)),
    ]
    for got, want in pairs:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("curv", CURVS)
def test_float32_nearby_points_far_from_origin(curv):
    # pairs 1e-4 apart (relative) at radius ~100: the acosh(x_t y_t - x.y) form loses all digits here
    x = _points(32, 8, 100.0, seed=24)
    y = x + 1e-2 * _points(32, 8, seed=25)
    y[:8] = x[:8] * (1 + 1e-4 * torch.rand(8, 1, dtype=torch.float64))  # children just outside on the ray
    x32, y32 = x.float(), y.float()
    x64, y64 = x32.double(), y32.double()  # reference on exactly the same (rounded) inputs
    d32, d64 = lorentz.dist(x32, y32, curv).double(), lorentz.dist(x64, y64, curv)
    torch.testing.assert_close(d32, d64, rtol=1e-4, atol=0)
    naive = _ref_pairwise_dist(x32.numpy(), y32.numpy(), curv).diagonal()  # float32 inputs, float32 maths
    assert np.abs(naive - d64.numpy()).max() > 1e-3 * d64.max().item()  # the test would catch that form
    a32, a64 = lorentz.oxy_angle(x32, y32, curv).double(), lorentz.oxy_angle(x64, y64, curv)
    torch.testing.assert_close(a32, a64, rtol=0, atol=1e-3)
    torch.testing.assert_close(lorentz.dist(y32, x32, curv).double(), d64, rtol=1e-4, atol=0)


@pytest.mark.parametrize("curv", [0.1, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradients_at_extremes(curv, dtype):
    base = torch.tensor(
        [[0.0, 0.0, 0.0], [1e-12, 0.0, -1e-12], [1e4, -1e4, 5e3], [0.3, 0.1, -0.2], [1e4, -1e4, 5e3]],
        dtype=dtype,
    )
    x = base.clone().requires_grad_(True)
    y = base.flip(0).clone().requires_grad_(True)  # row 2 of x equals row 2 of y: coincident pair
    c = torch.tensor(curv, dtype=dtype, requires_grad=True)
    outputs = {
        "exp_map0": lorentz.exp_map0(x, c),
        "log_map0": lorentz.log_map0(x, c),
        "dist0": lorentz.dist0(x, c),
        "dist": lorentz.dist(x, y, c),
        "pairwise_dist": lorentz.pairwise_dist(x, y, c),
        "pairwise_self": lorentz.pairwise_dist(x, x, c),
        "half_aperture": lorentz.half_aperture(x, c),
        "oxy_angle": lorentz.oxy_angle(x, y, c),
        "oxy_angle_self": lorentz.oxy_angle(x, x, c),
        "to_poincare": lorentz.to_poincare(x, c),
    }
    for name, out in outputs.items():
        assert torch.isfinite(out).all(), name
        grads = torch.autograd.grad(out.sum(), (x, y, c), allow_unused=True)
        for g in grads:
            assert g is None or torch.isfinite(g).all(), name


def test_curv_tensor_gradient_matches_finite_difference():
    x, y = _points(5, 3, seed=17), _points(5, 3, seed=18)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda c_: lorentz.pairwise_dist(x, y, c_), (c,))
    torch.autograd.gradcheck(lambda x_: lorentz.oxy_angle(x_, y, 0.7), (x.clone().requires_grad_(True),))


def test_batched_leading_dims():
    x, y = _points(12, 3, seed=19).reshape(2, 6, 3), _points(8, 3, seed=20).reshape(2, 4, 3)
    d = lorentz.pairwise_dist(x, y, 1.0)
    assert d.shape == (2, 6, 4)
    torch.testing.assert_close(d[1], lorentz.pairwise_dist(x[1], y[1], 1.0))
    assert lorentz.dist0(x, 1.0).shape == (2, 6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    x, y = _points(32, 8, seed=21).float(), _points(16, 8, seed=22).float()
    c = torch.tensor(0.5)
    for fn in (lorentz.pairwise_dist, lorentz.pairwise_inner):
        torch.testing.assert_close(fn(x.cuda(), y.cuda(), c.cuda()).cpu(), fn(x, y, c), rtol=1e-4, atol=1e-5)
    angle = lorentz.oxy_angle(x[:16].cuda(), y.cuda(), 0.5).cpu()
    torch.testing.assert_close(angle, lorentz.oxy_angle(x[:16], y, 0.5), rtol=1e-4, atol=1e-5)


# ---- conversions and validation ----


def test_full_coordinates_round_trip():
    x = _points(4, 3, seed=23)
    full = lorentz.to_lorentz_full(x, 2.0)
    assert full.shape == (4, 4)
    torch.testing.assert_close(full[:, 0], lorentz.time_component(x, 2.0))
    torch.testing.assert_close(lorentz.from_lorentz_full(full), x)
    assert lorentz.hyperboloid_residual(full, 2.0).abs().max() < 1e-12
    off = full.clone()
    off[:, 0] += 0.5
    assert (lorentz.hyperboloid_residual(off, 2.0) < -0.1).all()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_curv_raises(bad):
    with pytest.raises(ValueError, match=r"Expected `curv` to be positive and finite, found `"):
        lorentz.dist0(torch.zeros(2, 3), bad)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"Expected `y` to have the last dimension of `x` \(3\), found 4"):
        lorentz.pairwise_dist(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"Expected `x_full` to have a last dimension of at least 2"):
        lorentz.from_lorentz_full(torch.zeros(2, 1))


# ---- Euclidean cones (the flat ablation) ----


def _old_euclidean_cone(parent, child, min_radius):
    # the formula as it stood in `nn/_loss.py` before it moved to `lorentz/_euclidean.py`
    p_norm = torch.linalg.vector_norm(parent, dim=-1)
    margin = torch.finfo(parent.dtype).eps
    aperture = torch.asin((2 * min_radius / (p_norm + lorentz.EPS)).clamp(max=1 - margin))
    p_dir = parent / p_norm.unsqueeze(-1).clamp_min(lorentz.EPS)
    delta = child - parent
    along = torch.sum(delta * p_dir, dim=-1)
    across = torch.linalg.vector_norm(delta - along.unsqueeze(-1) * p_dir, dim=-1)
    undefined = (across == 0) & (along == 0)
    angle = torch.atan2(torch.where(undefined, 1.0, across), torch.where(undefined, 0.0, along))
    return aperture, angle


def test_euclidean_cone_hand_values_and_degenerate_points():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.05, 0.0]])
    y = torch.tensor([[3.0, 0.0], [0.5, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    angle = lorentz.euclidean_oxy_angle(x, y)
    expected = torch.tensor([0.0, math.pi, math.pi / 2, math.pi / 2, math.pi / 2, 0.0])
    torch.testing.assert_close(angle, expected)
    aperture = lorentz.euclidean_half_aperture(x, min_radius=0.1)
    assert aperture[0].item() == pytest.approx(math.asin(0.2))
    assert aperture[4].item() == aperture[5].item() < math.pi / 2  # clamped within 2K of the origin
    with pytest.raises(ValueError, match=r"Expected `y` to have the last dimension of `x` \(2\), found 3"):
        lorentz.euclidean_oxy_angle(x, torch.zeros(6, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euclidean_cone_is_bit_identical_to_the_loss_formula(dtype):
    gen = torch.Generator().manual_seed(5)
    parent = torch.randn(64, 8, generator=gen, dtype=dtype) * torch.logspace(-3, 1, 64, dtype=dtype)[:, None]
    child = torch.randn(64, 8, generator=gen, dtype=dtype)
    child[:4] = parent[:4]
    old_aperture, old_angle = _old_euclidean_cone(parent, child, 0.1)
    assert torch.equal(lorentz.euclidean_half_aperture(parent, min_radius=0.1), old_aperture)
    assert torch.equal(lorentz.euclidean_oxy_angle(parent, child), old_angle)
