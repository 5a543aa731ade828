"""The integer latent encoder q(c | x) and schedule net: `latent.LatentEncoder` and
`schedule.ScheduleNet` evaluated exactly on integers (see intops).

Both are plain stacks of convolutions and SiLUs; their outputs (the latent's
mean and std, the schedule's coefficient maps) are exact reals in float64, and the
one transcendental after them (softplus, the learned end point's exp) is
`exactmath`'s.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import exactmath as em
from .configs import ModelConfig
from .intops import QAct, QConv, limb_max
from .latent import LatentEncoder
from .schedule import Schedule, ScheduleNet

PIXEL_BITS, LATENT_BITS = 8, 8  # x in [-1, 1]: integers 2x + 1 - 256 at 2^-8; c at 2^-8


LIMBS = 2  # these nets are small: two-limb activations and weights throughout


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, limbs: int = LIMBS) -> QConv:
    return QConv(cin, cout, k, stride, padding, [(cin, limbs)], wlimbs=LIMBS)


class _QStack(nn.Module):
    """Convolutions, each followed by SiLU (and optionally a 2x upsampling before it),
    then a 1x1 head: the integer version of such an nn.Sequential."""

    def __init__(self, convs: list[QConv], head: QConv, upsample: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.acts = nn.ModuleList([QAct(c.bias.numel(), LIMBS) for c in convs])
        self.head, self.upsample = head, upsample

    @torch.no_grad()
    def calibrate(self, seq: nn.Sequential, x: Tensor, in_scale: float) -> None:
        convs = [m for m in seq if isinstance(m, nn.Conv2d)]
        scale = torch.full((convs[0].in_channels,), in_scale, dtype=torch.float64)
        for i, (qc, qa, fc) in enumerate(zip(self.convs, self.acts, convs)):
            if i and self.upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            qc.quantize(fc, scale)
            x = qa.calibrate(fc(x))
            scale = qa.out_scale
        self.head.quantize(convs[-1], scale)

    def forward(self, q: Tensor) -> Tensor:
        for i, (qc, qa) in enumerate(zip(self.convs, self.acts)):
            if i and self.upsample:
                q = F.interpolate(q, scale_factor=2, mode="nearest")
            q = qa(qc(q), qc)
        return self.head.real(self.head(q))


class QLatentEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, n = cfg.latent_width, int(math.log2(cfg.latent_factor))
        convs = [_conv(cfg.channels, E, 3, 1, 1, limbs=1)] + [_conv(E, E, 4, 2, 1) for _ in range(n)]
        self.net = _QStack(convs, _conv(E, 2 * cfg.latent_channels, 1), upsample=False)
        self.std_min = cfg.latent_std_min

    def calibrate(self, enc: LatentEncoder, x_unit: Tensor) -> None:
        self.net.calibrate(enc.net, x_unit, 2.0 ** -PIXEL_BITS)

    def forward(self, x_unit: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of q(c | x) (float64) for x in [-1, 1] (bin centres: exact)."""
        q = torch.round(x_unit.double() * float(1 << PIXEL_BITS)).float()  # one limb
        mean, raw = self.net(q).chunk(2, dim=1)
        return mean, em.softplus(raw) + self.std_min


class QScheduleNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.channels
        self.conditional = cfg.schedule == "mulan" and cfg.latent_channels > 0
        if self.conditional:
            if cfg.schedule_head != "conv":
                raise ValueError("the dense schedule head has no integer version (use conv)")
            S, n = cfg.schedule_width, int(math.log2(cfg.latent_factor))
            convs = [_conv(cfg.latent_channels, S, 3, 1, 1)] + [_conv(S, S, 3, 1, 1) for _ in range(n)]
            self.net = _QStack(convs, _conv(S, 3 * C, 1), upsample=True)
        elif cfg.schedule in ("mulan", "scalar"):
            self.register_buffer("coef", torch.zeros(3, C if cfg.schedule == "mulan" else 1,
                                                     dtype=torch.float64))
        if cfg.learned_ends:
            self.register_buffer("ends", torch.zeros(2, dtype=torch.float64))

    @torch.no_grad()
    def calibrate(self, net: ScheduleNet, c: Tensor | None) -> None:
        if self.conditional:
            assert c is not None
            self.net.calibrate(net.net, c, 2.0 ** -LATENT_BITS)
        elif self.cfg.schedule in ("mulan", "scalar"):
            self.coef.copy_(net.coef.detach().double())
        if self.cfg.learned_ends:
            self.ends.copy_(net.ends.detach().double())

    def end_points(self) -> tuple[float | Tensor, float | Tensor]:
        if not self.cfg.learned_ends:
            return self.cfg.gamma_min, self.cfg.gamma_max
        return self.ends[0], self.ends[0] + em.exp(self.ends[1])

    def forward(self, c: Tensor | None, device: torch.device) -> Schedule:
        """The schedule (float64, on `device`) for latents c."""
        if self.conditional:
            assert c is not None
            q = torch.round(c.double() * float(1 << LATENT_BITS)).clamp_(-limb_max(2), limb_max(2))
            a, b, d = self.net(q.float()).chunk(3, dim=1)
        elif self.cfg.schedule == "linear":
            a = b = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
            d = a + 1.0
        else:
            a, b, d = (p.reshape(1, -1, 1, 1) for p in self.coef)
        g0, g1 = (g.to(device) if isinstance(g, Tensor) else g for g in self.end_points())
        return Schedule(a.to(device), b.to(device), d.to(device), g0, g1, self.cfg.schedule_eps)
