"""Noise schedules gamma(t): per subpixel (MuLAN), shared and learned (VDM), or linear.

All three use one family: gamma(t) = g0 + (g1 - g0) f(t) / f(1) (end points g0, g1
fixed by the config, or learned), with
f(t) = integral_0^t (a s^2 + b s + d)^2 ds + eps t, which is increasing in t for
any coefficients, so the schedule is monotone by construction and its
derivative has a closed form. MuLAN predicts (a, b, d) per subpixel from the
auxiliary latent c; the ablations pin them to learned scalars or to (0, 0, 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import ModelConfig


class Schedule:
    """gamma(t) and its time derivative for fixed coefficient maps a, b, d."""

    def __init__(self, a: Tensor, b: Tensor, d: Tensor, gamma_min: float | Tensor,
                 gamma_max: float | Tensor, eps: float) -> None:
        self.a, self.b, self.d = a, b, d
        self.g0, self.g1, self.eps = gamma_min, gamma_max, eps
        self.f1 = self._f(torch.ones((), dtype=a.dtype, device=a.device))

    def double(self) -> "Schedule":
        """The same schedule evaluated in float64 (the codec's chain arithmetic)."""
        g0, g1 = (g.double() if isinstance(g, Tensor) else g for g in (self.g0, self.g1))
        return Schedule(self.a.double(), self.b.double(), self.d.double(), g0, g1, self.eps)

    def _f(self, t: Tensor) -> Tensor:
        a, b, d = self.a, self.b, self.d
        t2 = t * t
        return (a * a * t2 * t2 * t / 5 + a * b * t2 * t2 / 2 + (b * b + 2 * a * d) * t2 * t / 3
                + b * d * t2 + d * d * t + self.eps * t)

    @staticmethod
    def _shape(t: Tensor | float, like: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        return t.reshape(-1, 1, 1, 1) if t.dim() > 0 else t

    def gamma(self, t: Tensor | float) -> Tensor:
        """gamma at time t (scalar, or one time per batch element)."""
        t = self._shape(t, self.a)
        return self.g0 + (self.g1 - self.g0) * self._f(t) / self.f1

    def dgamma(self, t: Tensor | float) -> Tensor:
        """d gamma / dt in closed form: (g1 - g0) ((a t^2 + b t + d)^2 + eps) / f(1)."""
        t = self._shape(t, self.a)
        poly = self.a * t * t + self.b * t + self.d
        return (self.g1 - self.g0) * (poly * poly + self.eps) / self.f1


CONTEXT_FEATURES = 6  # known fraction, local roughness, mean known pixel (3), tile roughness
CONTEXT_OUT = 4  # maps the context branch adds to the schedule net's input
ROUGH_CLIP = 32.0  # grey levels: differences above this count as this


def context_features(ctx: Tensor, factor: int) -> Tensor:
    """What the decoder's context says about how busy each region is, per latent cell.

    ctx: the window's context channels (B, 4, W, W) (`mulan.context_channels`): pixels
    in [-1, 1] where known, and the known mask. Per f x f cell of the window: the known
    fraction, the mean clipped |gradient| between known neighbours (grey levels / 32),
    and the mean known pixel; and over the whole window, the mean roughness, broadcast.
    Every value is a sum of small integers divided by a count, so it is the same on
    every machine (the integer codec computes it in float32 too).
    """
    k = ctx[:, 3:4]
    grey = torch.round((ctx[:, :3] + 1.0) * 128.0 - 0.5) * k  # 0..255 where known
    kx = k[..., 1:] * k[..., :-1]
    ky = k[..., 1:, :] * k[..., :-1, :]
    dx = torch.clamp((grey[..., 1:] - grey[..., :-1]).abs().sum(1, keepdim=True), max=3 * ROUGH_CLIP) * kx
    dy = torch.clamp((grey[..., 1:, :] - grey[..., :-1, :]).abs().sum(1, keepdim=True),
                     max=3 * ROUGH_CLIP) * ky
    rough = F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1))  # sums over 3 channels, two directions
    pairs = F.pad(kx, (0, 1)) + F.pad(ky, (0, 0, 0, 1))
    area = float(factor * factor)
    cell = lambda v: F.avg_pool2d(v, factor) * area  # exact sums of small integers
    n_pairs = cell(pairs)
    local = cell(rough) / torch.clamp(n_pairs, min=1.0) / (3 * ROUGH_CLIP)
    total = rough.sum(dim=(2, 3), keepdim=True) / torch.clamp(pairs.sum(dim=(2, 3), keepdim=True), min=1.0)
    tile_rough = (total / (3 * ROUGH_CLIP)).expand_as(local)
    return torch.cat([cell(k) / area, local, cell(ctx[:, :3] * k) / area, tile_rough], dim=1)


PHASE_START = 0.5  # `schedule_phase`: the first position's a starts this much higher


def tiled_phase(phase: Tensor, height: int, width: int) -> Tensor:
    """The (1, 3C, height, width) offsets of `schedule_phase`: `phase` (3C, P, P) repeated, so
    a pixel's offset is its position modulo P (a tile's origin is a multiple of P)."""
    P = phase.shape[-1]
    return phase.repeat(1, -(-height // P), -(-width // P))[None, :, :height, :width]


class ScheduleNet(nn.Module):
    """Maps the latent c (or nothing) to the schedule's coefficient maps."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.channels
        self.kind = cfg.schedule
        self.conditional = cfg.schedule == "mulan" and cfg.latent_channels > 0
        if self.conditional and cfg.schedule_head == "dense":
            # the paper's form, for the ablation: dense layers from flattened c, fixed tile
            n_c = cfg.latent_channels * (cfg.tile // cfg.latent_factor) ** 2
            hidden = cfg.schedule_dense_width
            head = nn.Linear(hidden, 3 * C * cfg.tile * cfg.tile)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_c, hidden), nn.SiLU(), head,
                                     nn.Unflatten(1, (3 * C, cfg.tile, cfg.tile)))
        elif self.conditional:
            S = cfg.schedule_width
            n_in = cfg.latent_channels + (CONTEXT_OUT if cfg.schedule_context else 0)
            layers: list[nn.Module] = [nn.Conv2d(n_in, S, 3, padding=1), nn.SiLU()]
            for _ in range(int(math.log2(cfg.latent_factor))):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(S, S, 3, padding=1), nn.SiLU()]
            head = nn.Conv2d(S, 3 * C, 1)
            self.net = nn.Sequential(*layers, head)
            if cfg.schedule_context:
                with torch.no_grad():
                    self.net[0].weight[:, cfg.latent_channels:] = 0.0
        self.context_net = None
        if cfg.schedule_context:
            # the context's features -> CONTEXT_OUT maps per latent cell, which join c as the
            # first convolution's inputs (their weights start at zero: no change at first)
            S = cfg.schedule_width
            self.context_net = nn.Sequential(nn.Conv2d(CONTEXT_FEATURES, S, 3, padding=1), nn.SiLU(),
                                             nn.Conv2d(S, S, 3, padding=1), nn.SiLU(),
                                             nn.Conv2d(S, CONTEXT_OUT, 1))
        if self.conditional:
            nn.init.normal_(head.weight, std=1e-3)
            with torch.no_grad():  # start from the linear schedule: a = b = 0, d = 1
                bias = torch.tensor([0.0] * C + [0.0] * C + [1.0] * C)
                head.bias.copy_(bias.repeat_interleave(head.bias.numel() // (3 * C)))
        elif self.kind in ("mulan", "scalar"):
            # "mulan" without a latent learns one schedule per channel; "scalar" one for all.
            n = C if self.kind == "mulan" else 1
            self.coef = nn.Parameter(torch.tensor([[0.0] * n, [0.0] * n, [1.0] * n]))
        # "linear" has no parameters
        self.phase = None
        if cfg.schedule_phase:
            # per (coefficient map, position modulo the period) offsets; they start with the
            # first position's a raised by PHASE_START (less noise there at every 0 < t < 1),
            # since from equal offsets every position's gradient is the same and none would move
            P = cfg.schedule_phase
            start = torch.zeros(3 * C, P, P)
            start[:C, 0, 0] = PHASE_START
            self.phase = nn.Parameter(start)
        if cfg.learned_ends:  # gamma(0) and log(gamma(1) - gamma(0)): ordered by construction
            self.ends = nn.Parameter(torch.tensor(
                [cfg.gamma_min, math.log(cfg.gamma_max - cfg.gamma_min)]))

    def end_points(self) -> tuple[float | Tensor, float | Tensor]:
        """gamma(0) and gamma(1): learned (0-dim tensors) or the config's."""
        if not self.cfg.learned_ends:
            return self.cfg.gamma_min, self.cfg.gamma_max
        g0 = self.ends[0]
        return g0, g0 + torch.exp(self.ends[1])

    def context_maps(self, ctx: Tensor | None, cells: tuple[int, int]) -> Tensor:
        """The context branch's CONTEXT_OUT maps over the tile's latent cells (H/f, W/f)."""
        assert self.context_net is not None
        f, m = self.cfg.latent_factor, self.cfg.context // self.cfg.latent_factor
        if ctx is None:  # no pixel around the tile: the context as the codec gives it then
            H, W = ((n + 2 * m) * f for n in cells)
            ctx = torch.zeros(1, 4, H, W, device=self.net[0].weight.device)
        out = self.context_net(context_features(ctx.float(), f))
        return out[:, :, m:out.shape[2] - m, m:out.shape[3] - m]

    def coefficients(self, c: Tensor, ctx: Tensor | None) -> Tensor:
        """The conditional schedule's coefficient maps (a, b, d stacked) from c and the context."""
        if self.context_net is None:
            return self.net(c)
        extra = self.context_maps(ctx, tuple(c.shape[2:])).expand(c.shape[0], -1, -1, -1)
        return self.net(torch.cat([c, extra.to(c.dtype)], dim=1))

    def forward(self, c: Tensor | None, like: Tensor, ctx: Tensor | None = None) -> Schedule:
        """The schedule for a batch shaped like `like` (B, C, H, W); ctx is a context
        model's context input, which a `schedule_context` schedule reads."""
        cfg = self.cfg
        if self.conditional:
            assert c is not None
            coef = self.coefficients(c, ctx).float()
            if self.phase is not None:
                coef = coef + tiled_phase(self.phase.float(), coef.shape[2], coef.shape[3])
            a, b, d = coef.chunk(3, dim=1)
        elif self.kind == "linear":
            z = like.new_zeros(1, 1, 1, 1, dtype=torch.float32)
            a, b, d = z, z, z + 1
        else:
            a, b, d = (p.reshape(1, -1, 1, 1) for p in self.coef)
        return Schedule(a, b, d, *self.end_points(), cfg.schedule_eps)
