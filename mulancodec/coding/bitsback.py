"""The MuLAN chain of a batch of tiles as one bits-back codec (`tile_codec`).

The codec is composed, craystack-style, from the model's per-step Gaussians:

    BitsBack(prior p(c), likelihood: c -> chain given c, posterior q(c | x))
    chain given c = BitSwap over x -> z_0 -> z_1 -> ... -> z_T with
        level 0: posterior q(z_0 | x, c), likelihood p(x | z_0, c)
        level i: posterior q(z_i | z_{i-1}, c), likelihood p(z_{i-1} | z_i, c)
        prior of z_T: N(0, 1)

so the encoder runs its push and the decoder its pop (in Bit-Swap order each
pop only needs the bits the previous push left). The Gaussians come from
`model.mulan` (`data_posterior`, `decoder_params`, `forward_step`,
`reverse_step`), the same definitions the discrete-time loss is checked against.

Each z_i lives on its own per-subpixel grid of kappa * min(std it is popped
with, std it is pushed with); both sides derive the grids from c and the
schedule alone. Padding and grey channels are copies of coded subpixels
(`image.tile_maps`) and are never coded. A context model's denoiser also sees
each tile's context window (`model.context`), which the stream fills in.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch

from ..imaging.image import TileJob
from ..model.elementary import Elementary
from ..model.mulan import (
    MuLAN,
    alpha_sigma,
    data_posterior,
    decoder_params,
    forward_step,
    reverse_step,
    to_unit,
)
from .chainspec import ChainSpec
from .codecs import BitsBack, BitsBackStep, BitSwap, Codec, PixelGaussian, Stack, WindowedGaussian

R = TypeVar("R")


class Remembering(Elementary):
    """A tile batch's elementary functions, keeping the last few results asked for by
    name (`Elementary.once`): the chain asks for each step's alpha, sigma and expm1 of a
    gamma difference several times, always on the same gamma tensors (`TileBatch.gamma`),
    and with `exactmath`'s functions each costs float64 polynomial passes. A result is
    reused only for the very same tensor objects (held here, and never written to: a
    batch's gammas are made once per step), so its bits are those of computing it again;
    it lives as long as its tile batch. (Inference tensors keep no version counter.)"""

    def __init__(self, fns: Elementary, size: int = 12) -> None:
        super().__init__(fns.exp, fns.expm1, fns.sigmoid, fns.sqrt)
        object.__setattr__(self, "_memo", [])  # (name, args, result), newest first
        object.__setattr__(self, "_size", size)

    def once(self, name: str, args: tuple[torch.Tensor, ...], compute: Callable[[], R]) -> R:
        for n, held, out in self._memo:
            if n == name and len(held) == len(args) and all(h is a for h, a in zip(held, args)):
                return out
        out = compute()
        self._memo.insert(0, (name, args, out))
        del self._memo[self._size:]
        return out


def _keep(cache: dict[int, Any], i: int, value: Any, reach: int) -> None:
    """Store step i's value, dropping steps more than `reach` away: the chain walks the
    steps in order, so a step's neighbours are all it ever asks for again."""
    cache[i] = value
    for old in [k for k in cache if abs(k - i) > reach]:
        del cache[old]


class TileBatch:
    """The model's distributions for one batch of tiles, step by step.

    Chain arithmetic is float64 on the model's device over the coded subpixels
    only, with the model's elementary functions (`model.elementary`: torch's, or for
    an integer model `exactmath.EXACT`); the denoiser sees float32 tiles rebuilt by
    copying (padding, grey), and for a context model the tiles' context input
    `ctx` (B, 4, S+2m, S+2m).
    """

    def __init__(self, model: MuLAN, spec: ChainSpec, jobs: Sequence[TileJob], size: int,
                 device: torch.device, ctx: torch.Tensor | None = None) -> None:
        self.model, self.spec, self.size, self.device, self.ctx = model, spec, size, device, ctx
        self.fns = Remembering(model.elementary)
        self.B = len(jobs)
        self.src = torch.from_numpy(np.stack([j.src for j in jobs])).to(device)
        self.coded = torch.from_numpy(np.stack([j.coded for j in jobs])).to(device)
        self.sched = None
        self._gamma: dict[int, torch.Tensor] = {}
        self._gamma_coded: dict[int, torch.Tensor] = {}
        self._grid: dict[int, tuple[torch.Tensor, int]] = {}
        self.c: torch.Tensor | None = None

    # -- tensors -------------------------------------------------------------------
    def full(self, coded_values: torch.Tensor) -> torch.Tensor:
        """Coded values -> (B, 3, S, S) tile by copying each subpixel from its source."""
        flat = torch.zeros(self.coded.shape, dtype=coded_values.dtype, device=self.device)
        flat[self.coded] = coded_values
        return flat.gather(1, self.src).view(self.B, 3, self.size, self.size)

    def pick(self, full: torch.Tensor) -> torch.Tensor:
        return full.reshape(self.B, -1)[self.coded]

    @staticmethod
    def np(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    def ints(self, k: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(k).to(self.device)

    # -- latent ------------------------------------------------------------------------
    def _latent_grid(self) -> tuple[float, int, int]:
        d = self.spec.latent_delta
        n = self.B * int(np.prod(self.model.latent_shape(self.size, self.size)))
        return d, math.ceil(self.spec.window / d), n

    def latent_prior(self) -> WindowedGaussian:
        """p(c) = N(0, 1) on the latent grid."""
        d, radius, n = self._latent_grid()
        return WindowedGaussian(np.zeros(n), np.full(n, 1.0 / d), radius, escapes=True)

    def latent_posterior(self, x: np.ndarray) -> WindowedGaussian:
        """q(c | x) on the latent grid, for the batch's coded subpixels x."""
        d, radius, _ = self._latent_grid()
        cm, cs = self.model.latent_posterior(to_unit(self.full(self.ints(x).to(torch.uint8))))
        return WindowedGaussian(self.np(cm).reshape(-1) / d, self.np(cs).reshape(-1) / d, radius,
                                reverse=True)

    def set_latent(self, kc: np.ndarray | None) -> None:
        """Fix c (grid indices, or None for a model without latent) and so the schedule."""
        if kc is not None:
            shape = (self.B, *self.model.latent_shape(self.size, self.size))
            self.c = (torch.from_numpy(kc).to(self.device, torch.float64)
                      * self.spec.latent_delta).float().view(shape)
        like = torch.zeros(self.B, 3, self.size, self.size, device=self.device)
        self.sched = self.model.schedule(self.c, like, self.ctx).double()

    # -- schedule and grids --------------------------------------------------------------
    def gamma_full(self, i: int) -> torch.Tensor:
        if i not in self._gamma:
            assert self.sched is not None
            g = self.sched.gamma(i / self.spec.steps)
            _keep(self._gamma, i, g.expand(self.B, 3, self.size, self.size), 2)
        return self._gamma[i]

    def gamma(self, i: int) -> torch.Tensor:
        """gamma_i of the coded subpixels (picked once per step: every codec of a step needs it)."""
        if i not in self._gamma_coded:
            _keep(self._gamma_coded, i, self.pick(self.gamma_full(i)), 2)
        return self._gamma_coded[i]

    def _stds(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stds z_i is popped with and pushed with (encoder), coded subpixels, known from
        c alone: (pop, push at its narrowest, push at its widest).

        A learned-variance model pushes with a std between the two push bounds
        (`reverse_step` at mse-hat 0 and 1), set by the network at the step.
        """
        T = self.spec.steps
        g_i = self.gamma(i)
        zero = torch.zeros_like(g_i)
        if i == 0:
            s_pop = alpha_sigma(g_i, self.fns)[1]
        else:
            s_pop = forward_step(zero, self.gamma(i - 1), g_i, fns=self.fns)[1]
        if i == T:
            return s_pop, torch.ones_like(g_i), torch.ones_like(g_i)
        g_next = self.gamma(i + 1)
        narrow = reverse_step(zero, zero, g_i, g_next, fns=self.fns)[1]
        wide = reverse_step(zero, zero, g_i, g_next, torch.ones_like(g_i), fns=self.fns)[1] \
            if self.model.cfg.learned_variance else narrow
        return s_pop, narrow, wide

    def grid(self, i: int) -> tuple[torch.Tensor, int]:
        """(bin width per coded subpixel, window radius in bins) of z_i.

        The width is kappa times the smallest std z_i can be coded with, and the
        window covers `spec.window` of the largest.
        (A coarse pixel-aligned grid for z_0 would make the first pop nearly
        free, but it strips z_0's noise from the whole chain that follows: on a
        T = 50 chain that cost +0.55 bpd, so every z_i gets a fine grid.)
        """
        if i not in self._grid:
            s_pop, narrow, wide = self._stds(i)
            lo, hi = torch.minimum(s_pop, narrow), torch.maximum(s_pop, wide)
            delta = self.spec.kappa * lo
            ratio = float((hi / lo).max().item()) if lo.numel() else 1.0
            radius = int(min(2 ** 22, math.ceil(self.spec.window * ratio / self.spec.kappa)))
            _keep(self._grid, i, (delta, radius), 1)
        return self._grid[i]

    def codec(self, i: int, mean: torch.Tensor, std: torch.Tensor, prior: bool) -> WindowedGaussian:
        """z_i's codec: a posterior (popped by the encoder) or a prior (pushed by it)."""
        delta, radius = self.grid(i)
        return WindowedGaussian(self.np(mean / delta), self.np(std / delta), radius,
                                escapes=prior, reverse=not prior)

    def z(self, i: int, k: np.ndarray) -> torch.Tensor:
        return self.ints(k).double() * self.grid(i)[0]

    # -- distributions -----------------------------------------------------------------
    def denoise(self, z: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The denoiser's (eps-hat, mse-hat) for z_i (coded subpixels): one network call per step."""
        e, m = self.model.denoise(self.full(z).float(), self.gamma_full(i).float(), self.c, self.ctx)
        return self.pick(e.double()), None if m is None else self.pick(m.double())

    # -- the codecs of the chain ---------------------------------------------------------
    def prior_z(self) -> WindowedGaussian:
        """p(z_T) = N(0, 1)."""
        T = self.spec.steps
        return self.codec(T, torch.zeros_like(self.gamma(T)), torch.ones_like(self.gamma(T)), True)

    def pixel_posterior(self, x: np.ndarray) -> WindowedGaussian:
        """q(z_0 | x, c)."""
        return self.codec(0, *data_posterior(to_unit(self.ints(x)).double(), self.gamma(0), self.fns),
                          False)

    def pixel_likelihood(self, k0: np.ndarray) -> PixelGaussian:
        """p(x | z_0, c) on the pixel grid (through the denoiser, for a model whose decoder uses it)."""
        z0 = self.z(0, k0)
        net = self.denoise(z0, 0) if self.model.cfg.decoder == "denoiser" else (None, None)
        mean, std = decoder_params(z0, self.gamma(0), self.fns, *net)
        return PixelGaussian(self.np(mean), self.np(std))

    def forward_posterior(self, i: int, k_prev: np.ndarray) -> WindowedGaussian:
        """q(z_i | z_{i-1}, c)."""
        return self.codec(i, *forward_step(self.z(i - 1, k_prev), self.gamma(i - 1), self.gamma(i),
                                           self.fns), False)

    def reverse_likelihood(self, i: int, k: np.ndarray) -> WindowedGaussian:
        """p(z_{i-1} | z_i, c), through the denoiser."""
        z = self.z(i, k)
        eps_hat, mse_hat = self.denoise(z, i)
        return self.codec(i - 1, *reverse_step(z, eps_hat, self.gamma(i - 1), self.gamma(i), mse_hat,
                                               fns=self.fns), True)

    def chain(self, kc: np.ndarray | None) -> BitSwap:
        """The codec of x given c: Bit-Swap over x -> z_0 -> ... -> z_T."""
        self.set_latent(kc)
        return BitSwap(_ChainSteps(self), self.prior_z())


class _ChainSteps(Sequence[BitsBackStep]):
    """The T + 1 levels of a tile batch's chain, built when they are coded."""

    def __init__(self, tb: TileBatch) -> None:
        self.tb = tb

    def __len__(self) -> int:
        return self.tb.spec.steps + 1

    def __getitem__(self, i: Any) -> BitsBackStep:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        tb = self.tb
        if i == 0:
            return BitsBackStep(tb.pixel_posterior, tb.pixel_likelihood)
        return BitsBackStep(lambda k_prev: tb.forward_posterior(i, k_prev),
                            lambda k: tb.reverse_likelihood(i, k))


def tile_codec(tb: TileBatch) -> Codec:
    """The codec of a batch's coded subpixels (int64): the whole model as one bits-back codec."""
    if tb.model.encoder is None:
        return tb.chain(None)
    return BitsBack(tb.latent_prior(), BitsBackStep(tb.latent_posterior, tb.chain))


def encode_batch(stack: Stack, tb: TileBatch, x_full: torch.Tensor) -> None:
    """Push a batch of tiles (B,3,S,S) uint8; the padded subpixels must be copies."""
    tile_codec(tb).push(stack, tb.np(tb.pick(x_full)).astype(np.int64))


def decode_batch(stack: Stack, tb: TileBatch) -> torch.Tensor:
    """Pop a batch of tiles; returns (B,3,S,S) uint8 on the model's device."""
    x = tile_codec(tb).pop(stack)
    return tb.full(tb.ints(x).to(torch.uint8))


