"""Named model and training configurations, as plain data.

A config is everything needed to rebuild a model (``ModelConfig``) and to train
it (``TrainConfig``). Both round-trip through JSON so a checkpoint carries its
own recipe.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _fields(cls: type, d: dict[str, Any], what: str, tuples: tuple[str, ...]) -> dict[str, Any]:
    """A config's fields from JSON: unknown names refused, JSON lists back to tuples."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} config fields: {sorted(unknown)}")
    return {k: tuple(v) if k in tuples else v for k, v in d.items()}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a MuLAN model; every field changes the weights' meaning."""

    channels: int = 3
    tile: int = 32  # training tile size; the nets run on any multiple of `multiple_of()`
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    # schedule: "mulan" (per-subpixel, conditioned on c), "scalar" (learned, shared), "linear"
    schedule: str = "mulan"
    schedule_width: int = 32
    # map from c to the coefficient maps: "conv" (small upsampling decoder, any tile size)
    # or "dense" (the paper's style: flatten c, two dense layers; fixed tile size)
    schedule_head: str = "conv"
    schedule_dense_width: int = 1024
    schedule_eps: float = 1e-4  # f(t) += eps * t keeps the schedule strictly increasing
    # auxiliary latent c: `latent_channels` x (H/f) x (W/f) Gaussian; 0 disables it
    latent_channels: int = 4
    latent_factor: int = 8
    latent_width: int = 32
    latent_std_min: float = 0.02
    # denoiser U-Net
    width: int = 32
    mults: tuple[int, ...] = (1, 2, 2)
    blocks: int = 2
    attn_res: tuple[int, ...] = (8,)  # resolutions (for a 32-pixel tile) with attention
    dropout: float = 0.0
    fourier_powers: tuple[int, ...] = (6, 7)
    # context: the denoiser also sees a margin of this many pixels around the tile, with
    # the pixels the decoder already has there (and a mask of which those are); 0 = none
    context: int = 0
    # the reverse steps' variance: q's posterior variance ("fixed"), or widened by the
    # denoiser's predicted squared error of eps-hat ("learned"; `mulan.reverse_step`)
    reverse_variance: str = "fixed"
    # learn the schedule's end points gamma(0), gamma(1) (else fixed at gamma_min, gamma_max)
    learned_ends: bool = False
    # residual blocks added at the window's full resolution after the U-Net's up path:
    # capacity where the bits are (80% of them at noise std below 2.5 grey levels)
    full_blocks: int = 0
    # the schedule also sees the context (pixels the decoder has around the tile), so
    # smooth and busy regions get their own schedules at no cost in bits
    schedule_context: bool = False
    # learned offsets of the schedule's coefficient maps by a pixel's position modulo this
    # period (0: none): a spatial reveal order (say, one pixel in four less noisy at each t,
    # its neighbours then predicted from it), which a schedule computed from the latent by
    # convolutions cannot make while the latent carries nothing
    schedule_phase: int = 0
    # p(x | z_0): "vdm" (a pixel-grid Gaussian at z_0 / alpha_0, VDM's) or "denoiser" (the
    # same Gaussian at the denoiser's x-hat(z_0), as wide as its predicted error): the
    # denoiser's lets the chain stop at a noise std near half a grey level, where VDM's
    # decoder pays more than the steps below it (`mulan.decoder_params`)
    decoder: str = "vdm"

    @property
    def learned_variance(self) -> bool:
        return self.reverse_variance == "learned"

    def window(self, tile: int) -> int:
        """Side of the window the denoiser runs on for a tile of side `tile`."""
        return tile + 2 * self.context

    def multiple_of(self) -> int:
        """Tile sides must be a multiple of this for the nets to run."""
        down = 2 ** (len(self.mults) - 1)
        return max(down, self.latent_factor if self.latent_channels else 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        cfg = cls(**_fields(cls, d, "model", ("mults", "attn_res", "fourier_powers")))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        ints = {"channels": (3, 3), "tile": (1, 1024), "schedule_width": (1, 4096),
                "schedule_dense_width": (1, 1 << 16), "latent_channels": (0, 256),
                "latent_factor": (1, 256), "latent_width": (1, 4096), "width": (1, 4096),
                "blocks": (1, 64), "context": (0, 256), "full_blocks": (0, 64), "schedule_phase": (0, 16)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], not {v!r}")
        for name in ("gamma_min", "gamma_max", "schedule_eps", "latent_std_min", "dropout"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or abs(v) > 1e6:
                raise ValueError(f"{name} must be a finite number, not {v!r}")
        for name in ("mults", "attn_res", "fourier_powers"):
            v = getattr(self, name)
            if not all(isinstance(e, int) and not isinstance(e, bool) and 0 <= e <= 4096 for e in v):
                raise ValueError(f"{name} must hold small non-negative integers, not {v!r}")
        if not 1 <= len(self.mults) <= 8 or min(self.mults) < 1:
            raise ValueError("mults must hold 1 to 8 positive integers")
        if not self.schedule_eps > 0 or not self.latent_std_min > 0:
            raise ValueError("schedule_eps and latent_std_min must be positive")
        if self.schedule_head not in ("conv", "dense"):
            raise ValueError(f"schedule_head must be conv or dense, not {self.schedule_head!r}")
        if self.reverse_variance not in ("fixed", "learned"):
            raise ValueError(f"reverse_variance must be fixed or learned, not {self.reverse_variance!r}")
        for name in ("learned_ends", "schedule_context"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.schedule_context and not (self.context and self.schedule == "mulan"
                                          and self.latent_channels and self.schedule_head == "conv"):
            raise ValueError("schedule_context needs a context margin and the conv mulan schedule")
        if self.schedule_phase and not (self.schedule == "mulan" and self.latent_channels
                                        and self.schedule_head == "conv"
                                        and self.tile % self.schedule_phase == 0):
            raise ValueError("schedule_phase needs the conv mulan schedule and a tile that is a "
                             "multiple of it")
        if self.decoder not in ("vdm", "denoiser"):
            raise ValueError(f"decoder must be vdm or denoiser, not {self.decoder!r}")
        if self.decoder == "denoiser" and not self.learned_variance:
            raise ValueError("the denoiser decoder needs learned reverse variances (its width)")
        if self.schedule not in ("mulan", "scalar", "linear"):
            raise ValueError(f"schedule must be mulan, scalar or linear, not {self.schedule!r}")
        if not self.gamma_min < self.gamma_max:
            raise ValueError("gamma_min must be below gamma_max")
        if self.latent_channels < 0 or self.latent_factor < 1:
            raise ValueError("bad latent shape")
        if self.latent_factor & (self.latent_factor - 1):
            raise ValueError("latent_factor must be a power of two")
        if self.context % self.multiple_of():
            raise ValueError(f"context margin {self.context} is not a multiple of {self.multiple_of()}")
        if self.tile % self.multiple_of():
            raise ValueError(f"tile {self.tile} is not a multiple of {self.multiple_of()}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe; changing it never changes how a model is evaluated."""

    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    # a cosine anneal of the learning rate from lr at step anneal_start down to lr *
    # anneal_final over anneal_steps steps, then held there (0 steps: a constant lr). A
    # standing job that resumes across sessions can set it on its config.json to settle
    anneal_start: int = 0
    anneal_steps: int = 0
    anneal_final: float = 0.1
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.99)
    ema_decay: float = 0.999
    # the EMA's decay at step s is min(ema_decay, (1 + s) / (ema_warmup + s)): 10 lets a
    # run from random weights forget them fast; 1 gives ema_decay from the first step, for
    # a warm start (`--init`) whose first weights are already good and worth averaging
    ema_warmup: int = 10
    grad_clip: float = 1.0  # 0 disables clipping
    flip: bool = True
    # a random quarter turn of each training crop as well (`RandomCrops`): off by default, so
    # old runs resume with the same batches
    rotate: bool = False
    loss_steps: int = 0  # 0: continuous-time diffusion loss; T > 0: discrete-time loss at T
    # train on the discrete-time loss at each of these T in turn (step k uses entry k mod n),
    # so one model serves them all; loss_steps is then the T evaluations report
    loss_steps_mix: tuple[int, ...] = ()
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    eval_images: int = 500
    checkpoint_minutes: float = 5.0
    # quantisation-aware: train under the rounding of the integer model (`qat`, `quantize`)
    quantize: bool = False
    # the learning rate of the schedule's learned end points, as a multiple of lr (0: lr
    # itself). Adam moves a parameter about lr a step whatever its gradient, so at lr 1e-4
    # gamma(0) would take 10,000 steps to move by 1: a new decoder needs it to move
    ends_lr_scale: float = 0.0
    # the share of each batch the reconstruction term is estimated from (unbiasedly:
    # `AntitheticDraws`). With a "denoiser" decoder every row it covers costs a second
    # network call, so 0.5 makes a step about a quarter cheaper for a little more noise
    recon_fraction: float = 1.0

    def __post_init__(self) -> None:
        # checked here, not where a new run starts: a resumed run's edited config.json too
        if not isinstance(self.ema_warmup, int) or self.ema_warmup < 1:
            raise ValueError(f"train.ema_warmup must be an integer of at least 1, "
                             f"not {self.ema_warmup!r}")
        if not 0.0 <= self.ends_lr_scale <= 1e4:
            raise ValueError(f"train.ends_lr_scale must be in [0, 1e4], not {self.ends_lr_scale!r}")
        if not 0.0 < self.recon_fraction <= 1.0:
            raise ValueError(f"train.recon_fraction must be in (0, 1], not {self.recon_fraction!r}")
        if self.anneal_start < 0 or self.anneal_steps < 0 or not 0.0 < self.anneal_final <= 1.0:
            raise ValueError("train.anneal_start and anneal_steps must be at least 0 and anneal_final "
                             f"in (0, 1], not {self.anneal_start}, {self.anneal_steps}, {self.anneal_final}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**_fields(cls, d, "train", ("adam_betas", "loss_steps_mix")))

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` before warmup: lr, annealed (`anneal_*`)."""
        if not self.anneal_steps or step <= self.anneal_start:
            return self.lr
        u = min(1.0, (step - self.anneal_start) / self.anneal_steps)
        cos = 0.5 * (1.0 + math.cos(math.pi * u))
        return self.lr * (self.anneal_final + (1.0 - self.anneal_final) * cos)

    def steps_at(self, step: int) -> int:
        """The T of training step `step`'s loss (0: continuous time)."""
        mix = self.loss_steps_mix
        return mix[step % len(mix)] if mix else self.loss_steps


@dataclass(frozen=True)
class Config:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return cls(
            name=str(d.get("name", "custom")),
            model=ModelConfig.from_dict(d.get("model", {})),
            train=TrainConfig.from_dict(d.get("train", {})),
        )


def _tiny_model(**kw: Any) -> ModelConfig:
    """A model that trains and codes on a CPU in seconds (tests)."""
    base = dict(tile=16, width=8, mults=(1, 2), blocks=1, attn_res=(), schedule_width=8,
                latent_channels=2, latent_factor=8, latent_width=8, fourier_powers=(7,))
    base.update(kw)
    return ModelConfig(**base)


_TINY_TRAIN = TrainConfig(batch_size=16, lr=2e-3, warmup_steps=5, ema_decay=0.9, log_every=5,
                          eval_every=20, eval_images=32, checkpoint_minutes=1.0)

CONFIGS: dict[str, Config] = {
    # Tests and smoke runs: trains on a CPU in seconds.
    "tiny": Config("tiny", _tiny_model(), _TINY_TRAIN),
    # The three ablations of the issue, at tiny size.
    "tiny-scalar": Config("tiny-scalar", _tiny_model(schedule="scalar"), _TINY_TRAIN),
    "tiny-nolatent": Config("tiny-nolatent", _tiny_model(latent_channels=0), _TINY_TRAIN),
    "tiny-context": Config("tiny-context", _tiny_model(context=8), _TINY_TRAIN),
    "tiny-lv": Config("tiny-lv", _tiny_model(context=8, reverse_variance="learned", learned_ends=True),
                      dataclasses.replace(_TINY_TRAIN, loss_steps=10, loss_steps_mix=(5, 10))),
    # A layout no shipped model uses (three levels with multipliers 1, 3, 2, two blocks per
    # level, attention at the middle level, a full-resolution block, a context-reading
    # schedule): its integer model must come from the float one with no new code.
    "tiny-unusual": Config("tiny-unusual", _tiny_model(
        mults=(1, 3, 2), blocks=2, attn_res=(8,), context=8, full_blocks=1, schedule_context=True,
        reverse_variance="learned", learned_ends=True),
        dataclasses.replace(_TINY_TRAIN, loss_steps=10, loss_steps_mix=(5, 10))),
    # tiny-lv with the denoiser's p(x | z_0) (`ModelConfig.decoder`)
    "tiny-dec": Config("tiny-dec", _tiny_model(context=8, reverse_variance="learned", learned_ends=True,
                                               decoder="denoiser"),
                       dataclasses.replace(_TINY_TRAIN, loss_steps=10, loss_steps_mix=(5, 10))),
    # tiny-dec with a spatial reveal order (`ModelConfig.schedule_phase`)
    "tiny-phase": Config("tiny-phase", _tiny_model(context=8, reverse_variance="learned", learned_ends=True,
                                                   decoder="denoiser", schedule_phase=2),
                         dataclasses.replace(_TINY_TRAIN, loss_steps=10, loss_steps_mix=(5, 10))),
    "tiny-linear": Config("tiny-linear", _tiny_model(schedule="linear", latent_channels=0), _TINY_TRAIN),
    # The ablations at 32x32 and CPU scale, trained for equal steps (runs compared in the model issue's closing note).
    **{f"mini{suffix}": Config(f"mini{suffix}", ModelConfig(
        width=16, mults=(1, 2), blocks=1, attn_res=(), schedule_width=16, latent_width=16, **kw),
        TrainConfig(batch_size=32, lr=2e-3, warmup_steps=100, ema_decay=0.998, log_every=25,
                    eval_every=10 ** 9, eval_images=0))
       for suffix, kw in [("", {}), ("-dense", {"schedule_head": "dense"}),
                          ("-scalar", {"schedule": "scalar"}), ("-nolatent", {"latent_channels": 0}),
                          ("-linear", {"schedule": "linear", "latent_channels": 0})]},
    # CPU-trainable and CPU-codable: the interim shipped model when no GPU is lent.
    "small": Config(
        "small",
        ModelConfig(width=32, mults=(1, 2, 2), blocks=1, attn_res=(8,), latent_channels=4,
                    schedule_width=16, latent_width=16),
        TrainConfig(batch_size=32, lr=1e-3, warmup_steps=200, ema_decay=0.999, log_every=25,
                    eval_every=500, eval_images=500),
    ),
    # The CIFAR-10 model (`small`) trained for the T the codec runs, as `photo-lv` below
    # (warm-started from the shipped cifar10 weights).
    "cifar10-lv": Config(
        "cifar10-lv",
        ModelConfig(width=32, mults=(1, 2, 2), blocks=1, attn_res=(8,), latent_channels=4,
                    schedule_width=16, latent_width=16, reverse_variance="learned", learned_ends=True),
        TrainConfig(batch_size=32, lr=3e-4, warmup_steps=100, ema_decay=0.998, log_every=25,
                    eval_every=500, eval_images=500, loss_steps=50, loss_steps_mix=(25, 50, 100)),
    ),
    # Photographs (the default model): the CPU-trained `small` net on 64x64 tiles with an
    # 8-pixel context margin, warm-started from the CIFAR-10 model (train --init).
    "photo": Config(
        "photo",
        ModelConfig(tile=64, context=8, width=32, mults=(1, 2, 2), blocks=1, attn_res=(16,),
                    latent_channels=4, schedule_width=16, latent_width=16),
        TrainConfig(batch_size=12, lr=5e-4, warmup_steps=100, ema_decay=0.998, log_every=25,
                    eval_every=250, eval_images=14, loss_steps=100),
    ),
    # The photo model trained for the T the codec runs: learned reverse variances and end
    # points, the discrete-time loss at T = 25, 50 and 100 in turn (warm-started from `photo`).
    "photo-lv": Config(
        "photo-lv",
        ModelConfig(tile=64, context=8, width=32, mults=(1, 2, 2), blocks=1, attn_res=(16,),
                    latent_channels=4, schedule_width=16, latent_width=16,
                    reverse_variance="learned", learned_ends=True),
        TrainConfig(batch_size=12, lr=5e-4, warmup_steps=100, ema_decay=0.998, log_every=25,
                    eval_every=250, eval_images=14, loss_steps=50, loss_steps_mix=(25, 50, 100)),
    ),
    # Photo candidates of the architecture comparison (issue 23), each warm-started from
    # `photo` (train --init) and trained on photos + photos-more for the same CPU minutes:
    # "photo-base": `photo-lv` itself (today's net) with this recipe's evaluation;
    # "photo-full": plus residual blocks at the window's full resolution;
    # "photo-adapt": that net with a schedule that also reads the context.
    **{name: Config(name, ModelConfig(
        tile=64, context=8, width=32, mults=(1, 2, 2), blocks=1, attn_res=(16,),
        latent_channels=4, schedule_width=16, latent_width=16, reverse_variance="learned",
        learned_ends=True, full_blocks=full, schedule_context=adapt),
        TrainConfig(batch_size=12, lr=5e-4, warmup_steps=100, ema_decay=0.998, log_every=25,
                    eval_every=250, eval_images=20, loss_steps=50, loss_steps_mix=(25, 50, 100)))
       for name, full, adapt in [("photo-base", 0, False), ("photo-full", 3, False),
                                 ("photo-adapt", 3, True)]},
    # The same on a GPU: a width-128 U-Net, batch 64 of 64x64 tiles.
    "photo-gpu": Config(
        "photo-gpu",
        ModelConfig(tile=64, context=8, width=128, mults=(1, 2, 2), blocks=2, attn_res=(16,),
                    latent_channels=4, dropout=0.1),
        TrainConfig(batch_size=64, lr=5e-4, warmup_steps=200, ema_decay=0.9995, log_every=100,
                    eval_every=1000, eval_images=14, checkpoint_minutes=2.0),
    ),
    # GPU configs (downsampling U-Nets, cheap per step on a GPU).
    "base": Config(
        "base",
        ModelConfig(width=64, mults=(1, 2, 2), blocks=2, attn_res=(16,), latent_channels=4),
        TrainConfig(batch_size=128, lr=5e-4, warmup_steps=200, ema_decay=0.9995, log_every=100,
                    eval_every=1000, eval_images=2000),
    ),
    "large": Config(
        "large",
        ModelConfig(width=128, mults=(1, 2, 2), blocks=2, attn_res=(16,), latent_channels=4,
                    dropout=0.1),
        TrainConfig(batch_size=128, lr=5e-4, warmup_steps=200, ema_decay=0.9999, log_every=100,
                    eval_every=1000, eval_images=2000),
    ),
}


def load_config(name_or_path: str) -> Config:
    """A named config, or a JSON file with the same shape as ``Config.to_dict()``."""
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path]
    p = Path(name_or_path)
    if not p.is_file():
        raise ValueError(f"no config named {name_or_path!r} (known: {', '.join(CONFIGS)}) "
                         "and no such JSON file")
    return Config.from_dict(json.loads(p.read_text()))
