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
            layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, S, 3, padding=1), nn.SiLU()]
            for _ in range(int(math.log2(cfg.latent_factor))):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(S, S, 3, padding=1), nn.SiLU()]
            head = nn.Conv2d(S, 3 * C, 1)
            self.net = nn.Sequential(*layers, head)
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
        if cfg.learned_ends:  # gamma(0) and log(gamma(1) - gamma(0)): ordered by construction
            self.ends = nn.Parameter(torch.tensor(
                [cfg.gamma_min, math.log(cfg.gamma_max - cfg.gamma_min)]))

    def end_points(self) -> tuple[float | Tensor, float | Tensor]:
        """gamma(0) and gamma(1): learned (0-dim tensors) or the config's."""
        if not self.cfg.learned_ends:
            return self.cfg.gamma_min, self.cfg.gamma_max
        g0 = self.ends[0]
        return g0, g0 + torch.exp(self.ends[1])

    def forward(self, c: Tensor | None, like: Tensor) -> Schedule:
        """The schedule for a batch shaped like `like` (B, C, H, W)."""
        cfg = self.cfg
        if self.conditional:
            assert c is not None
            a, b, d = self.net(c).float().chunk(3, dim=1)
        elif self.kind == "linear":
            z = like.new_zeros(1, 1, 1, 1, dtype=torch.float32)
            a, b, d = z, z, z + 1
        else:
            a, b, d = (p.reshape(1, -1, 1, 1) for p in self.coef)
        return Schedule(a, b, d, *self.end_points(), cfg.schedule_eps)
