"""Which parameters an image's adaptation changes, and where each lives in the integer model.

An adapted file stores deltas for one named subset of the float model's parameters
(`SUBSETS`): GroupNorm affines and biases, the parameters the integer model keeps in
float64 (`QNorm.gamma`/`beta`, `QConv.bias`, `WideLinear.bias`), so that adding a
delta there is one float64 addition, the same on every machine. Subset 3 adds a rank-1
change to each full-resolution convolution's weights: two factors, an
output vector B and an input vector A, whose integer outer product is added to the
integer weights (`deltas.apply`), again the same on every machine. The tensors of a
subset, their order and their sizes follow from the model's config alone
(`adapt_tensors`), so a file names the subset, never the tensors.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..coding.container import LOWRANK_SUBSETS  # the subsets with factor pairs (a fourth step)
from ..model.configs import ModelConfig
from ..model.mulan import MuLAN

# Subset ids as files store them. 0: every GroupNorm affine and every bias of the model
# (the latent encoder, the schedule net and the denoiser); 1: the denoiser's alone;
# 2: the denoiser's up path, its full-resolution blocks and output (norms and biases);
# 3: subset 2 and a rank-1 factor pair for each 3x3 convolution of the full-resolution blocks.
SUBSET_ALL, SUBSET_DENOISER, SUBSET_UP, SUBSET_UP_LOWRANK = 0, 1, 2, 3
SUBSET_NAMES = {SUBSET_ALL: "norms+biases", SUBSET_DENOISER: "denoiser norms+biases",
                SUBSET_UP: "up-path norms+biases",
                SUBSET_UP_LOWRANK: "up-path norms+biases, rank-1 full-resolution convolutions"}
_UP = ("denoiser.up.", "denoiser.full.", "denoiser.norm_out.", "denoiser.conv_out.")
_SUBSET_TEST: dict[int, Callable[[str], bool]] = {
    SUBSET_ALL: lambda n: True,
    SUBSET_DENOISER: lambda n: n.startswith("denoiser."),
    SUBSET_UP: lambda n: n.startswith(_UP),
    SUBSET_UP_LOWRANK: lambda n: n.startswith(_UP),
}
assert LOWRANK_SUBSETS == (SUBSET_UP_LOWRANK,)
FACTORS = ("B", "A")  # a pair's order in files: B (one value per output), A (per input and tap)


@dataclass(frozen=True)
class AdaptTensor:
    """One adapted tensor: its float model name, its integer model buffer, its size. A
    low-rank factor (`factor` "B" or "A") names its convolution's weight in both models."""

    float_name: str
    int_name: str
    numel: int
    factor: str = ""


def _seq_name(prefix: str, seq: nn.Sequential, index: int) -> str:
    """A float conv stack's layer `index` as the integer stack (`intaux._QStack`) names it."""
    convs = [i for i, layer in enumerate(seq) if isinstance(layer, nn.Conv2d)]
    k = convs.index(index)
    return f"{prefix}.head" if k == len(convs) - 1 else f"{prefix}.convs.{k}"


def _denoiser_name(model: MuLAN, parts: list[str]) -> str:
    """A denoiser module's name in `intunet.QUNet`."""
    head = parts[0]
    if head == "temb":
        return f"denoiser.temb{parts[1]}"
    if head == "conv_in":
        return "denoiser.conv_in.conv"
    if head in ("down", "mid", "up", "full"):
        blk = getattr(model.denoiser, head)
        if head in ("down", "up"):
            blk = blk[int(parts[1])]
            layer_at, prefix = 2, f"denoiser.{head}.{parts[1]}"
        else:
            layer_at, prefix = 1, f"denoiser.{head}"
        layers = list(blk)
        i = int(parts[layer_at])
        if isinstance(layers[0], nn.Upsample):  # nearest 2x then a conv: one QStage
            return f"{prefix}.0.conv"
        if isinstance(layers[i], nn.Conv2d):  # a strided (downsampling) conv
            return f"{prefix}.{i}.conv"
        return ".".join([prefix, str(i), *parts[layer_at + 1:]])
    return ".".join(["denoiser", *parts])


def int_module_name(model: MuLAN, name: str) -> str:
    """The integer model's module that computes float module `name`."""
    parts = name.split(".")
    if parts[0] in ("encoder", "schedule_net") and parts[1] in ("net", "context_net") and len(parts) == 3:
        seq = getattr(getattr(model, parts[0]), parts[1])
        return _seq_name(f"{parts[0]}.{parts[1]}", seq, int(parts[2]))
    if parts[0] == "denoiser":
        return _denoiser_name(model, parts[1:])
    raise ValueError(f"no integer counterpart known for {name}")


def _candidates(model: MuLAN) -> list[tuple[str, str]]:
    """(float parameter, integer buffer) of every GroupNorm affine and bias, in module order."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.GroupNorm) and mod.affine:
            q = int_module_name(model, name)
            out += [(f"{name}.weight", f"{q}.gamma"), (f"{name}.bias", f"{q}.beta")]
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
            out.append((f"{name}.bias", f"{int_module_name(model, name)}.bias"))
    return out


def lowrank_convs(model: MuLAN) -> list[str]:
    """The float convolutions a low-rank subset changes: each full-resolution block's 3x3s."""
    return [f"denoiser.full.{b}.{c}" for b in range(len(getattr(model.denoiser, "full", ())))
            for c in ("conv1", "conv2")]


def _factor_tensors(model: MuLAN, qm: nn.Module) -> list[AdaptTensor]:
    from ..exact.intops import QConv

    fmods, imods = dict(model.named_modules()), dict(qm.named_modules())
    out = []
    for name in lowrank_convs(model):
        conv, qname = fmods[name], int_module_name(model, name)
        q = imods.get(qname)
        if not isinstance(q, QConv) or q.wlimbs != 1 or len(q.groups) != 1 \
                or q.weight.shape != conv.weight.shape:
            raise ValueError(f"{name}: the integer model has no one-limb {qname} of its shape")
        cout, fan_in = conv.weight.shape[0], conv.weight[0].numel()
        out += [AdaptTensor(f"{name}.weight", f"{qname}.weight", cout, "B"),  # rank 1: one pair
                AdaptTensor(f"{name}.weight", f"{qname}.weight", fan_in, "A")]
    return out


@functools.lru_cache(maxsize=64)
def _tensors(config_json: str, subset: int) -> tuple[AdaptTensor, ...]:
    from ..exact.integer import IntegerMuLAN

    cfg = ModelConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model, qm = MuLAN(cfg), IntegerMuLAN(cfg)
    fparams, ibuffers = dict(model.named_parameters()), dict(qm.named_buffers())
    out = []
    for fname, iname in _candidates(model):
        if not _SUBSET_TEST[subset](fname):
            continue
        if iname not in ibuffers or ibuffers[iname].shape != fparams[fname].shape \
                or ibuffers[iname].dtype != torch.float64:
            raise ValueError(f"{fname}: the integer model has no float64 {iname} of its shape")
        out.append(AdaptTensor(fname, iname, fparams[fname].numel()))
    if subset in LOWRANK_SUBSETS:
        factors = _factor_tensors(model, qm)
        if not factors:
            raise ValueError(f"{SUBSET_NAMES[subset]}: the model has no full-resolution convolutions")
        out += factors
    return tuple(out)


def adapt_tensors(cfg: ModelConfig, subset: int) -> tuple[AdaptTensor, ...]:
    """The tensors of `subset` for a model of this config, in the order files store them."""
    if subset not in SUBSET_NAMES:
        raise ValueError(f"unknown adaptation subset {subset}")
    return _tensors(json.dumps(cfg.to_dict(), sort_keys=True), subset)
