"""Training: AdamW with warmup, EMA, checkpoints that resume exactly, DDP under torchrun.

Exact resume: every batch (crops, flips, context masks) is a pure function
of (seed, step, rank), and every step reseeds the random generators from
(seed, rank, step), so a run that is stopped and resumed draws the same
batches and noise as one that never stopped. Checkpoints hold the raw weights, the EMA weights (the model we ship)
and the optimizer state, all in safetensors; nothing is pickled.

Layout of an output directory:
  config.json            the full config (model + training recipe)
  model.safetensors      EMA weights with the model config embedded (loadable model)
  train/raw.safetensors  raw weights
  train/state.safetensors optimizer tensors
  train/state.json       step, data position, elapsed time, optimizer hyper-parameters
  log.jsonl              one JSON object per log line (train and eval)
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..exact import qat
from ..model.configs import Config, load_config
from ..model.mulan import MuLAN
from ..weights import load_model, save_model
from .data import RandomCrops, TileSet, batch_tensors, image_tiles, load_images
from .evaluate import evaluate


@dataclass
class TrainArgs:
    data: list[str]
    out: Path
    config: str | None = None
    max_steps: int | None = None
    minutes: float | None = None
    resume: bool = False
    eval_data: list[str] = field(default_factory=list)
    device: str | None = None
    compile: bool = False
    progress: bool = True
    compact: bool = False
    init: str | None = None  # start a new run from this model's weights (warm start)
    quantize: bool = False  # a new run trains quantisation-aware (TrainConfig.quantize)


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0  # training wall time summed over all runs


class _Stop:
    """Turns SIGINT/SIGTERM into a flag, so the loop can checkpoint before exiting."""

    def __init__(self) -> None:
        self.flag = False
        self.signum = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.flag = True
        self.signum = signum


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _atomic_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, sd["param_groups"]


def _load_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: Any) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        idx, k = name.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def _save_ema(folder: Path, cfg: Config, ema: MuLAN, st: TrainState,
              dtype: torch.dtype = torch.float32) -> str:
    """The EMA weights as a loadable model folder (model.safetensors with the step, and the
    run's config.json): a checkpoint's, and best/'s. Returns the model id."""
    _atomic_json(folder / "config.json", cfg.to_dict())
    return save_model(ema, folder / "model.safetensors", dtype=dtype,
                      extra={"step": str(st.step), "config_name": cfg.name,
                             "train_seconds": f"{st.seconds:.1f}"})


def save_checkpoint(out: Path, cfg: Config, model: MuLAN, ema: MuLAN, opt: torch.optim.Optimizer,
                    st: TrainState, compact: bool = False) -> None:
    """Write a checkpoint. `compact` stores weights in float16 and no optimizer state
    (a quarter of the size, for moving runs between machines; resuming from it
    restarts Adam's moments with a short warmup instead of continuing exactly)."""
    (out / "train").mkdir(parents=True, exist_ok=True)
    tag = {"step": str(st.step)}
    dtype = torch.float16 if compact else torch.float32
    _save_ema(out, cfg, ema, st, dtype)
    _atomic_safetensors(out / "train" / "raw.safetensors",
                        {k: v.to(dtype) for k, v in model.state_dict().items()}, tag)
    groups = None
    state_file = out / "train" / "state.safetensors"
    if compact:
        state_file.unlink(missing_ok=True)
    else:
        tensors, groups = _optim_tensors(opt)
        _atomic_safetensors(state_file, tensors, tag)
    _atomic_json(out / "train" / "state.json", {
        "step": st.step, "seconds": st.seconds, "param_groups": groups, "compact": compact,
    })


def load_checkpoint(out: Path, model: MuLAN, ema: MuLAN, opt: torch.optim.Optimizer,
                    device: torch.device) -> tuple[TrainState, bool]:
    """Restore a checkpoint; returns the state and whether the optimizer state was restored."""
    meta = json.loads((out / "train" / "state.json").read_text())
    from safetensors import safe_open

    exact = not meta.get("compact", False)
    files = ["train/raw.safetensors", "model.safetensors"]
    files += ["train/state.safetensors"] if exact else []
    for f in files:  # a crash in the middle of a save leaves files of two steps: refuse them
        with safe_open(str(out / f), framework="pt") as h:
            if (h.metadata() or {}).get("step") != str(meta["step"]):
                raise RuntimeError(f"checkpoint in {out} is inconsistent ({f} is from another step)")
    raw = load_file(str(out / "train" / "raw.safetensors"), device=str(device))
    model.load_state_dict({k: v.float() for k, v in raw.items()})
    with safe_open(str(out / "model.safetensors"), framework="pt") as h:
        ema.load_state_dict({k: h.get_tensor(k).to(device).float() for k in h.keys()})
    if exact:
        _load_optim(opt, load_file(str(out / "train" / "state.safetensors"), device=str(device)),
                    meta["param_groups"])
    return TrainState(meta["step"], meta["seconds"]), exact


def _lr(cfg: Config, step: int, since: int = 0) -> float:
    """The config's learning rate at `step` (`TrainConfig.lr_at`), with a linear warmup from
    `since` (0, or the step a compact checkpoint restarted Adam)."""
    return cfg.train.lr_at(step) * min(1.0, (step - since + 1) / max(1, cfg.train.warmup_steps))


def warm_start(model: MuLAN, path: str) -> str:
    """Copy a trained model's weights into `model` where they fit; returns its id.

    Tensors of the same shape are copied. The first convolution of a context model
    has more input channels than that of a model without context: the shared ones are
    copied and the context ones start at zero, so the new model starts out computing
    what the old one did on the tile alone. Likewise a learned-variance model's extra
    outputs, learned end points and schedule phase offsets start from their initial values.
    """
    lm = load_model(path)
    src = lm.model.state_dict()
    own = model.state_dict()
    with torch.no_grad():
        for name, t in own.items():
            s = src.get(name)
            if s is not None and s.shape == t.shape:
                t.copy_(s)
            elif s is not None and name.endswith(("conv_in.weight", "schedule_net.net.0.weight")) \
                    and s.shape[1] < t.shape[1] \
                    and s.shape[0] == t.shape[0] and s.shape[2:] == t.shape[2:]:
                t.zero_()
                t[:, :s.shape[1]] = s
            elif s is not None and name.startswith("denoiser.conv_out.") and s.shape[0] < t.shape[0] \
                    and s.shape[1:] == t.shape[1:]:
                t[:s.shape[0]] = s  # eps-hat's outputs; mse-hat's keep their initial values
            elif s is None and name == "schedule_net.ends":
                pass  # learned end points start at the config's (the source's fixed ones)
            elif s is None and name.startswith(("denoiser.full.", "schedule_net.context_net.")):
                pass  # added parts: zero residuals, or read through zero weights (above)
            elif s is None and name == "schedule_net.phase":
                pass  # `schedule_phase` offsets start at their initial values
            else:
                raise ValueError(f"--init {path}: {name} does not fit this config")
    return lm.model_id


def _device(args: TrainArgs) -> tuple[torch.device, int, int]:
    """The device, world size and rank; starts the process group under torchrun."""
    world, rank, local_rank = _dist_info()
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":  # training only: the codec pins its own numerics
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, world, rank


def _config(args: TrainArgs) -> Config:
    """The run's config: the saved one when resuming, else the named one."""
    saved = args.out / "config.json"
    if args.resume:
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {args.out}")
        cfg = Config.from_dict(json.loads(saved.read_text()))
        if args.config and load_config(args.config).model != cfg.model:
            raise ValueError(f"--config {args.config} differs from the model in {args.out}")
        return cfg
    if (args.out / "train" / "state.json").exists():
        raise FileExistsError(f"{args.out} already holds a run: pass --resume to continue it")
    cfg = load_config(args.config or "small")
    if args.quantize:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, quantize=True))
    if cfg.model.learned_variance and not (cfg.train.loss_steps and all(cfg.train.loss_steps_mix)):
        raise ValueError("a learned reverse variance is trained by the discrete-time loss only: "
                         "set loss_steps (and loss_steps_mix) above 0")
    return cfg


@dataclass
class _Run:
    """Everything the loop updates."""

    cfg: Config
    model: MuLAN
    ema: MuLAN
    opt: torch.optim.Optimizer
    st: TrainState
    warm_from: int = 0
    init_id: str | None = None


def _build(args: TrainArgs, cfg: Config, device: torch.device) -> _Run:
    """Model, EMA copy and optimizer, fresh, warm-started or restored from a checkpoint."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = MuLAN(cfg.model).to(device)
    init_id = warm_start(model, args.init) if args.init and not args.resume else None
    if tc.quantize:
        qat.attach(model)  # the EMA copy below gets the hooks too: it is evaluated quantised
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    ends = [p for n, p in model.named_parameters() if n == "schedule_net.ends"] if tc.ends_lr_scale else []
    decay = [p for p in model.parameters() if p.dim() > 1]
    other = [p for p in model.parameters() if p.dim() <= 1 and not any(p is e for e in ends)]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": other, "weight_decay": 0.0}]
    if ends:  # a group of its own only then, so the checkpoints of runs without it still load
        groups.append({"params": ends, "weight_decay": 0.0, "lr_scale": tc.ends_lr_scale})
    opt = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.adam_betas)
    run = _Run(cfg, model, ema, opt, TrainState(), init_id=init_id)
    if args.resume:
        run.st, exact = load_checkpoint(args.out, model, ema, opt, device)
        run.warm_from = 0 if exact else run.st.step
    args.out.mkdir(parents=True, exist_ok=True)
    return run


def _data(args: TrainArgs, cfg: Config) -> tuple[RandomCrops, TileSet | None]:
    """Random crops of the training images, and the fixed evaluation tiles."""
    m, tc = cfg.model, cfg.train
    crops = RandomCrops(load_images(args.data), m.tile, m.context, tc.seed, tc.flip, tc.rotate)
    ev = (image_tiles(load_images(args.eval_data), m.tile, m.context, tc.eval_images)
          if args.eval_data else None)
    return crops, ev


class _Log:
    """log.jsonl records, running sums of the loss terms, and a progress line or bar."""

    def __init__(self, out: Path, main: bool, args: TrainArgs, step: int) -> None:
        self.file = (out / "log.jsonl").open("a") if main else None
        self.bar = None
        if main and args.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=args.max_steps, initial=step, unit="step", dynamic_ncols=True)
        self.acc: dict[str, torch.Tensor] = {}
        self.n, self.t, self.step = 0, time.time(), step
        self.cpu0 = time.process_time()  # CPU time of this process: fair comparisons under load

    def write(self, rec: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def add(self, vals: dict[str, torch.Tensor]) -> None:
        """Running sums stay on the device: no host sync except when logging."""
        for k, v in vals.items():
            self.acc[k] = self.acc[k] + v if k in self.acc else v
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def flush(self, st: TrainState, lr: float) -> None:
        now = time.time()
        sps = (st.step - self.step) / max(1e-9, now - self.t)
        rec = {"kind": "train", "step": st.step, "seconds": round(st.seconds, 2),
               "cpu_seconds": round(time.process_time() - self.cpu0, 2), "lr": lr,
               "steps_per_s": round(sps, 3)}
        rec.update({k: round(float(v) / self.n, 5) for k, v in self.acc.items()})
        if not math.isfinite(rec["bpd"]):
            raise FloatingPointError(f"loss is not finite near step {st.step}")
        self.write(rec)
        if self.bar is not None:
            self.bar.set_postfix(bpd=f"{rec['bpd']:.3f}", lr=f"{lr:.1e}")
        elif self.file is not None:
            print(f"step {st.step} bpd {rec['bpd']:.4f} ({sps:.2f} steps/s)", file=sys.stderr)
        self.acc, self.n, self.t, self.step = {}, 0, now, st.step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()


def _step(run: _Run, net: Any, batch: TileSet, gen: torch.Generator, rank: int,
          device: torch.device, lr: float) -> dict[str, torch.Tensor]:
    """One optimizer step at learning rate `lr` on one batch, then the EMA update; returns
    the logged terms."""
    tc, st = run.cfg.train, run.st
    x, ctx = batch_tensors(batch, device)
    step_seed = (tc.seed * 1_000_003 + rank * 7_919 + st.step) % (2 ** 63)
    torch.manual_seed(step_seed)
    gen.manual_seed(step_seed)
    for g in run.opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    run.model.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        terms = net(x, tc.steps_at(st.step), gen, ctx, recon_fraction=tc.recon_fraction)
    loss = terms.total.mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(
        run.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
    run.opt.step()
    decay = min(tc.ema_decay, (1 + st.step) / (tc.ema_warmup + st.step))
    with torch.no_grad():
        for pe, pm in zip(run.ema.parameters(), run.model.parameters()):
            pe.lerp_(pm.detach(), 1 - decay)
        for be, bm in zip(run.ema.buffers(), run.model.buffers()):
            be.copy_(bm)
    vals = {"bpd": loss.detach(), "grad_norm": gnorm.detach()}
    for k in ("diffusion", "recon", "prior", "latent"):
        vals[k] = getattr(terms, k).detach().mean()
    return vals


def _eval(run: _Run, ev: TileSet, log: _Log, device: torch.device, out: Path) -> None:
    """EMA -ELBO on the evaluation tiles (model selection); the best EMA so far goes to out/best/."""
    tc, st = run.cfg.train, run.st
    res = evaluate(run.ema, ev, steps=tc.loss_steps, device=device, seed=1234)
    rec = {"kind": "eval", "step": st.step, "seconds": round(st.seconds, 2),
           "test_bpd": round(res["bpd"], 5), "test_bpd_ci95": res["bpd_ci95"],
           "n_images": res["n_images"]}
    if tc.loss_steps:
        rec.update({"steps": tc.loss_steps, "test_bpd_T": round(res["bpd_T"], 5)})
    score = res["bpd_T"] if tc.loss_steps else res["bpd"]
    if save_best(out, run.cfg, run.ema, st, score, {"steps": tc.loss_steps, "n_images": res["n_images"]}):
        rec["best"] = True
    log.write(rec)
    line = f"step {st.step}: test bpd (EMA) {res['bpd']:.4f}"
    if tc.loss_steps:
        line += f", at T={tc.loss_steps} {res['bpd_T']:.4f}"
    print(line + (" (the best so far: kept in best/)" if rec.get("best") else ""), file=sys.stderr)


BEST = "best"  # the run's folder of the EMA weights of its best evaluation so far


def save_best(out: Path, cfg: Config, ema: MuLAN, st: TrainState, score: float,
              evaluation: dict[str, Any]) -> bool:
    """Keep the EMA weights in out/best/ when `score` (the evaluation's -ELBO at the loss's T,
    else continuous) beats every earlier evaluation's of the run, resumes included: the
    weights worth committing, whenever the checkpoint happens to be written. `evaluation`
    says what was measured (T, tiles): a record of another evaluation is not compared with."""
    best = out / BEST
    record = best / "eval.json"
    if record.is_file():
        old = json.loads(record.read_text())
        # (a record written before records named their evaluation counts as this one's)
        if old.get("evaluation", evaluation) == evaluation and old["score"] <= score:
            return False
    best.mkdir(parents=True, exist_ok=True)
    mid = _save_ema(best, cfg, ema, st)
    _atomic_json(record, {"step": st.step, "score": score, "evaluation": evaluation, "model_id": mid})
    return True


def _stop_reason(args: TrainArgs, st: TrainState, started: float, stop: _Stop, world: int,
                 device: torch.device) -> str | None:
    """Why the loop should end now (None: go on); all ranks agree."""
    reason = None
    if args.max_steps is not None and st.step >= args.max_steps:
        reason = "max steps"
    elif args.minutes is not None and time.time() - started >= 60 * args.minutes:
        reason = "time limit"
    elif stop.flag:
        reason = "interrupted"
    if world > 1:  # every rank must stop at the same step
        flag = torch.tensor([reason is not None], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and reason is None:
            reason = "stopped by another process"
    return reason


def train(args: TrainArgs) -> int:
    """Run (or resume) training; returns a process exit code."""
    device, world, rank = _device(args)
    main = rank == 0
    cfg = _config(args)
    tc = cfg.train
    if tc.batch_size % world:
        raise ValueError(f"batch size {tc.batch_size} is not divisible by {world} processes")
    crops, ev = _data(args, cfg)
    run = _build(args, cfg, device)
    net: Any = run.model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    gen = torch.Generator(device=device)
    stop = _Stop()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    log = _Log(args.out, main, args, run.st.step)
    st = run.st
    log.write({"kind": "start", "step": st.step, "seconds": round(st.seconds, 2),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "world": world, "torch": torch.__version__, "config": cfg.name,
               "params": run.model.num_params(), "images": len(crops), "init": run.init_id})
    if main:
        print(f"training {cfg.name}: {run.model.num_params():,} parameters, {len(crops):,} images, "
              f"batch {tc.batch_size}, device {device}, world {world}, from step {st.step}",
              file=sys.stderr)
    started, seconds0, last_ckpt = time.time(), st.seconds, time.time()
    reason, failed = None, True
    try:
        while (reason := _stop_reason(args, st, started, stop, world, device)) is None:
            lr = _lr(cfg, st.step, run.warm_from)
            log.add(_step(run, net, crops.batch(st.step, tc.batch_size // world, rank), gen, rank,
                          device, lr))
            st.step += 1
            st.seconds = seconds0 + (time.time() - started)
            if st.step % tc.log_every == 0 and main:
                log.flush(st, lr)
            if ev is not None and st.step % tc.eval_every == 0 and main:
                _eval(run, ev, log, device, args.out)
            if time.time() - last_ckpt >= 60 * tc.checkpoint_minutes:
                if main:
                    save_checkpoint(args.out, cfg, run.model, run.ema, run.opt, st, args.compact)
                last_ckpt = time.time()
        failed = False
    finally:
        if main and not failed:
            save_checkpoint(args.out, cfg, run.model, run.ema, run.opt, st, args.compact)
            log.write({"kind": "stop", "step": st.step, "seconds": round(st.seconds, 2), "reason": reason})
            print(f"stopped at step {st.step} ({reason}); checkpoint in {args.out}", file=sys.stderr)
        log.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if world > 1:
            if not failed:  # tear gloo down together: a rank leaving early aborts the other
                dist.barrier()
            dist.destroy_process_group()
    return 130 if reason == "interrupted" else 0
