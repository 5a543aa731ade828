"""Options several commands share, defined once so that they read the same everywhere."""
from __future__ import annotations

import click

model = click.option("--model", "model_path", default=None,
                     help="NAME|PATH: a shipped model's name (photo-int, photo, cifar10, ...) "
                          "or a model file or directory. Encoding default: $MULANCODEC_MODEL, "
                          "else photo-int (its files decode on any machine); decoding default: "
                          "the installed model with the file's model id.")
device = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                      help="Where the model runs (default: cuda if present). Decoding must use "
                           "the encoder's kind.")
quiet = click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
verbose = click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
force = click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
max_pixels = click.option("--max-pixels", type=int, default=None,
                          help="Refuse images (or files) with more pixels than this (default 2^28; "
                               "0 = no limit).")
max_work = click.option("--max-work", type=click.IntRange(min=0), default=None,
                        help="Refuse files whose decoding takes more tile-steps (tiles x steps) than "
                             "this (default 2^24, e.g. 4096x4096 at T=1000; 0 = no limit).")
jobs = click.option("-j", "--jobs", "jobs_n", type=click.IntRange(min=1), default=1, show_default=True,
                    help="Code this many files at once, in worker processes (each file's "
                         "output is the same as with -j 1 and the same --threads).")
