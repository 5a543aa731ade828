"""Regenerate the golden .mlc files in this folder (tests/test_golden.py decodes them).

Run this ONLY ON PURPOSE, when the container format VERSION changes (or a new
integer scheme needs its own file): the golden files pin the bytes earlier
releases wrote, so a change in how files decode is caught by the tests instead of
being silently re-recorded. From the repository root:

    python tests/golden/make_golden.py [v3 | v3-scheme2 | v3-photoN | v4 | v4-lowrank]

It writes the current version's files only: files of earlier versions are never
rewritten, they must keep decoding.
Version 1 (written by this script before version 2 existed): rgb.mlc (bits-back,
no PNG fallback), stream.mlc (compress_many of three images), grey.mlc (L),
rgba.mlc (RGBA), palette.mlc (P), with their pixels in expected.npz.
Version 2 (made by this script before version 3, from images_v2, as v2_*.mlc and
expected_v2.npz): v2_meta.mlc (RGB, bits-back, carrying every kind of metadata),
v2_stream.mlc (two images, one with metadata) and v2_embedded.mlc (a lone tiny
image: the smallest PNG/WebP/JPEG-XL fallback), with the shipped CIFAR-10 model
on the CPU, one thread. The metadata each must carry is META below.
Version 3 (what it writes now, from images_v3, as v3_*.mlc and expected_v3.npz),
with the shipped integer CIFAR-10 model (cifar10-int), whose files decode on any
machine and thread count: v3_meta.mlc (RGB with every kind of metadata) and
v3_stream.mlc (an RGB image with metadata, a grey one and an RGBA one, in
batches of at most two tiles), encoded with two threads.
Version 3, integer scheme 2, one file per shipped photo-int (`v3-scheme2`, `v3-photoN`, from
images_photo, as v3_scheme2.mlc or v3_photoN.mlc and expected_<name>.npz): a 70x40 RGB image
with the photo-int of its time, two threads; PHOTO_GOLDEN names each file's model.
Version 4 (`v4`, as v4_adapted.mlc and expected_v4.npz): a 40x36 RGB
image with every kind of metadata, adapted to the image (`compress(..., adapt=3)`, the
deltas kept whatever they save), with a tiny integer model made here and stored beside
it, v4_tiny_int.safetensors (tiny-lv, integer scheme 2, context and learned variance; its
float model is not needed to decode), two threads.
Version 4 with low-rank factors (`v4-lowrank`, as v4_lowrank.mlc and expected_v4_lowrank.npz):
the same kind of image adapted with the low-rank subset (norms, biases and a rank-1 change to
each full-resolution convolution), with tiny-unusual's integer model (it has a full-resolution
block) stored beside it as v4_tiny_unusual_int.safetensors, two threads.
All at T = STEPS; the images are synthetic (made here).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]  # tests/ (conftest) and the repository

STEPS = 3


def _gradient(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """A smooth gradient plus a little seeded noise (a natural-ish tiny image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    planes = [(40 + 150 * x / max(1, w - 1) + 30 * k + 20 * y / max(1, h - 1)) for k in range(c)]
    img = np.stack(planes, -1) + rng.normal(0, 4, (h, w, c))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


ICC = bytes(range(256)) * 3  # opaque bytes: metadata is stored, never parsed
EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00" + bytes(range(64))
META = {"icc_profile": ICC, "exif": EXIF, "xmp": b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>",
        "Title": "golden", "Author": "Zo\u00eb", "dpi": (299.9994, 299.9994), "gamma": 0.45455,
        "chromaticity": (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06), "srgb": 0}


def with_meta(a: np.ndarray) -> Image.Image:
    """The array as a PIL image whose `info` carries META (as a PNG reader would fill it)."""
    im = Image.fromarray(a)
    im.info.update(META)
    return im


def images_v2() -> dict[str, list]:
    """The version-2 golden files' images, by file name."""
    return {
        "v2_meta": [with_meta(_gradient(8, 8, 3, 10))],
        "v2_stream": [with_meta(_gradient(6, 9, 3, 11)), _gradient(5, 5, 1, 12)[..., 0]],
        "v2_embedded": [with_meta(_gradient(3, 3, 3, 13))],
    }


def images_v3() -> dict[str, list]:
    """The version-3 golden files' images, by file name."""
    rgba = _gradient(7, 9, 4, 17)
    rgba[..., 3] = np.where((np.arange(63).reshape(7, 9) % 4) == 0, 0, 255)
    return {
        "v3_meta": [with_meta(_gradient(8, 8, 3, 14))],
        "v3_stream": [with_meta(_gradient(9, 6, 3, 15)), _gradient(6, 5, 1, 16)[..., 0], rgba],
    }


# The photo-int golden files (version 3, integer scheme 2), one per shipped photo-int:
# file name -> (the model it was made with, a folder of models/, and the seed of its 70x40
# RGB image: two 64x64 tiles, partial, the first seeing the second as context). Shipping a
# new photo-int renames the old one (photo-int -> photo-int-vN): change its row here, then
# add a row for the new model's file and make it with `make_golden.py v3-photoN`.
PHOTO_GOLDEN = {
    "v3_scheme2": ("photo-int-v2", 18),  # the second photo-int (the first of scheme 2)
    "v3_photo3": ("photo-int-v3", 20),  # the third: trained on both photo sets
    "v3_photo4": ("photo-int-v4", 21),  # the fourth: the standing job's weights
    "v3_photo5": ("photo-int-v5", 22),  # the fifth: its p(x | z_0) runs through the denoiser
    "v3_photo6": ("photo-int-v6", 23),  # the sixth: the standing job trained on
    "v3_photo7": ("photo-int", 24),  # the seventh: full-resolution blocks, annealed
}
MODELS = HERE.parents[1] / "models"


def photo_model(name: str) -> Path:
    """The shipped integer model a photo-int golden file was made with."""
    from mulancodec.zoo import weights_in

    found = weights_in(MODELS / PHOTO_GOLDEN[name][0])
    assert found is not None, name
    return found


def images_photo() -> dict[str, list]:
    """The photo-int golden files' images, by file name."""
    return {name: [with_meta(_gradient(40, 70, 3, seed))] for name, (_, seed) in PHOTO_GOLDEN.items()}


TINY_INT_MODEL = HERE / "v4_tiny_int.safetensors"
LOWRANK_INT_MODEL = HERE / "v4_tiny_unusual_int.safetensors"


def make_v4(config: str = "tiny-lv", model_path: Path = TINY_INT_MODEL, name: str = "v4_adapted",
            seed: int = 19) -> None:
    """v4_adapted.mlc (or v4_lowrank.mlc) and the tiny integer model it needs (see the module
    docstring)."""
    import tempfile

    import torch
    from conftest import make_tiny_model, smooth_image

    import mulancodec as mc
    from mulancodec.adapt import encoder
    from mulancodec.exact.quantize import quantize
    from mulancodec.imaging import image as img
    from mulancodec.training.data import RandomCrops
    from mulancodec.weights import load_model, save_integer_model, save_model

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        fid = save_model(make_tiny_model(0, config), f"{tmp}/float.safetensors")
        flm = load_model(f"{tmp}/float.safetensors")
        rng = np.random.default_rng(4)
        tiles = RandomCrops([smooth_image(rng, 48, 48, 3) for _ in range(3)], 16, 8, 0).batch(0, 16)
        save_integer_model(quantize(flm.model, tiles), model_path, fid, {"default_steps": str(STEPS)})
        ilm = load_model(model_path)
        encoder.pays = lambda report: True
        expected: dict[str, np.ndarray] = {}
        image = with_meta(_gradient(40, 36, 3, seed))
        data = mc.compress(image, model=ilm, steps=STEPS, adapt=3, float_model=flm, fallback=False)
        assert mc.read_header(data).chain.adaptation is not None
        (HERE / f"{name}.mlc").write_bytes(data)
        pic = img.load(image)
        expected[f"{name}/0"], expected[f"{name}/0/mode"] = pic.array(), np.array(pic.mode)
        print(f"{name}.mlc: {len(data)} bytes")
    np.savez_compressed(HERE / f"expected_{name.replace('_adapted', '')}.npz", **expected)


def images() -> dict[str, list]:
    """Every version-1 golden file's images (numpy arrays or PIL images), by file name."""
    rgba = _gradient(6, 7, 4, 3)
    rgba[..., 3] = np.where((np.arange(42).reshape(6, 7) % 5) == 0, 0, 255)
    pal = Image.fromarray(_gradient(8, 8, 3, 4)).convert("P", palette=Image.ADAPTIVE, colors=8)
    return {
        "rgb": [_gradient(8, 8, 3, 0)],
        "stream": [_gradient(8, 8, 3, 1), _gradient(5, 6, 3, 2), _gradient(4, 7, 1, 5)[..., 0]],
        "grey": [_gradient(7, 5, 1, 6)[..., 0]],
        "rgba": [rgba],
        "palette": [pal],
    }


def main(which: str = "v3") -> None:
    if which == "v4":
        make_v4()
        return
    if which == "v4-lowrank":
        make_v4("tiny-unusual", LOWRANK_INT_MODEL, "v4_lowrank", 29)
        return
    import torch
    from conftest import CIFAR10_INT_MODEL

    import mulancodec as mc
    from mulancodec.imaging import image as img

    if which == "v3":
        images, model, out = images_v3(), CIFAR10_INT_MODEL, "expected_v3.npz"
    else:  # v3-scheme2, v3-photoN: one photo-int file
        name = which.replace("-", "_")
        images, model, out = {name: images_photo()[name]}, photo_model(name), f"expected_{name}.npz"
    torch.set_num_threads(2)  # not recorded: version 3 decodes under any thread count
    lm = mc.api.get_model(model, torch.device("cpu"))
    expected: dict[str, np.ndarray] = {}
    for name, ims in images.items():
        if name.endswith("stream"):
            data = mc.compress_many(ims, model=lm, steps=STEPS, device="cpu", max_batch=2,
                                    names=[f"s{i}.png" for i in range(len(ims))])
        else:
            data = mc.compress(ims[0], model=lm, steps=STEPS, device="cpu", fallback=False)
        (HERE / f"{name}.mlc").write_bytes(data)
        for i, x in enumerate(ims):
            pic = img.load(x)
            expected[f"{name}/{i}"] = pic.array()
            expected[f"{name}/{i}/mode"] = np.array(pic.mode)
            if pic.mode == "P":
                expected[f"{name}/{i}/palette"] = np.frombuffer(pic.palette, np.uint8)
        print(f"{name}.mlc: {len(data)} bytes")
    np.savez_compressed(HERE / out, **expected)


if __name__ == "__main__":
    main(*sys.argv[1:])
