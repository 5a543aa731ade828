"""The auxiliary latent c: encoder q(c | x) and prior p(c) = N(0, I).

Both are plain diagonal Gaussians, so the codec can pop c from q and push it
with p on a shared grid, and the KL in the loss is exact (MuLAN's k-hot latent
has only a surrogate KL, which bits-back coding cannot use).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import ModelConfig


def std_normal_kl(m: Tensor, s: Tensor) -> Tensor:
    """KL(N(m, s^2) || N(0, 1)) elementwise, in nats."""
    return 0.5 * (m * m + s * s - 1) - torch.log(s)


class LatentEncoder(nn.Module):
    """q(c | x): a strided conv net from the tile to a (C_c, H/f, W/f) Gaussian."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E = cfg.latent_width
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, E, 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(cfg.latent_factor))):
            layers += [nn.Conv2d(E, E, 4, stride=2, padding=1), nn.SiLU()]
        head = nn.Conv2d(E, 2 * cfg.latent_channels, 1)
        nn.init.normal_(head.weight, std=1e-3)
        with torch.no_grad():  # start near the prior: mean 0, std 1
            head.bias.zero_()
            head.bias[cfg.latent_channels:] = math.log(math.e - 1)
        self.net = nn.Sequential(*layers, head)
        self.std_min = cfg.latent_std_min

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of q(c | x) for x in [-1, 1]."""
        mean, raw = self.net(x).float().chunk(2, dim=1)
        return mean, F.softplus(raw) + self.std_min
