"""Sphere geometry and the Riemannian SGD step, checked against hand computations (docs/method.md)."""

from __future__ import annotations

import math

import pytest
import torch

from dti.optim import RiemannianSGD
from dti.sphere import angle, lerp, normalize, slerp, tangent_project, vmf_prior_grad


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=-1, keepdim=True)).float()


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double()


# The optimizer works in fp32 (as training does); references are fp64 from the same fp32 inputs.
FP32 = dict(atol=2e-6, rtol=0)


def _step(param: torch.nn.Parameter, opt: torch.optim.Optimizer, grad: torch.Tensor) -> None:
    param.grad = grad.to(param.dtype).clone()
    opt.step()


# --- sphere ----------------------------------------------------------------------------------------------


def test_normalize_and_tangent_projection():
    x = torch.randn(5, 7, dtype=torch.float64) * 3
    u = normalize(x)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(5, dtype=torch.float64))
    g = torch.randn(5, 7, dtype=torch.float64)
    g_t = tangent_project(g, u)
    torch.testing.assert_close((g_t * u).sum(-1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    # Projecting twice changes nothing, and a radial gradient projects to zero.
    torch.testing.assert_close(tangent_project(g_t, u), g_t)
    torch.testing.assert_close(tangent_project(2.5 * u, u), torch.zeros_like(u), atol=1e-12, rtol=0)
    assert torch.equal(normalize(torch.zeros(2, 3)), torch.zeros(2, 3))  # no NaN for an all-zero row


def test_vmf_prior_gradient_is_minus_kappa_mu():
    mu = _unit_rows(3, 4, 0)
    kappa = 0.7
    v = _unit_rows(3, 4, 1).requires_grad_(True)
    neg_log_prior = -(kappa * (mu * v).sum())
    (grad,) = torch.autograd.grad(neg_log_prior, v)
    torch.testing.assert_close(vmf_prior_grad(mu, kappa), grad)


def test_slerp_unit_norm_endpoints_and_equal_angles():
    a = torch.randn(6, 16, dtype=torch.float64) * 4
    b = torch.randn(6, 16, dtype=torch.float64) * 0.1
    omega = angle(a, b)
    for t in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        out = slerp(a, b, t)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(6, dtype=torch.float64))
        # On the great circle through a and b: angles from both ends add up to Omega, split t : 1 - t.
        torch.testing.assert_close(angle(a, out), t * omega, atol=1e-6, rtol=0)
        torch.testing.assert_close(angle(out, b), (1 - t) * omega, atol=1e-6, rtol=0)
    torch.testing.assert_close(slerp(a, b, 0.0), normalize(a))
    torch.testing.assert_close(slerp(a, b, 1.0), normalize(b))
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(angle(a, mid), angle(mid, b), atol=1e-7, rtol=0)


def test_slerp_parallel_inputs_do_not_nan():
    a = torch.randn(3, 8)
    for b in (a.clone(), 5 * a, a + 1e-9):
        out = slerp(a, b, 0.3)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, normalize(a), atol=1e-6, rtol=0)
    assert torch.isfinite(angle(a, 3 * a)).all()


def test_lerp_is_linear_in_raw_vectors():
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    torch.testing.assert_close(lerp(a, b, 0.25), 0.75 * a + 0.25 * b)


# --- Riemannian SGD ---------------------------------------------------------------------------------------


def test_rsgd_beta0_step_is_tangent_with_length_lr():
    """v_new = (v + d) / |v + d| with d = -lr g_t / |g_t|: undo the retraction and compare d by hand."""
    lr = 0.05
    v0 = _unit_rows(4, 12, 0)
    # Rows with very different gradient scales: each row's step is normalized separately.
    scale = torch.tensor([[1e-4], [1.0], [30.0], [1e-2]])
    g = torch.randn(4, 12, generator=torch.Generator().manual_seed(1)) * scale
    p = torch.nn.Parameter(v0.clone())
    opt = RiemannianSGD([p], lr=lr, beta=0.0, eps=0.0)
    _step(p, opt, g)
    v0, v1, g = _f64(v0), _f64(p), _f64(g)
    torch.testing.assert_close(v1.norm(dim=-1), torch.ones(4, dtype=torch.float64), **FP32)
    g_t = g - (g * v0).sum(-1, keepdim=True) * v0
    d_expected = -lr * g_t / g_t.norm(dim=-1, keepdim=True)
    d = v1 * math.sqrt(1 + lr**2) - v0  # |v0 + d| = sqrt(1 + lr^2) because d is tangent with length lr
    torch.testing.assert_close(d, d_expected, **FP32)
    torch.testing.assert_close((d * v0).sum(-1), torch.zeros(4, dtype=torch.float64), **FP32)
    torch.testing.assert_close(angle(v0, v1), torch.full((4,), math.atan(lr), dtype=torch.float64),
                               atol=2e-5, rtol=0)


def test_rsgd_radial_gradient_does_not_move():
    v0 = _unit_rows(2, 6, 3)
    p = torch.nn.Parameter(v0.clone())
    opt = RiemannianSGD([p], lr=0.1)
    _step(p, opt, 4.0 * v0)
    torch.testing.assert_close(p.detach(), v0, **FP32)


def test_rsgd_vmf_prior_pulls_towards_mu_along_the_geodesic():
    lr, kappa = 0.05, 1e-3
    mu = _unit_rows(2, 10, 5)
    p = torch.nn.Parameter(_unit_rows(2, 10, 6))
    opt = RiemannianSGD([p], lr=lr, kappa=kappa, prior_mu=[3.0 * mu])  # mu is normalized by the optimizer
    angles = [angle(_f64(p), _f64(mu))]
    assert (angles[0] > 20 * lr).all()  # far enough that no step overshoots
    for _ in range(10):
        _step(p, opt, torch.zeros_like(p))  # no data gradient: only the prior acts
        angles.append(angle(_f64(p), _f64(mu)))
    drops = torch.stack([a - b for a, b in zip(angles, angles[1:], strict=False)])
    assert (drops > 0).all()
    # The prior gradient lies in the plane of v and mu, so each step rotates exactly atan(lr) towards mu.
    torch.testing.assert_close(drops, torch.full_like(drops, math.atan(lr)), atol=2e-5, rtol=0)


def test_rsgd_without_prior_ignores_zero_gradient():
    v0 = _unit_rows(2, 10, 7)
    p = torch.nn.Parameter(v0.clone())
    opt = RiemannianSGD([p], lr=0.05, kappa=1e-3)  # kappa but no mu: nothing to pull towards
    _step(p, opt, torch.zeros_like(p))
    torch.testing.assert_close(p.detach(), v0, **FP32)


def test_rsgd_beta_bias_correction_matches_hand_computation():
    lr, beta, eps, kappa = 0.03, 0.6, 1e-8, 0.2
    mu = _unit_rows(3, 8, 8)
    v = _unit_rows(3, 8, 9)
    grads = [torch.randn(3, 8, generator=torch.Generator().manual_seed(20 + i)) * (i + 1) for i in range(3)]
    p = torch.nn.Parameter(v.clone())
    opt = RiemannianSGD([p], lr=lr, beta=beta, eps=eps, kappa=kappa, prior_mu=[mu])
    v, mu = _f64(v), _f64(mu)
    s = torch.zeros(3, 1, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        _step(p, opt, g)
        g_full = _f64(g) - kappa * mu
        g_t = g_full - (g_full * v).sum(-1, keepdim=True) * v
        s = beta * s + (1 - beta) * (g_t**2).sum(-1, keepdim=True)
        s_hat = s / (1 - beta**t)
        w = v - lr * g_t / (s_hat.sqrt() + eps)
        v = w / w.norm(dim=-1, keepdim=True)
        # Without the 1 - beta^t correction step 2 would be 1/sqrt(1 - beta^2) = 1.25 times longer.
        torch.testing.assert_close(_f64(p), v, **FP32)
    assert opt.state[p]["step"] == 3
    torch.testing.assert_close(_f64(opt.state[p]["sq_avg"]), s, rtol=1e-5, atol=0)


def test_rsgd_first_step_with_beta_has_length_lr():
    """Bias correction makes step 1 identical to beta = 0, whatever beta is."""
    v0, g = _unit_rows(2, 8, 11), torch.randn(2, 8)
    results = []
    for beta in (0.0, 0.9):
        p = torch.nn.Parameter(v0.clone())
        _step(p, RiemannianSGD([p], lr=0.04, beta=beta), g)
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1], **FP32)
    torch.testing.assert_close(angle(_f64(v0), _f64(results[1])), torch.full((2,), math.atan(0.04),
                               dtype=torch.float64), atol=2e-5, rtol=0)


def test_rsgd_computes_in_fp32_for_bf16_parameters():
    lr, kappa = 0.04, 0.01
    mu = _unit_rows(2, 16, 12).float()
    v0 = _unit_rows(2, 16, 13).to(torch.bfloat16)
    g = torch.randn(2, 16, generator=torch.Generator().manual_seed(14)).to(torch.bfloat16)
    p = torch.nn.Parameter(v0.clone())
    opt = RiemannianSGD([p], lr=lr, beta=0.5, kappa=kappa, prior_mu=[mu.to(torch.bfloat16)])
    _step(p, opt, g)
    state = opt.state[p]
    assert p.dtype == torch.bfloat16
    assert state["sq_avg"].dtype == torch.float32
    assert state["mu"].dtype == torch.float32
    # Reference: the same step in fp32 from the bf16 inputs, rounded to bf16 once at the end.
    mu32 = normalize(mu.to(torch.bfloat16).float())
    v, gf = v0.float(), g.float() - kappa * mu32
    g_t = gf - (gf * v).sum(-1, keepdim=True) * v
    expected = normalize(v - lr * g_t / (g_t.norm(dim=-1, keepdim=True) + 1e-8)).to(torch.bfloat16)
    assert torch.equal(p.detach(), expected)


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(lr=0.1, beta=1.0), dict(lr=0.1, beta=-0.1),
                                    dict(lr=0.1, kappa=-1.0)])
def test_rsgd_rejects_bad_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        RiemannianSGD([torch.nn.Parameter(torch.ones(1, 2))], **kwargs)


def test_rsgd_prior_needs_one_mu_per_parameter():
    params = [torch.nn.Parameter(torch.ones(1, 2)), torch.nn.Parameter(torch.ones(1, 2))]
    with pytest.raises(ValueError, match="prior_mu"):
        RiemannianSGD(params, lr=0.1, prior_mu=[torch.ones(1, 2)])
