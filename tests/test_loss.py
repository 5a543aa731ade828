"""Loss terms: exact KLs, the decoder likelihood, and discrete time tending to continuous."""
import math

import pytest
import torch
from conftest import make_tiny_model
from torch.distributions import Normal, kl_divergence

from mulancodec.model.latent import std_normal_kl
from mulancodec.model.mulan import (
    alpha_sigma,
    decoder_params,
    discretized_gaussian_nll,
    forward_step,
    reverse_step,
    reverse_step_kl,
    to_unit,
)


def test_kl_formula_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1 = torch.randn(100, generator=g, dtype=torch.float64)
    s1 = torch.rand(100, generator=g, dtype=torch.float64) + 0.05
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
    # a learned variance: p's std widened by the predicted squared error mse-hat
    mse_hat = torch.rand(n, generator=g, dtype=torch.float64)
    mp, sp = reverse_step(z_t, eps_hat, gs, gt, mse_hat)
    assert torch.all(sp > sq)
    kl = kl_divergence(Normal(mq, sq), Normal(mp, sp))
    assert torch.allclose(kl, reverse_step_kl(gs, gt, eps, eps_hat, mse_hat), rtol=1e-6)
    assert torch.equal(reverse_step_kl(gs, gt, eps, eps_hat, torch.zeros(n, dtype=torch.float64)),
                       reverse_step_kl(gs, gt, eps, eps_hat))
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
    for v in (t.diffusion, t.recon, t.prior, t.latent):
        assert torch.all(torch.isfinite(v)) and torch.all(v >= 0)


def test_recon_fraction_estimates_the_reconstruction_from_some_rows_weighted_up():
    """Training's cheaper reconstruction estimate: with the same generator state, the rows
    it picks carry batch / k times their own term and the others none (so it is unbiased),
    and a fraction of 1 draws nothing more (old runs keep their draws)."""
    m = make_tiny_model(0, "tiny-dec")
    x = torch.randint(0, 256, (6, 3, 16, 16))

    def terms(fraction: float):
        with torch.no_grad():
            return m.terms(x, 10, torch.Generator().manual_seed(5), recon_fraction=fraction)

    full, again, half = terms(1.0), terms(1.0), terms(0.5)
    assert torch.equal(full.recon, again.recon) and torch.equal(full.diffusion, again.diffusion)
    picked = half.recon != 0
    assert int(picked.sum()) == 3
    assert torch.allclose(half.recon[picked], 2 * full.recon[picked], rtol=1e-5)
    assert torch.equal(half.prior, full.prior) and torch.equal(half.latent, full.latent)
    assert int((terms(0.01).recon != 0).sum()) == 1  # at least one row


def test_recon_fraction_is_checked():
    from mulancodec.model.configs import TrainConfig

    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="recon_fraction"):
            TrainConfig(recon_fraction=bad)


def _posterior(mean_s, var_s, ratio, var_ts, z_t):
    """N(z_s; mean_s, var_s) times N(z_t; ratio z_s, var_ts), as a Gaussian in z_s (conditioning)."""
    var = 1 / (1 / var_s + ratio ** 2 / var_ts)
    return var * (mean_s / var_s + ratio * z_t / var_ts), var.sqrt()


def test_terms_match_a_direct_computation():
    """Every term of terms(x, T, t=...) against its definition, computed here in float64 with
    torch.distributions: diffusion = T x KL(q(z_s | z_t, x) || p(z_s | z_t)) at the step t falls
    in, with q by Gaussian conditioning on x and p the same with x = x-hat(z_t); recon the
    renormalised pixel-bin mass at z_0; prior KL(q(z_1 | x) || N(0, 1)); latent KL(q(c|x) || N(0, 1)).

    Replays terms()'s draws from the same seed: latent noise, z_0 noise, eps (t is given).
    One row per step: the same image with t inside step i = 1..T.
    """
    T = 8
    m = make_tiny_model(noise=0.05)
    x = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(3)).expand(T, -1, -1, -1)
    t = (torch.arange(1, T + 1, dtype=torch.float32) - 0.7) / T  # inside step i: rounds up to it
    with torch.no_grad():
        got = m.terms(x, T, torch.Generator().manual_seed(5), t=t)
        g = torch.Generator().manual_seed(5)
        xu = to_unit(x)
        cm, cs = m.latent_posterior(xu)
        c = cm + cs * torch.randn(tuple(cm.shape), generator=g)
        z0_noise = torch.randn(tuple(xu.shape), generator=g)
        eps = torch.randn(tuple(xu.shape), generator=g)
        sched = m.schedule(c, xu)
        step = torch.arange(1, T + 1, dtype=torch.float32)
        g_t, g_s = sched.gamma(step / T), sched.gamma((step - 1) / T)
        a_t, s_t = alpha_sigma(g_t)
        z_t = a_t * xu + s_t * eps
        x_hat = ((z_t - s_t * m.eps(z_t, g_t, c)) / a_t).double()
        g_s, g_t, z_t = g_s.double(), g_t.double(), z_t.double()
        var_s, var_t = torch.sigmoid(g_s), torch.sigmoid(g_t)
        ratio = torch.sqrt(torch.sigmoid(-g_t) / torch.sigmoid(-g_s))  # alpha_t / alpha_s
        var_ts = var_t - ratio ** 2 * var_s
        a_s = torch.sqrt(torch.sigmoid(-g_s))
        q = Normal(*_posterior(a_s * xu.double(), var_s, ratio, var_ts, z_t))
        p = Normal(*_posterior(a_s * x_hat, var_s, ratio, var_ts, z_t))
        bits = 1 / (3 * 16 * 16 * math.log(2))
        diffusion = T * kl_divergence(q, p).flatten(1).sum(1) * bits

        g0, g1 = sched.gamma(0.0).double(), sched.gamma(1.0).double()
        z0 = torch.sqrt(torch.sigmoid(-g0)) * xu.double() + torch.sqrt(torch.sigmoid(g0)) * z0_noise.double()
        mean = (z0 / torch.sqrt(torch.sigmoid(-g0)) + 1) * 128 - 0.5  # pixel units
        pix = Normal(mean, torch.exp(0.5 * g0) * 128)
        xd = x.double()
        mass = pix.cdf(xd + 0.5) - pix.cdf(xd - 0.5)
        recon = -(mass / (pix.cdf(torch.tensor(255.5)) - pix.cdf(torch.tensor(-0.5)))).log()
        prior = kl_divergence(Normal(torch.sqrt(torch.sigmoid(-g1)) * xu.double(),
                                     torch.sqrt(torch.sigmoid(g1)).expand_as(xu).double()), Normal(0.0, 1.0))
        latent = kl_divergence(Normal(cm.double(), cs.double()), Normal(0.0, 1.0))
    for name, want in [("diffusion", diffusion), ("recon", recon.flatten(1).sum(1) * bits),
                       ("prior", prior.flatten(1).sum(1) * bits), ("latent", latent.flatten(1).sum(1) * bits)]:
        assert torch.allclose(getattr(got, name).double(), want, rtol=2e-3, atol=1e-6), name
    assert torch.allclose(got.total.double(), diffusion + (recon.flatten(1).sum(1) + prior.flatten(1).sum(1)
                                                           + latent.flatten(1).sum(1)) * bits, rtol=2e-3)
    assert diffusion.std() > 0.1 * diffusion.mean()  # the rows really are different steps


def test_the_denoiser_decoder_is_centred_on_x_hat_and_as_wide_as_its_error():
    """`ModelConfig.decoder` "denoiser": p(x | z_0) at x-hat = (z_0 - sigma_0 eps-hat) / alpha_0,
    std sigma_0 / alpha_0 sqrt(mse-hat) in pixels: the true eps puts it on x itself."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (64,), generator=g)
    g0 = torch.full((64,), -10.5, dtype=torch.float64)
    a0, s0 = alpha_sigma(g0)
    eps = torch.randn(64, generator=g, dtype=torch.float64)
    z0 = a0 * to_unit(x).double() + s0 * eps
    mse = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    mean, std = decoder_params(z0, g0, eps_hat=eps, mse_hat=mse)
    assert torch.allclose(mean, x.double(), atol=1e-6)
    assert torch.allclose(std, torch.exp(0.5 * g0) * mse.sqrt() * 128.0)
    # VDM's decoder at the same z_0 is off by the noise, and wider
    vdm_mean, vdm_std = decoder_params(z0, g0)
    assert torch.allclose(vdm_mean - mean, eps * torch.exp(0.5 * g0) * 128.0)
    assert torch.all(vdm_std > std)
    xs = torch.arange(256, dtype=torch.float64)
    nll = discretized_gaussian_nll(xs, mean[0].expand(256), std[0].expand(256)).double()
    assert abs(torch.exp(-nll).sum().item() - 1) < 1e-5


def test_the_denoiser_decoder_needs_a_learned_variance():
    import dataclasses

    import pytest

    from mulancodec.model.configs import CONFIGS

    cfg = CONFIGS["tiny-dec"].model
    cfg.validate()
    with pytest.raises(ValueError, match="learned reverse variances"):
        dataclasses.replace(cfg, reverse_variance="fixed").validate()
    with pytest.raises(ValueError, match="decoder must be"):
        dataclasses.replace(cfg, decoder="logistic").validate()
