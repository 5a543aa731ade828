"""The integer latent encoder q(c | x) and schedule net: `latent.LatentEncoder` and
`schedule.ScheduleNet` evaluated exactly on integers (see intops).

Both are plain stacks of convolutions and SiLUs; their outputs (the latent's
mean and std, the schedule's coefficient maps) are exact reals in float64, and the
one transcendental after them (softplus, the learned end point's exp) is
`exactmath`'s.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.configs import ModelConfig
from ..model.latent import LatentEncoder
from ..model.schedule import Schedule, ScheduleNet, context_features, tiled_phase
from . import exactmath as em
from .intnorm import QAct
from .intops import QConv, limb_max

_M = TypeVar("_M", bound=nn.Module)

PIXEL_BITS, LATENT_BITS = 8, 8  # x in [-1, 1]: integers 2x + 1 - 256 at 2^-8; c at 2^-8
PHASE_BITS = 20  # `schedule_phase` offsets at 2^-20
FEATURE_BITS = 12  # the schedule's context features (exact float32 values in [-1, 1]) at 2^-12


LIMBS = 2  # these nets are small: two-limb activations and weights throughout


class _QStack(nn.Module):
    """The integer version of an nn.Sequential of convolutions, each followed by SiLU (and
    optionally preceded by a nearest 2x upsampling), then a 1x1 head; derived from the
    float Sequential itself, so a change there needs none here."""

    def __init__(self, seq: nn.Sequential, first_limbs: int = LIMBS) -> None:
        super().__init__()
        convs: list[QConv] = []
        self.ups: list[bool] = []
        up = False
        for layer in seq:
            if isinstance(layer, nn.Upsample):
                up = True
            elif isinstance(layer, nn.Conv2d):
                k, st, pad = layer.kernel_size[0], layer.stride[0], layer.padding[0]
                limbs = first_limbs if not convs else LIMBS
                convs.append(QConv(layer.in_channels, layer.out_channels, k, st, pad,
                                   [(layer.in_channels, limbs)], wlimbs=LIMBS))
                self.ups.append(up)
                up = False
            elif not isinstance(layer, nn.SiLU):
                raise ValueError(f"no exact counterpart for {type(layer).__name__} in a conv stack")
        *body, head = convs
        self.convs = nn.ModuleList(body)
        self.acts = nn.ModuleList([QAct(c.bias.numel(), LIMBS) for c in body])
        self.head = head

    @torch.no_grad()
    def calibrate(self, seq: nn.Sequential, x: Tensor, in_scale: float) -> None:
        convs = [m for m in seq if isinstance(m, nn.Conv2d)]
        scale = torch.full((convs[0].in_channels,), in_scale, dtype=torch.float64)
        for qc, qa, fc, up in zip(self.convs, self.acts, convs, self.ups):
            if up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            qc.quantize(fc, scale)
            x = qa.calibrate(fc(x))
            scale = qa.out_scale
        self.head.quantize(convs[-1], scale)

    def forward(self, q: Tensor) -> Tensor:
        for qc, qa, up in zip(self.convs, self.acts, self.ups):
            if up:
                q = F.interpolate(q, scale_factor=2, mode="nearest")
            q = qa(qc(q), qc)
        return self.head.real(self.head(q))


def _layout(make: Callable[[], _M]) -> _M:
    """A float module's layout, without weights."""
    with torch.device("meta"):
        return make()


class QLatentEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = _QStack(_layout(lambda: LatentEncoder(cfg)).net, first_limbs=1)
        self.std_min = cfg.latent_std_min

    def calibrate(self, enc: LatentEncoder, x_unit: Tensor) -> None:
        self.net.calibrate(enc.net, x_unit, 2.0 ** -PIXEL_BITS)

    def forward(self, x_unit: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of q(c | x) (float64) for x in [-1, 1] (bin centres: exact)."""
        q = torch.round(x_unit.double() * float(1 << PIXEL_BITS)).float()  # one limb
        mean, raw = self.net(q).chunk(2, dim=1)
        return mean, em.softplus(raw) + self.std_min


def _on_grid(x: Tensor, bits: int) -> Tensor:
    """x on the 2^-bits grid, as two-limb integers (clamped)."""
    return torch.round(x.double() * float(1 << bits)).clamp_(-limb_max(2), limb_max(2)).float()


class QScheduleNet(nn.Module):
    """`schedule.ScheduleNet` on integers: its conv stacks derived from the float ones; the
    context branch's features are exact already (`schedule.context_features`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.channels
        self.conditional = cfg.schedule == "mulan" and cfg.latent_channels > 0
        self.context_net = None
        if self.conditional:
            if cfg.schedule_head != "conv":
                raise ValueError("the dense schedule head has no integer version (use conv)")
            layout = _layout(lambda: ScheduleNet(cfg))
            self.net = _QStack(layout.net)
            if layout.context_net is not None:
                self.context_net = _QStack(layout.context_net)
        elif cfg.schedule in ("mulan", "scalar"):
            self.register_buffer("coef", torch.zeros(3, C if cfg.schedule == "mulan" else 1,
                                                     dtype=torch.float64))
        if cfg.learned_ends:
            self.register_buffer("ends", torch.zeros(2, dtype=torch.float64))
        if cfg.schedule_phase:  # on the 2^-PHASE_BITS grid: exact to add in float64
            P = cfg.schedule_phase
            self.register_buffer("phase", torch.zeros(3 * C, P, P, dtype=torch.float64))

    def _features(self, ctx: Tensor | None, cells: tuple[int, ...], device: torch.device) -> Tensor:
        """The context branch's input: `context_features` (float32; zeros without context)."""
        f, m = self.cfg.latent_factor, self.cfg.context // self.cfg.latent_factor
        if ctx is None:
            H, W = ((n + 2 * m) * f for n in cells)
            ctx = torch.zeros(1, 4, H, W, device=device)
        return context_features(ctx.float(), f)

    def _crop(self, maps: Tensor) -> Tensor:
        m = self.cfg.context // self.cfg.latent_factor
        return maps[:, :, m:maps.shape[2] - m, m:maps.shape[3] - m]

    @torch.no_grad()
    def calibrate(self, net: ScheduleNet, c: Tensor | None, ctx: Tensor | None = None) -> None:
        if self.conditional:
            assert c is not None
            if self.context_net is not None:
                feats = self._features(ctx, tuple(c.shape[2:]), c.device)
                self.context_net.calibrate(net.context_net, feats, 2.0 ** -FEATURE_BITS)
                extra = self._crop(net.context_net(feats)).expand(c.shape[0], -1, -1, -1)
                c = torch.cat([c, extra.to(c.dtype)], dim=1)
            self.net.calibrate(net.net, c, 2.0 ** -LATENT_BITS)
        elif self.cfg.schedule in ("mulan", "scalar"):
            self.coef.copy_(net.coef.detach().double())
        if self.cfg.learned_ends:
            self.ends.copy_(net.ends.detach().double())
        if self.cfg.schedule_phase:
            self.phase.copy_(torch.round(net.phase.detach().double() * 2.0 ** PHASE_BITS) / 2.0 ** PHASE_BITS)

    def end_points(self) -> tuple[float | Tensor, float | Tensor]:
        if not self.cfg.learned_ends:
            return self.cfg.gamma_min, self.cfg.gamma_max
        return self.ends[0], self.ends[0] + em.exp(self.ends[1])

    def forward(self, c: Tensor | None, device: torch.device, ctx: Tensor | None = None) -> Schedule:
        """The schedule (float64, on `device`) for latents c (and the context ctx)."""
        if self.conditional:
            assert c is not None
            q = _on_grid(c, LATENT_BITS)
            if self.context_net is not None:
                feats = self._features(ctx, tuple(c.shape[2:]), c.device)
                extra = self._crop(self.context_net(_on_grid(feats, FEATURE_BITS)))
                q = torch.cat([q, _on_grid(extra, LATENT_BITS).expand(q.shape[0], -1, -1, -1)], dim=1)
            coef = self.net(q)
            if self.cfg.schedule_phase:
                if self.phase.abs().max() > 2.0 ** 20 or (self.phase * 2.0 ** PHASE_BITS).frac().any():
                    raise ValueError("schedule phase offsets off their grid")
                coef = coef + tiled_phase(self.phase, coef.shape[2], coef.shape[3])
            a, b, d = coef.chunk(3, dim=1)
        elif self.cfg.schedule == "linear":
            a = b = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
            d = a + 1.0
        else:
            a, b, d = (p.reshape(1, -1, 1, 1) for p in self.coef)
        g0, g1 = (g.to(device) if isinstance(g, Tensor) else g for g in self.end_points())
        return Schedule(a.to(device), b.to(device), d.to(device), g0, g1, self.cfg.schedule_eps)
