"""Quantisation-aware training: the float denoiser trained under the integer model's rounding.

`attach` makes every convolution of a model's denoiser that the integer model
runs at one limb (all but the input convolution) see what it will see there:
its input rounded per channel to 511 levels over [min, max] (the SiLU outputs,
read by the ResBlocks' convolutions and the output convolution: integer scheme
2's zero points) or 255 levels of its largest magnitude (the one-limb copies of
the residual stream), and its weights to 255 levels per output channel.
Gradients pass the rounding unchanged (straight-through), so training
moves the float weights to where rounding them costs least; `quantize.quantize`
then makes the integer model from the result as from any float model. The
two-limb parts of the integer model (input convolution, latent encoder,
schedule net, residual stream) round finely enough to need nothing.

The hooks live in the modules' hook tables, so a deep copy (the EMA model) has
them too, and the state dict (what is saved) is the plain float model's.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model.mulan import MuLAN
from .intops import LIMB_MAX, zero_point_grid


def fake_quant(x: Tensor, dims: tuple[int, ...], zero_point: bool = False) -> Tensor:
    """x rounded to 255 levels of its largest magnitude over `dims` (with `zero_point`: to
    the grid of 2 x 255 steps over [min, max], as `intops.Tables`), gradient passed through."""
    with torch.no_grad():
        if zero_point:
            scale, zero = zero_point_grid(x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True),
                                          LIMB_MAX)
            q = (torch.round(x / scale) + zero).clamp(-LIMB_MAX, LIMB_MAX).sub(zero) * scale
        else:
            scale = x.abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / LIMB_MAX
            q = torch.round(x / scale) * scale
    return x + (q - x).detach()


def _before(conv: nn.Conv2d, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    conv._qat_float = conv.weight.data  # type: ignore[assignment]
    with torch.no_grad():
        conv.weight.data = fake_quant(conv.weight.data, (1, 2, 3))
    return (fake_quant(inputs[0], (0, 2, 3), conv._qat_zero_point),) + inputs[1:]  # type: ignore[arg-type]


def _after(conv: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    conv.weight.data = conv._qat_float  # type: ignore[assignment]
    del conv._qat_float


def attach(model: MuLAN) -> list[torch.utils.hooks.RemovableHandle]:
    """Round the one-limb convolutions of model's denoiser as the integer model will; returns
    the hooks' handles (remove them to train or evaluate plainly again)."""
    handles = []
    for name, m in model.denoiser.named_modules():
        if isinstance(m, nn.Conv2d) and name != "conv_in":
            m._qat_zero_point = name == "conv_out" or name.endswith(("conv1", "conv2"))  # type: ignore[assignment]
            handles += [m.register_forward_pre_hook(_before), m.register_forward_hook(_after)]
    return handles
