"""mulancodec: lossless image compression with a MuLAN diffusion model and bits-back ANS.

    import mulancodec
    data = mulancodec.compress("photo.png")          # bytes of a .mlc file
    pixels = mulancodec.decompress(data)               # numpy array, bit-exact
    im = mulancodec.decompress_image(data)             # PIL image, original mode
    blob = mulancodec.compress_many(images)            # one stream, start-up cost paid once
    arrays = mulancodec.decompress_many(blob)

Importing the package also registers the MLC format with Pillow, and sets
CUBLAS_WORKSPACE_CONFIG=:4096:8 unless the process set it (deterministic cuBLAS).
"""
__version__ = "0.1.0"

# Before torch is imported (so before any CUDA work this package causes): cuBLAS reads
# CUBLAS_WORKSPACE_CONFIG once per process (see coding/determinism.py).
import os as _os

_os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from .api import (
                  DecodeError,
                  EncodeError,
                  EncodeStats,
                  MissingModelError,
                  ThreadsMismatch,
                  compress,
                  compress_many,
                  compress_many_with_stats,
                  compress_with_stats,
                  decompress,
                  decompress_image,
                  decompress_many,
                  decompress_pictures,
                  read_header,
)
from .coding.container import FormatError
from .imaging.image import ImageError
from .weights import load_model
from .zoo import ModelFileError, shipped_models

__all__ = ["__version__", "compress", "compress_many", "compress_many_with_stats", "compress_with_stats", "decompress",
           "decompress_image", "decompress_many", "decompress_pictures", "read_header", "load_model",
           "shipped_models", "MissingModelError", "ThreadsMismatch", "DecodeError", "EncodeError", "EncodeStats", "FormatError", "ImageError", "ModelFileError"]

from .pillow_plugin import register as _register_pillow

_register_pillow()
