"""`train`, `eval` and `quantize`: making and measuring models, not coding files.

These import the training and evaluation code only when run, so that the coding
commands start without it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .errors import EXIT_INPUT, EXIT_USAGE, CliError, guarded

if TYPE_CHECKING:
    from ..weights import LoadedModel


@click.command()
@click.option("--data", "data", multiple=True, required=True,
              help="Training images: .npz with array x (N,H,W,3), a folder, or a glob. Repeatable.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--config", default=None, help="Config name (tiny, small, base, large, ...) or JSON file.")
@click.option("--max-steps", type=int, default=None, help="Stop at this total step count.")
@click.option("--minutes", type=float, default=None, help="Stop after this many minutes of this run.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--eval-data", multiple=True, help="Test images for periodic EMA test bpd.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (long runs on GPU).")
@click.option("--compact", is_flag=True,
              help="Checkpoint in float16 without optimizer state (1/4 the size, to move runs "
                   "between machines; resuming restarts Adam with a short warmup).")
@click.option("--init", default=None,
              help="Start a new run from this model file's weights (e.g. a context model from a "
                   "model without context: the context inputs start at zero).")
@click.option("--quantize", "quantize_", is_flag=True,
              help="Quantisation-aware training: round as the integer model will (fine-tune a "
                   "model with --init, then make its integer model with `mulancodec quantize`).")
def train(data: tuple[str, ...], out: Path, config: str | None, max_steps: int | None,
          minutes: float | None, resume: bool, eval_data: tuple[str, ...], device: str | None,
          compile_: bool, compact: bool, init: str | None, quantize_: bool) -> None:
    """Train (or resume) a MuLAN model; works under torchrun for several GPUs."""
    from ..training.loop import TrainArgs
    from ..training.loop import train as run

    try:
        code = run(TrainArgs(list(data), out, config, max_steps, minutes, resume, list(eval_data),
                             device, compile_, compact=compact, init=init, quantize=quantize_))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


@click.command("eval")
@click.option("--data", "data", multiple=True, required=True, help="Images (.npz, folder, glob).")
@click.option("--model", "model_path", default=None,
              help="NAME|PATH: a shipped model (photo-int, photo, cifar10, ...), a model file or run "
                   "directory (default: $MULANCODEC_MODEL, else photo-int: an integer model has only "
                   "the bound at T).")
@click.option("--limit", type=int, default=None, help="Use only the first N images.")
@click.option("--steps", type=int, default=None, help="T for the discrete-time bound (default: model's).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda if present).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True, help="Samples per image.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--tile", type=int, default=None,
              help="Tile side to evaluate at (default: the model's; the nets run on any multiple "
                   "of their downsampling factor).")
@click.option("--no-context", is_flag=True,
              help="Withhold every tile's context (a context model's ablation: as if each tile "
                   "were coded alone).")
@guarded
def eval_cmd(data: tuple[str, ...], model_path: str | None, limit: int | None, steps: int | None,
             device: str | None, batch_size: int, repeats: int, seed: int, as_json: bool,
             tile: int | None, no_context: bool) -> None:
    """The model's -ELBO in bits per dimension (continuous and discrete time; an integer
    model's at T only)."""
    import torch
    from tqdm import tqdm

    from ..api import default_steps
    from ..coding.exact import is_exact
    from ..training.data import image_tiles, load_images
    from ..training.evaluate import evaluate
    from ..weights import load_model

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(model_path, dev)
    size = tile or lm.config.tile
    if size < 1 or size % lm.config.multiple_of():
        raise CliError(f"--tile must be a positive multiple of {lm.config.multiple_of()}", EXIT_USAGE)
    try:
        images = image_tiles(load_images(list(data)), size, lm.config.context, limit)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e), EXIT_INPUT) from None
    if no_context and images.known is not None:
        images.known[:] = False
    T = default_steps(lm, steps)
    with tqdm(total=len(images) * repeats, unit="img", disable=as_json or not sys.stderr.isatty(),
              file=sys.stderr, leave=False) as bar:
        if T < 1 and is_exact(lm.model):
            raise CliError("an integer model has no continuous bound: give --steps T >= 1", EXIT_USAGE)
        res = evaluate(lm.model, images, T, batch_size, dev, seed, repeats, bar)
    res.update({"model_id": lm.model_id, "model": str(lm.path), "device": str(dev), "tile": size,
                "context": bool(lm.config.context and not no_context)})
    if as_json:
        click.echo(json.dumps(res))
    else:
        _echo_bounds(res, lm, dev, T)


def _echo_bounds(res: dict[str, Any], lm: LoadedModel, dev: str, T: int) -> None:
    """`eval`'s human-readable report."""
    click.echo(f"model {lm.model_id} ({lm.path}) on {res['n_images']} images, device {dev}")
    if res["bpd"] is not None:
        click.echo(f"  -ELBO continuous : {res['bpd']:.4f} bpd  (95% CI {res['bpd_ci95'][0]:.4f}"
                   f"..{res['bpd_ci95'][1]:.4f})")
    click.echo(f"  -ELBO at T={T:<5}: {res['bpd_T']:.4f} bpd  (95% CI {res['bpd_T_ci95'][0]:.4f}"
               f"..{res['bpd_T_ci95'][1]:.4f})")
    click.echo(f"  terms: diffusion {res['diffusion']:.4f}, reconstruction {res['recon']:.4f}, "
               f"prior {res['prior']:.5f}, latent {res['latent']:.4f}")


@click.command()
@click.option("--model", "model_path", required=True, help="NAME|PATH of the float model to quantise.")
@click.option("--data", "data", multiple=True, required=True,
              help="Calibration images (training images, never test ones): .npz, folder or glob.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Integer model file to write (a name ending in .xz: packed, as shipped).")
@click.option("--tiles", type=click.IntRange(1, 4096), default=48, show_default=True,
              help="Random training-style tiles to fit the activation grids on.")
@click.option("--seed", type=int, default=0, show_default=True)
@guarded
def quantize(model_path: str, data: tuple[str, ...], out: Path, tiles: int, seed: int) -> None:
    """Make the integer model of a float one: its files (format version 3) decode on any machine."""
    from ..api import default_steps
    from ..coding.exact import is_exact
    from ..exact.quantize import calibration_tiles
    from ..exact.quantize import quantize as run
    from ..weights import load_model, save_integer_model

    lm = load_model(model_path)
    if is_exact(lm.model):
        raise CliError(f"{lm.path} is already an integer model", EXIT_USAGE)
    try:
        cal = calibration_tiles(list(data), lm.config.tile, lm.config.context, tiles, seed)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e), EXIT_INPUT) from None
    # the integer model recommends the float model's T: default_steps is the one place it is read
    extra = {"default_steps": str(default_steps(lm)),
             "calibration": json.dumps({"data": [Path(d).name for d in data], "tiles": tiles, "seed": seed})}
    mid = save_integer_model(run(lm.model, cal, seed), out, lm.model_id, extra)
    click.echo(f"{out}: integer model {mid} of {lm.model_id}")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@guarded
def pack(files: tuple[Path, ...]) -> None:
    """Pack model files with xz (FILE.xz beside each; a FILE.xz is repacked in place), checked
    to read back bit for bit."""
    from ..packed import PackedError, pack_file

    for f in files:
        try:
            size = f.stat().st_size
            out = pack_file(f)
        except PackedError as e:
            raise CliError(str(e), EXIT_INPUT) from None
        except OSError as e:
            raise CliError(f"{f}: cannot pack ({e.strerror or e})", EXIT_INPUT) from None
        click.echo(f"{f}: {size} -> {out}: {out.stat().st_size} bytes")
