"""Loss terms: exact KLs, the decoder likelihood, and discrete time tending to continuous."""
import math

import torch
from torch.distributions import Normal, kl_divergence

from mulancodec.model.latent import std_normal_kl
from mulancodec.model.mulan import (alpha_sigma, decoder_params, discretized_gaussian_nll, forward_step,
                                    reverse_step, reverse_step_kl, to_unit)

from conftest import make_tiny_model


def test_kl_formulas_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    s1 = torch.rand(100, generator=g, dtype=torch.float64) + 0.05
    s2 = torch.rand(100, generator=g, dtype=torch.float64) + 0.05
    assert torch.allclose(std_normal_kl(m1, s1), kl_divergence(Normal(m1, s1), Normal(0.0, 1.0)))


def test_step_kl_equals_the_eps_form():
    """KL(q(z_s|z_t,x) || p(z_s|z_t)) from the coder's Gaussians = the loss's expm1 weight."""
    g = torch.Generator().manual_seed(1)
    n = 50
    gs = torch.rand(n, generator=g, dtype=torch.float64) * 15 - 12
    gt = gs + torch.rand(n, generator=g, dtype=torch.float64) * 2 + 1e-3
    x = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    eps_hat = torch.randn(n, generator=g, dtype=torch.float64)
    a_t, s_t = alpha_sigma(gt)
    z_t = a_t * x + s_t * eps
    mq, sq = reverse_step(z_t, eps, gs, gt)  # true eps gives the true posterior
    mp, sp = reverse_step(z_t, eps_hat, gs, gt)
    kl = kl_divergence(Normal(mq, sq), Normal(mp, sp))
    assert torch.allclose(kl, reverse_step_kl(gs, gt, eps, eps_hat), rtol=1e-6)
    # the forward step composes to the marginal: q(z_t|x) = int q(z_t|z_s) q(z_s|x)
    a_s, s_s = alpha_sigma(gs)
    mf, sf = forward_step(a_s * x, gs, gt)
    assert torch.allclose(mf, a_t * x)
    assert torch.allclose(sf ** 2 + (a_t / a_s) ** 2 * s_s ** 2, s_t ** 2)


def test_pixel_decoder_is_a_normalised_distribution():
    z0 = torch.tensor([-0.9, 0.0, 0.37, 0.99], dtype=torch.float64)
    g0 = torch.full_like(z0, -13.3)
    mean, std = decoder_params(z0, g0)
    for i in range(4):
        xs = torch.arange(256, dtype=torch.float64)
        nll = discretized_gaussian_nll(xs, mean[i].expand(256), std[i].expand(256)).double()
        assert abs(torch.exp(-nll).sum().item() - 1) < 1e-5
    # the mean lands on the pixel whose bin centre is z0 / alpha0
    x = torch.tensor([10, 128, 200])
    a0, _ = alpha_sigma(torch.tensor(-13.3))
    m, _ = decoder_params(a0 * to_unit(x), torch.tensor(-13.3))
    assert torch.allclose(m.float(), x.float(), atol=1e-3)


def test_discrete_time_loss_tends_to_continuous():
    torch.manual_seed(0)
    m = make_tiny_model(noise=0.05)
    x = torch.randint(0, 256, (64, 3, 16, 16))
    g = torch.Generator().manual_seed(0)

    def mean_diffusion(steps: int, reps: int = 24) -> float:
        with torch.no_grad():
            return sum(m.terms(x, steps, g).diffusion.mean().item() for _ in range(reps)) / reps

    cont = mean_diffusion(0)
    gaps = [abs(mean_diffusion(T) - cont) for T in (2, 20, 2000)]
    assert gaps[0] > gaps[2]
    assert gaps[2] < 0.02 * cont
    assert gaps[0] > 0.05 * cont  # T = 2 is a far looser bound


def test_terms_are_finite_and_positive():
    m = make_tiny_model()
    t = m.terms(torch.randint(0, 256, (4, 3, 16, 16)))
    for v in (t.diffusion, t.recon, t.prior, t.latent, t.total):
        assert torch.all(torch.isfinite(v)) and torch.all(v >= 0)
    assert math.isclose(t.total.mean().item(),
                        (t.diffusion + t.recon + t.prior + t.latent).mean().item(), rel_tol=1e-6)
