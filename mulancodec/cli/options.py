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


effort = click.option("-e", "--effort", type=click.IntRange(1, 9), default=None,
                      help="1..9 (default 7, like cjxl's -e): T and adaptation together, from "
                           "1 (no model: the smallest of PNG/WebP/JPEG-XL) to 9 (T=100, adapt "
                           "100); levels below. --steps and --adapt override it.")
adapt = click.option("--adapt", type=click.IntRange(0, 100_000), default=None,
                     help="Fine-tune the model on the image for N steps and store the changes in "
                          "the file when they make it smaller (integer models, e.g. photo-int: "
                          "format version 4; decoding stays exact and about as fast). 0 = no "
                          "adaptation; default: the effort level's.")
