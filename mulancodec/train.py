"""Training: AdamW with warmup, EMA, checkpoints that resume exactly, DDP under torchrun.

Exact resume: the data order is a pure function of (seed, epoch), and every
step reseeds the random generators from (seed, rank, step), so a run that is
stopped and resumed draws the same batches and noise as one that never
stopped. Checkpoints hold the raw weights, the EMA weights (the model we ship)
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
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .data import load_tiles
from .evaluate import evaluate
from .model.configs import Config, load_config
from .model.mulan import MuLAN
from .weights import save_model


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


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    pos: int = 0
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


def save_checkpoint(out: Path, cfg: Config, model: MuLAN, ema: MuLAN, opt: torch.optim.Optimizer,
                    st: TrainState, compact: bool = False) -> None:
    """Write a checkpoint. `compact` stores weights in float16 and no optimizer state
    (a quarter of the size, for moving runs between machines; resuming from it
    restarts Adam's moments with a short warmup instead of continuing exactly)."""
    (out / "train").mkdir(parents=True, exist_ok=True)
    tag = {"step": str(st.step)}
    dtype = torch.float16 if compact else torch.float32
    _atomic_json(out / "config.json", cfg.to_dict())
    save_model(ema, out / "model.safetensors", dtype=dtype,
               extra={"step": str(st.step), "config_name": cfg.name, "train_seconds": f"{st.seconds:.1f}"})
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
        "step": st.step, "epoch": st.epoch, "pos": st.pos, "seconds": st.seconds,
        "param_groups": groups, "compact": compact,
    })


def load_checkpoint(out: Path, model: MuLAN, ema: MuLAN, opt: torch.optim.Optimizer,
                    device: torch.device) -> tuple[TrainState, bool]:
    """Restore a checkpoint; returns the state and whether the optimizer state was restored."""
    meta = json.loads((out / "train" / "state.json").read_text())
    from safetensors import safe_open

    exact = not meta.get("compact", False)
    for f in ("raw.safetensors", "state.safetensors") if exact else ("raw.safetensors",):
        with safe_open(str(out / "train" / f), framework="pt") as h:
            if (h.metadata() or {}).get("step") != str(meta["step"]):
                raise RuntimeError(f"checkpoint in {out} is inconsistent ({f} is from another step)")
    raw = load_file(str(out / "train" / "raw.safetensors"), device=str(device))
    model.load_state_dict({k: v.float() for k, v in raw.items()})
    with safe_open(str(out / "model.safetensors"), framework="pt") as h:
        ema.load_state_dict({k: h.get_tensor(k).to(device).float() for k in h.keys()})
    if exact:
        _load_optim(opt, load_file(str(out / "train" / "state.safetensors"), device=str(device)),
                    meta["param_groups"])
    return TrainState(meta["step"], meta["epoch"], meta["pos"], meta["seconds"]), exact


class _Order:
    """The data order: a permutation and flip flags per epoch, a pure function of (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, -1
        self.perm = self.flips = np.zeros(0)

    def next(self, batch: int, st: TrainState) -> tuple[np.ndarray, np.ndarray]:
        """The next global batch (indices and flip flags); advances st.epoch / st.pos."""
        if st.pos + batch > self.n:
            st.epoch, st.pos = st.epoch + 1, 0
        if st.epoch != self.epoch:
            rng = np.random.default_rng([self.seed, st.epoch])
            self.perm, self.flips, self.epoch = rng.permutation(self.n), rng.random(self.n) < 0.5, st.epoch
        idx = self.perm[st.pos:st.pos + batch]
        st.pos += batch
        return idx, self.flips[idx]


def _lr(cfg: Config, step: int, since: int = 0) -> float:
    """Linear warmup from `since` (0, or the step a compact checkpoint restarted Adam)."""
    return cfg.train.lr * min(1.0, (step - since + 1) / max(1, cfg.train.warmup_steps))


def train(args: TrainArgs) -> int:
    """Run (or resume) training; returns a process exit code."""
    world, rank, local_rank = _dist_info()
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = args.out
    main = rank == 0

    saved_cfg = out / "config.json"
    if args.resume:
        if not saved_cfg.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {out}")
        cfg = Config.from_dict(json.loads(saved_cfg.read_text()))
        if args.config and load_config(args.config).model != cfg.model:
            raise ValueError(f"--config {args.config} differs from the model in {out}")
    else:
        if (out / "train" / "state.json").exists():
            raise FileExistsError(f"{out} already holds a run: pass --resume to continue it")
        cfg = load_config(args.config or "small")
    tc = cfg.train
    if tc.batch_size % world:
        raise ValueError(f"batch size {tc.batch_size} is not divisible by {world} processes")
    local_batch = tc.batch_size // world

    data = torch.from_numpy(load_tiles(args.data, cfg.model.tile)).to(device)
    n = len(data)
    if n < tc.batch_size:
        raise ValueError(f"only {n} training tiles, fewer than one batch of {tc.batch_size}")
    eval_x = load_tiles(args.eval_data, cfg.model.tile, tc.eval_images) if args.eval_data else None

    torch.manual_seed(tc.seed)
    model = MuLAN(cfg.model).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    decay_params = [p for p in model.parameters() if p.dim() > 1]
    other_params = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": tc.weight_decay},
                             {"params": other_params, "weight_decay": 0.0}],
                            lr=tc.lr, betas=tc.adam_betas)
    st = TrainState()
    warm_from = 0
    if args.resume:
        st, exact = load_checkpoint(out, model, ema, opt, device)
        if not exact:
            warm_from = st.step
    out.mkdir(parents=True, exist_ok=True)

    net: Any = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    amp = device.type == "cuda"
    gen = torch.Generator(device=device)

    stop = _Stop()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    log = (out / "log.jsonl").open("a") if main else None
    bar = None
    if main and args.progress and sys.stderr.isatty():  # otherwise one line per log interval
        from tqdm import tqdm

        bar = tqdm(total=args.max_steps, initial=st.step, unit="step", dynamic_ncols=True)

    def write(rec: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    if main:
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        write({"kind": "start", "step": st.step, "seconds": round(st.seconds, 2),
               "device": dev_name, "world": world, "torch": torch.__version__,
               "config": cfg.name, "params": model.num_params(), "tiles": n})
        print(f"training {cfg.name}: {model.num_params():,} parameters, {n:,} tiles, batch "
              f"{tc.batch_size}, device {device}, world {world}, from step {st.step}", file=sys.stderr)

    order = _Order(n, tc.seed)
    run_start = time.time()
    seconds0 = st.seconds
    last_ckpt = time.time()
    acc: dict[str, torch.Tensor] = {}
    acc_n = 0
    t_log = time.time()
    steps_at_log = st.step
    reason: str | None = None  # why the loop ended
    failed = True
    try:
        while True:
            if args.max_steps is not None and st.step >= args.max_steps:
                reason = "max steps"
            elif args.minutes is not None and time.time() - run_start >= 60 * args.minutes:
                reason = "time limit"
            elif stop.flag:
                reason = "interrupted"
            if world > 1:  # every rank must stop at the same step
                flag = torch.tensor([reason is not None], dtype=torch.int32, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() and reason is None:
                    reason = "stopped by another process"
            if reason is not None:
                break
            idx, flips = order.next(tc.batch_size, st)
            mine = slice(rank * local_batch, (rank + 1) * local_batch)
            x = data[torch.from_numpy(idx[mine]).to(device)]
            f = torch.from_numpy(flips[mine]).to(device)
            if tc.flip:
                x = torch.where(f[:, None, None, None], x.flip(2), x)
            x = x.permute(0, 3, 1, 2)
            step_seed = (tc.seed * 1_000_003 + rank * 7_919 + st.step) % (2 ** 63)
            torch.manual_seed(step_seed)
            gen.manual_seed(step_seed)
            lr = _lr(cfg, st.step, warm_from)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                terms = net(x, tc.loss_steps, gen)
            loss = terms.total.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            opt.step()
            decay = min(tc.ema_decay, (1 + st.step) / (10 + st.step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm.detach(), 1 - decay)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
            st.step += 1
            now = time.time()
            st.seconds = seconds0 + (now - run_start)

            # running sums stay on the device: no host sync except when logging
            vals = {"bpd": loss.detach(), "grad_norm": gnorm.detach()}
            for k in ("diffusion", "recon", "prior", "latent"):
                vals[k] = getattr(terms, k).detach().mean()
            for k, v in vals.items():
                acc[k] = acc[k] + v if k in acc else v
            acc_n += 1
            if bar is not None:
                bar.update(1)
            if st.step % tc.log_every == 0 and main:
                sps = (st.step - steps_at_log) / max(1e-9, now - t_log)
                rec = {"kind": "train", "step": st.step, "seconds": round(st.seconds, 2), "lr": lr,
                       "steps_per_s": round(sps, 3)}
                rec.update({k: round(float(v) / acc_n, 5) for k, v in acc.items()})
                if not math.isfinite(rec["bpd"]):
                    raise FloatingPointError(f"loss is not finite near step {st.step}")
                write(rec)
                if bar is not None:
                    bar.set_postfix(bpd=f"{rec['bpd']:.3f}", lr=f"{lr:.1e}")
                else:
                    print(f"step {st.step} bpd {rec['bpd']:.4f} ({sps:.2f} steps/s)", file=sys.stderr)
                acc, acc_n, t_log, steps_at_log = {}, 0, now, st.step
            if eval_x is not None and st.step % tc.eval_every == 0 and main:
                res = evaluate(ema, eval_x, steps=tc.loss_steps, device=device, seed=1234)
                rec = {"kind": "eval", "step": st.step, "seconds": round(st.seconds, 2),
                       "test_bpd": round(res["bpd"], 5), "test_bpd_ci95": res["bpd_ci95"],
                       "n_images": res["n_images"]}
                if tc.loss_steps:
                    rec.update({"steps": tc.loss_steps, "test_bpd_T": round(res["bpd_T"], 5)})
                write(rec)
                print(f"step {st.step}: test bpd (EMA) {res['bpd']:.4f}", file=sys.stderr)
            if now - last_ckpt >= 60 * tc.checkpoint_minutes:
                if main:
                    save_checkpoint(out, cfg, model, ema, opt, st, args.compact)
                last_ckpt = time.time()
        failed = False
    finally:
        if main and not failed:
            save_checkpoint(out, cfg, model, ema, opt, st, args.compact)
            write({"kind": "stop", "step": st.step, "seconds": round(st.seconds, 2), "reason": reason})
            print(f"stopped at step {st.step} ({reason}); checkpoint in {out}", file=sys.stderr)
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if world > 1:
            dist.destroy_process_group()
    return 130 if reason == "interrupted" else 0
