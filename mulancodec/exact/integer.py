"""IntegerMuLAN: a MuLAN model whose every probability-deciding quantity is exact.

It offers the codec what `mulan.MuLAN` does (latent posterior, schedule,
denoiser), computed by the integer networks (`intunet`, `intaux`) and, for
the chain's Gaussians, `exactmath.EXACT`: the same float64 results on any
machine, thread count, backend or batch composition. So a file it codes
(format version 3) decodes anywhere. It is made from a float model by
`quantize.quantize` (post-training, or after quantisation-aware fine-tuning)
and stored as a safetensors file of its own (`weights.save_integer_model`).

The networks run on the model's device; inputs come from and results go back to
the caller's (the codec keeps its chain arithmetic on the CPU).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model.configs import ModelConfig
from ..model.schedule import Schedule
from .exactmath import EXACT
from .intaux import QLatentEncoder, QScheduleNet
from .intops import exact_kernels, tensor_like
from .intunet import QUNet

# The integer schemes (grids, limbs, tables): a model file stores its own and loads into
# that scheme's code. 1: SiLU outputs on grids symmetric about 0; 2 (what `quantize`
# makes): the grids that the 3x3 convolutions read span [min, max] (zero points).
SCHEMES = (1, 2)
SCHEME = 2


class IntegerMuLAN(nn.Module):
    elementary = EXACT

    def __init__(self, cfg: ModelConfig, scheme: int = SCHEME) -> None:
        super().__init__()
        cfg.validate()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown integer scheme {scheme}")
        self.cfg, self.scheme = cfg, scheme
        self.encoder = QLatentEncoder(cfg) if cfg.latent_channels else None
        self.schedule_net = QScheduleNet(cfg)
        self.denoiser = QUNet(cfg, zero_point=scheme >= 2)
        self.chunk: int | None = None  # tiles per network call (the results do not depend on it)

    @property
    def device(self) -> torch.device:
        return self.denoiser.conv_out.weight.device

    def prepare(self) -> "IntegerMuLAN":
        """Build the derived tables (after calibration or loading)."""
        for m in self.modules():
            if m is not self and hasattr(m, "prepare"):
                m.prepare()
        return self

    def latent_posterior(self, x_unit: Tensor) -> tuple[Tensor, Tensor] | None:
        """q(c | x) as (mean, std), float64, or None for a model without a latent."""
        if self.encoder is None:
            return None
        with exact_kernels():
            mean, std = self.encoder(x_unit.to(self.device))
        return mean.to(x_unit.device), std.to(x_unit.device)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.cfg.latent_factor
        return self.cfg.latent_channels, height // f, width // f

    def schedule(self, c: Tensor | None, like: Tensor, ctx: Tensor | None = None) -> Schedule:
        """The schedule (float64, on like's device) for latents c (and the context ctx)."""
        dev = self.device
        with exact_kernels():
            return self.schedule_net(None if c is None else c.to(dev), like.device,
                                     None if ctx is None else ctx.to(dev))

    def gamma_norm(self, gamma: Tensor) -> Tensor:
        g = gamma.double()
        return (g - self.cfg.gamma_min) / tensor_like(self.cfg.gamma_max - self.cfg.gamma_min, g)

    def denoise(self, z: Tensor, gamma: Tensor, c: Tensor | None,
                ctx: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(eps-hat, mse-hat) as `MuLAN.denoise`, float64, in chunks of `chunk` tiles."""
        step = self.chunk or z.shape[0]
        parts = [self._denoise(*(None if x is None else x[i:i + step] for x in (z, gamma, c, ctx)))
                 for i in range(0, z.shape[0], step)]
        eps = torch.cat([p[0] for p in parts])
        mse = None if parts[0][1] is None else torch.cat([p[1] for p in parts])  # type: ignore[misc]
        return eps, mse

    def _denoise(self, z: Tensor, gamma: Tensor, c: Tensor | None,
                 ctx: Tensor | None) -> tuple[Tensor, Tensor | None]:
        dev, home = self.device, z.device
        with exact_kernels():
            out = self.denoiser(z.to(dev), self.gamma_norm(gamma.to(dev)).expand_as(z),
                                None if c is None else c.to(dev), None if ctx is None else ctx.to(dev))
        out = out.to(home)
        if not self.cfg.learned_variance:
            return out, None
        eps_hat, raw = out.chunk(2, dim=1)
        return eps_hat, EXACT.sigmoid(raw)
