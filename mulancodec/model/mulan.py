"""MuLAN: a VDM with a learned, per-subpixel noise schedule conditioned on a latent c.

Everything here is per subpixel. Data x in {0..255} maps to x~ = 2(x+0.5)/256 - 1;
q(z_t | x, c) = N(alpha_t x~, sigma_t^2) with alpha^2 = sigmoid(-gamma),
sigma^2 = sigmoid(gamma), gamma = gamma(c, t).

The per-step Gaussians (`forward_step`, `reverse_step`, `data_posterior`,
`decoder_params`) are the single source for both the discrete-time loss and
the codec, so the coder's expected size is the loss by construction.
All sizes are reported in bits per dimension (bpd).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from .configs import ModelConfig
from .denoiser import UNet
from .elementary import TORCH, Elementary
from .latent import LatentEncoder, std_normal_kl
from .schedule import Schedule, ScheduleNet

LN2 = math.log(2.0)
BINS = 256


def to_unit(x: Tensor) -> Tensor:
    """uint8-valued pixels to bin centres in [-1, 1]."""
    return (2.0 * x.float() + 1.0) / BINS - 1.0


def context_channels(window: Tensor, known: Tensor) -> Tensor:
    """The denoiser's context input: window pixels (B,3,W,W) where known, and the mask.

    known: (B,1,W,W) bool, from `context.known_window`.
    """
    k = known.float()
    return torch.cat([to_unit(window) * k, k], dim=1)


# The per-step Gaussians take `fns`, the elementary functions they are computed with:
# torch's (the loss, and the codec of format versions 1 and 2) or `exactmath.EXACT`, whose
# float64 results are identical on every machine (the integer codec, format version 3).

def alpha_sigma(gamma: Tensor, fns: Elementary = TORCH) -> tuple[Tensor, Tensor]:
    return fns.once("alpha_sigma", (gamma,), lambda: (fns.sqrt(fns.sigmoid(-gamma)),
                                                      fns.sqrt(fns.sigmoid(gamma))))


def _expm1_diff(a: Tensor, b: Tensor, fns: Elementary) -> Tensor:
    """expm1(a - b), for the gammas of two steps."""
    return fns.once("expm1_diff", (a, b), lambda: fns.expm1(a - b))


def data_posterior(x_unit: Tensor, g0: Tensor, fns: Elementary = TORCH) -> tuple[Tensor, Tensor]:
    """q(z_0 | x): mean and std."""
    a0, s0 = alpha_sigma(g0, fns)
    return a0 * x_unit, s0.expand_as(x_unit)


def forward_step(z_s: Tensor, g_s: Tensor, g_t: Tensor,
                 fns: Elementary = TORCH) -> tuple[Tensor, Tensor]:
    """q(z_t | z_s) for s < t: mean alpha_t/alpha_s z_s, var sigma_t^2 (1 - e^(g_s - g_t))."""
    a_s, _ = alpha_sigma(g_s, fns)
    a_t, s_t = alpha_sigma(g_t, fns)
    return (a_t / a_s) * z_s, s_t * fns.sqrt(-_expm1_diff(g_s, g_t, fns))


def reverse_step(z_t: Tensor, eps_hat: Tensor, g_s: Tensor, g_t: Tensor,
                 mse_hat: Tensor | None = None, fns: Elementary = TORCH) -> tuple[Tensor, Tensor]:
    """p(z_s | z_t): q(z_s | z_t, x = x-hat(z_t))'s mean, with a variance of its own.

    The fixed variance is q's posterior variance. A learned-variance model adds the
    expected squared error of its mean: mse_hat predicts E[(eps - eps-hat)^2 | z_t],
    which makes the variance posterior * (1 + expm1(g_t - g_s) mse_hat), the best
    Gaussian for a mean that is off by that much. mse_hat does not depend on the
    step size, so one network serves every T.
    """
    a_s, s_s = alpha_sigma(g_s, fns)
    a_t, s_t = alpha_sigma(g_t, fns)
    em1 = _expm1_diff(g_s, g_t, fns)
    mean = (a_s / a_t) * (z_t + em1 * s_t * eps_hat)
    std = s_s * fns.sqrt(-em1)
    if mse_hat is not None:
        std = std * fns.sqrt(1.0 + _expm1_diff(g_t, g_s, fns) * mse_hat)
    return mean, std


def reverse_step_kl(g_s: Tensor, g_t: Tensor, eps: Tensor, eps_hat: Tensor,
                    mse_hat: Tensor | None = None) -> Tensor:
    """KL(q(z_s | z_t, x) || p(z_s | z_t)) per subpixel, in nats: the discrete-time loss's step.

    These are `reverse_step` with the true eps (and no mse_hat: the true posterior)
    and with eps-hat. With e = expm1(g_t - g_s), the squared mean difference over
    q's variance is e (eps - eps-hat)^2, and p's variance is q's times 1 + r with
    r = e mse_hat, so the KL is (log1p(r) + (e (eps - eps-hat)^2 - r) / (1 + r)) / 2,
    computed without the cancellation a difference of means would suffer.
    """
    e = torch.expm1(g_t - g_s)
    err = e * (eps - eps_hat) ** 2
    if mse_hat is None:
        return 0.5 * err
    r = e * mse_hat
    return 0.5 * (torch.log1p(r) + (err - r) / (1.0 + r))


def decoder_params(z0: Tensor, g0: Tensor, fns: Elementary = TORCH, eps_hat: Tensor | None = None,
                   mse_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """p(x | z_0): a Gaussian on the pixel grid, as (mean, std) in pixel units.

    The likelihood of pixel k is the Gaussian's mass on [k - 1/2, k + 1/2],
    renormalised over [-1/2, 255 + 1/2]: exactly constriction's QuantizedGaussian.
    VDM's (no eps_hat) is centred at z_0 / alpha_0 with z_0's noise std. With the
    denoiser's (eps_hat, mse_hat) at z_0 (`ModelConfig.decoder` "denoiser") it is centred
    at x-hat = (z_0 - sigma_0 eps-hat) / alpha_0 and its std is x-hat's predicted error,
    sigma_0 / alpha_0 sqrt(mse-hat): sharp where the neighbours tell the pixel, so the
    chain can end at a noise std near half a grey level instead of spending steps below.
    """
    a0, _ = alpha_sigma(g0, fns)
    scale = BINS / 2
    noise = fns.exp(0.5 * g0)  # sigma_0 / alpha_0
    if eps_hat is None:
        mean = (z0 / a0 + 1.0) * scale - 0.5
        std = noise * scale
        return mean, std.expand_as(mean)
    assert mse_hat is not None, "the denoiser decoder needs mse-hat"
    mean = ((z0 / a0 - noise * eps_hat) + 1.0) * scale - 0.5
    std = noise * fns.sqrt(mse_hat) * scale
    return mean, std.expand_as(mean)


def _std_normal_cdf(v: Tensor) -> Tensor:
    """Phi(v) via erfc: precise deep in the lower tail, where 1 + erf(.) is not."""
    return 0.5 * torch.special.erfc(-v / math.sqrt(2.0))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """-log P(x) in nats for the renormalised pixel-grid Gaussian of `decoder_params`."""
    xf, m, s = x.double(), mean.double(), std.double()
    # By symmetry the bin's mass equals that of its mirror image about the mean;
    # mirror bins above the mean into the lower tail, where the CDF is precise.
    xl = torch.where(xf > m, 2 * m - xf, xf)
    mass = _std_normal_cdf((xl + 0.5 - m) / s) - _std_normal_cdf((xl - 0.5 - m) / s)
    total = _std_normal_cdf((BINS - 0.5 - m) / s) - _std_normal_cdf((-0.5 - m) / s)
    return (torch.log(total) - torch.log(torch.clamp(mass, min=1e-300))).float()


@dataclass
class Terms:
    """Per-image -ELBO terms in bits per dimension."""

    diffusion: Tensor  # continuous-time, or discrete-time at T steps
    recon: Tensor
    prior: Tensor
    latent: Tensor

    @property
    def total(self) -> Tensor:
        return self.diffusion + self.recon + self.prior + self.latent


TERMS = ("diffusion", "recon", "prior", "latent")  # the fields of Terms, in order


@dataclass(frozen=True)
class Arithmetic:
    """What an -ELBO is computed in: besides its draws, all that differs between the
    training loss and a codec's cost, so it is passed to `elbo`, never read off a class.

    `LOSS`: float32 with torch's functions, so gradients flow. `Arithmetic.coder(model)`:
    what the codec builds the chain with (`coding.bitsback.TileBatch`): float64, the
    model's own elementary functions (`exactmath.EXACT` for an integer model), and the
    denoiser given each gamma per subpixel.
    """

    dtype: torch.dtype = torch.float32
    fns: Elementary = TORCH
    gamma_per_subpixel: bool = False

    @classmethod
    def coder(cls, model: "ElboModel") -> "Arithmetic":
        return cls(torch.float64, model.elementary, True)

    def schedule(self, sched: Schedule) -> Schedule:
        return sched.double() if self.dtype == torch.float64 else sched

    def gamma(self, g: Tensor, like: Tensor) -> Tensor:
        return g.expand_as(like) if self.gamma_per_subpixel else g


LOSS = Arithmetic()


class ElboModel(Protocol):
    """What `elbo` asks of a model: the codec's interface (`MuLAN`, `IntegerMuLAN`)."""

    elementary: Elementary
    cfg: ModelConfig

    def eval(self) -> "ElboModel": ...

    def latent_posterior(self, x_unit: Tensor) -> tuple[Tensor, Tensor] | None: ...

    def schedule(self, c: Tensor | None, like: Tensor, ctx: Tensor | None = None) -> Schedule: ...

    def denoise(self, z: Tensor, gamma: Tensor, c: Tensor | None,
                ctx: Tensor | None = None) -> tuple[Tensor, Tensor | None]: ...


# The diffusion loss per subpixel (nats) at time t, given s (the discrete step s -> t, or
# None for the continuous-time integrand) and the noise eps of z_t.
StepLoss = Callable[[Tensor, Tensor | None, Tensor], Tensor]
# The reconstruction term per image (nats) of the batch rows given (None: every row).
ReconLoss = Callable[[Tensor | None], Tensor]


class Draws(Protocol):
    """The random numbers of one -ELBO estimate, asked for in the order `elbo` assembles
    the terms, and how the diffusion term's times are drawn and its steps combined."""

    def latent(self, shape: tuple[int, ...]) -> Tensor:
        """Standard normal noise of c ~ q(c | x)."""
        ...

    def z0(self, shape: tuple[int, ...]) -> Tensor:
        """Standard normal noise of z_0 ~ q(z_0 | x)."""
        ...

    def diffusion(self, step: StepLoss, shape: tuple[int, ...]) -> Tensor:
        """The diffusion term per image (nats) from `step` at the times drawn."""
        ...

    def reconstruction(self, recon: ReconLoss, batch: int) -> Tensor:
        """The reconstruction term per image (nats) from `recon`: every row, or an
        unbiased estimate from some of them."""
        ...


class AntitheticDraws:
    """VDM's estimator (the training loss): one time per image, antithetically spaced
    (or given), continuous or rounded up to one of `steps` steps, all from `generator`.

    recon_fraction < 1 estimates the reconstruction term from that fraction of the batch's
    rows, drawn at random and weighted up: a decoder that runs the denoiser costs a second
    network call per row, and its term varies far less than one drawn diffusion step's.
    """

    def __init__(self, generator: torch.Generator | None, device: torch.device, steps: int = 0,
                 t: Tensor | None = None, recon_fraction: float = 1.0) -> None:
        self.generator, self.device, self.steps, self.t = generator, device, steps, t
        self.recon_fraction = recon_fraction

    def latent(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, device=self.device, generator=self.generator)

    z0 = latent

    def diffusion(self, step: StepLoss, shape: tuple[int, ...]) -> Tensor:
        t, B, T = self.t, shape[0], self.steps
        if t is None:
            u = torch.rand((), device=self.device, generator=self.generator)
            t = torch.remainder(u + torch.arange(B, device=self.device) / B, 1.0)
        s = None
        if T:
            i = torch.clamp(torch.ceil(t * T), min=1).float()
            t, s = i / T, (i - 1) / T
        per_dim = step(t, s, self.latent(shape))
        if T:  # T times one uniformly chosen step's KL: unbiased for the sum over steps
            per_dim = T * per_dim
        return per_dim.flatten(1).sum(1)

    def reconstruction(self, recon: ReconLoss, batch: int) -> Tensor:
        k = max(1, round(batch * self.recon_fraction))
        if k >= batch:
            return recon(None)
        # k of the batch rows, each weighted batch / k: each row is in with probability
        # k / batch, so every image's estimate (and the batch mean) stays unbiased
        rows = torch.randperm(batch, device=self.device, generator=self.generator)[:k]
        part = recon(rows)
        out = torch.zeros(batch, dtype=part.dtype, device=part.device)
        return out.index_copy(0, rows, part * (batch / k))


def elbo(model: ElboModel, x: Tensor, draws: Draws, ctx: Tensor | None = None,
         arith: Arithmetic = LOSS) -> Terms:
    """Unbiased estimates of the -ELBO terms per image, in bpd: the one assembly behind the
    training loss, the float eval and a codec's cost (`quantcost`), in VDM's order
    (google-research/vdm's model_vdm.py) after MuLAN's auxiliary latent.

    x: (B, C, H, W) with values 0..255; ctx: a context model's context input
    (`context_channels`), or None. The Gaussians are this module's, which the codec codes
    with; `draws` and `arith` are all that differs between the callers.
    """
    xu = to_unit(x)
    # 0. the auxiliary latent: c ~ q(c | x), and KL(q(c | x) || N(0, 1)) exactly
    c, latent = _latent(model, xu, draws, arith.dtype)
    sched = arith.schedule(model.schedule(c, xu, ctx))
    xu, fns = xu.to(arith.dtype), arith.fns
    g0, g1 = sched.gamma(0.0), sched.gamma(1.0)
    # 1. reconstruction: -log p(x | z_0), z_0 ~ q(z_0 | x)
    m0, s0 = data_posterior(xu, g0, fns)
    z0 = m0 + s0 * draws.z0(tuple(xu.shape))
    recon = draws.reconstruction(partial(_recon_loss, model, x, z0, g0, c, ctx, arith), len(x))
    # 2. prior: KL(q(z_1 | x) || N(0, 1))
    a1, s1 = alpha_sigma(g1, fns)
    prior = std_normal_kl(a1 * xu, s1.expand_as(xu))
    # 3. diffusion: the sum over steps (or integral over t) of the reverse steps' KLs
    diffusion = draws.diffusion(partial(_step_loss, model, xu, sched, c, ctx, arith), tuple(xu.shape))
    k = 1.0 / (x[0].numel() * LN2)
    return Terms(diffusion * k, recon * k, prior.flatten(1).sum(1) * k, latent * k)


def _recon_loss(model: ElboModel, x: Tensor, z0: Tensor, g0: Tensor, c: Tensor | None,
                ctx: Tensor | None, arith: Arithmetic, rows: Tensor | None) -> Tensor:
    """-log p(x | z_0) per image (nats) of the batch rows given (None: all of them)."""
    if rows is not None:
        def pick(v: Tensor | None) -> Tensor | None:  # a batch tensor's rows; broadcast ones as they are
            return v if v is None or v.dim() == 0 or v.shape[0] == 1 else v[rows]

        x, z0, g0, c, ctx = pick(x), pick(z0), pick(g0), pick(c), pick(ctx)
    net = _decoder_net(model, z0, g0, c, ctx, arith)
    nll = discretized_gaussian_nll(x, *decoder_params(z0, g0, arith.fns, *net))
    return nll.to(arith.dtype).flatten(1).sum(1)


def _decoder_net(model: ElboModel, z0: Tensor, g0: Tensor, c: Tensor | None, ctx: Tensor | None,
                 arith: Arithmetic) -> tuple[Tensor | None, Tensor | None]:
    """The denoiser's (eps-hat, mse-hat) at z_0 for a model whose p(x | z_0) uses them, else
    (None, None): the one extra network call of the reconstruction term."""
    if model.cfg.decoder != "denoiser":
        return None, None
    g0 = arith.gamma(g0, z0)
    eps_hat, mse_hat = model.denoise(z0.float(), g0.float(), c, ctx)
    return eps_hat.to(arith.dtype), None if mse_hat is None else mse_hat.to(arith.dtype)


def _latent(model: ElboModel, xu: Tensor, draws: Draws,
            dtype: torch.dtype) -> tuple[Tensor | None, Tensor]:
    """c ~ q(c | x) (reparameterised, float32 for the networks) and its KL per image."""
    post = model.latent_posterior(xu)
    if post is None:
        return None, torch.zeros(xu.shape[0], dtype=dtype, device=xu.device)
    cm, cs = (v.to(dtype) for v in post)
    c = (cm + cs * draws.latent(tuple(cm.shape))).float()
    return c, std_normal_kl(cm, cs).flatten(1).sum(1)


def _step_loss(model: ElboModel, xu: Tensor, sched: Schedule, c: Tensor | None, ctx: Tensor | None,
               arith: Arithmetic, t: Tensor, s: Tensor | None, eps: Tensor) -> Tensor:
    """The diffusion loss per subpixel (nats) at z_t = alpha_t x + sigma_t eps: the
    continuous-time integrand (s None), or the step's KL(q(z_s | z_t, x) || p(z_s | z_t))."""
    g_t = arith.gamma(sched.gamma(t), xu)
    a_t, s_t = alpha_sigma(g_t, arith.fns)
    eps_hat, mse_hat = model.denoise((a_t * xu + s_t * eps).float(), g_t.float(), c, ctx)
    eps_hat = eps_hat.to(arith.dtype)
    if s is None:
        return 0.5 * sched.dgamma(t) * (eps - eps_hat) ** 2
    mse_hat = None if mse_hat is None else mse_hat.to(arith.dtype)
    return reverse_step_kl(arith.gamma(sched.gamma(s), xu), g_t, eps, eps_hat, mse_hat)


class MuLAN(nn.Module):
    elementary = TORCH  # what the codec computes this model's Gaussians with (`exactmath`)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = LatentEncoder(cfg) if cfg.latent_channels else None
        self.schedule_net = ScheduleNet(cfg)
        self.denoiser = UNet(cfg)

    # -- the pieces the codec composes -------------------------------------------------
    def latent_posterior(self, x_unit: Tensor) -> tuple[Tensor, Tensor] | None:
        """q(c | x) as (mean, std), or None for a model without a latent."""
        return self.encoder(x_unit) if self.encoder is not None else None

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.cfg.latent_factor
        return self.cfg.latent_channels, height // f, width // f

    def schedule(self, c: Tensor | None, like: Tensor, ctx: Tensor | None = None) -> Schedule:
        """The per-subpixel schedule, from the latent c and (`schedule_context`) the context."""
        return self.schedule_net(c, like, ctx)

    def gamma_norm(self, gamma: Tensor) -> Tensor:
        return (gamma - self.cfg.gamma_min) / (self.cfg.gamma_max - self.cfg.gamma_min)

    def denoise(self, z: Tensor, gamma: Tensor, c: Tensor | None,
                ctx: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(eps-hat, mse-hat): the one network call of a step.

        mse-hat, the predicted E[(eps - eps-hat)^2 | z] in [0, 1] that widens
        `reverse_step`, is None for a fixed-variance model. ctx is the context input
        (`context_channels`) of a context model.
        """
        out = self.denoiser(z, self.gamma_norm(gamma), c, ctx).float()
        if not self.cfg.learned_variance:
            return out, None
        eps_hat, raw = out.chunk(2, dim=1)
        return eps_hat, torch.sigmoid(raw)

    def eps(self, z: Tensor, gamma: Tensor, c: Tensor | None, ctx: Tensor | None = None) -> Tensor:
        """eps-hat alone."""
        return self.denoise(z, gamma, c, ctx)[0]

    # -- the loss --------------------------------------------------------------------
    def terms(self, x: Tensor, steps: int = 0, generator: torch.Generator | None = None,
              t: Tensor | None = None, ctx: Tensor | None = None, recon_fraction: float = 1.0) -> Terms:
        """Unbiased single-sample estimates of the -ELBO terms (`elbo`), per image, in bpd.

        x: (B, C, H, W) with values 0..255. steps = 0 gives the continuous-time
        diffusion loss; steps = T the exact discrete-time loss at T steps.
        t is sampled with antithetic (low-discrepancy) spacing unless given.
        ctx: the context input of a context model (`context_channels`), or None.
        recon_fraction: the share of the rows the reconstruction term is estimated from.
        """
        return elbo(self, x, AntitheticDraws(generator, x.device, steps, t, recon_fraction), ctx)

    def forward(self, x: Tensor, steps: int = 0, generator: torch.Generator | None = None,
                ctx: Tensor | None = None, recon_fraction: float = 1.0) -> Terms:
        """Training entry point (so DDP sees a forward call): the loss terms."""
        return self.terms(x, steps, generator, ctx=ctx, recon_fraction=recon_fraction)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
