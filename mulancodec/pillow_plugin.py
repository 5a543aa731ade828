"""Pillow support: after `import mulancodec`, Image.open("x.mlc") reads and im.save("x.mlc") writes.

Reading decodes the whole file on first access to the pixels (a stream file
exposes its images as frames: `im.n_frames`, `im.seek(i)`). Saving accepts the
keyword arguments of `mulancodec.compress` (steps, device, model, fallback, strip, effort,
adapt).
The image's metadata (ICC profile, EXIF, XMP, text, dpi, gamma...) is in `im.info`
from open on, under the keys Pillow's PNG reader uses, and is saved from there.

Image.open takes no options, so the decoding limits are module settings: MAX_WORK
(tile-steps a file may ask for, default container.DEFAULT_MAX_WORK, 0 = no limit),
checked when the pixels are first loaded, before any decoding work.
"""
from __future__ import annotations

from typing import IO, Any

from PIL import Image, ImageFile

from .coding.container import DEFAULT_MAX_WORK, MAGIC, FormatError

FORMAT = "MLC"
MAX_WORK: int = DEFAULT_MAX_WORK  # decoding work limit in tile-steps (0 = no limit)


def _accept(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


class MlcImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "mulancodec lossless (MuLAN diffusion, bits-back ANS)"

    def _open(self) -> None:
        from .api import read_header

        data = self.fp.read()
        try:
            header = read_header(data)
        except FormatError as e:
            raise SyntaxError(f"not a valid MLC file: {e}") from None
        self._mlc_data = data
        self._mlc_header = header
        self._mlc_pictures: list[Any] | None = None
        self._mlc_frame = 0
        self.n_frames = len(header.images)
        self.is_animated = False
        self._set_frame_info(0)

    def _set_frame_info(self, frame: int) -> None:
        from .imaging.metadata import Metadata, MetadataError

        rec = self._mlc_header.images[frame]
        try:
            self.info = Metadata.from_items(rec.meta).info()
        except MetadataError as e:
            raise SyntaxError(f"not a valid MLC file: {e}") from None
        self._size = (rec.width, rec.height)
        self._mode = rec.mode
        self.tile = []

    def seek(self, frame: int) -> None:
        if not 0 <= frame < self.n_frames:
            raise EOFError("no more images in MLC file")
        self._mlc_frame = frame
        self._set_frame_info(frame)
        self._im = None

    def tell(self) -> int:
        return self._mlc_frame

    def load(self) -> Any:
        if self._mlc_pictures is None:
            from .api import decompress_pictures

            self._mlc_pictures = decompress_pictures(self._mlc_data, max_work=MAX_WORK)
        if getattr(self, "_im", None) is None:
            decoded = self._mlc_pictures[self._mlc_frame].to_pil()
            self.im = decoded.im
            self._mode = decoded.mode
            if decoded.mode == "P":
                self.palette = decoded.palette.copy()
            self.info.update(decoded.info)
        return Image.Image.load(self)


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from .api import compress

    keys = ("steps", "device", "model", "fallback", "strip", "effort", "adapt")
    opts = {k: v for k, v in im.encoderinfo.items() if k in keys}
    fp.write(compress(im, **opts))


def register() -> None:
    Image.register_open(FORMAT, MlcImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".mlc")
    Image.register_mime(FORMAT, "image/x-mlc")
