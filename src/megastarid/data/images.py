"""Decode any photo a user may have into an upright 8-bit RGB image, fast even for 4000 px phone photos."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from megastarid.core.errors import UserError

#: Files the readers treat as photos (compared lower-case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: Transparent pixels are laid on mid grey: close to the ImageNet mean, so they read as "nothing" to a model.
BACKGROUND = (128, 128, 128)

# What Pillow's decoders raise on a damaged or foreign file.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


class BadImageError(UserError):
    """A file that cannot be decoded as an image (zero bytes, truncated, not an image, missing)."""


def is_image_file(path: str | Path) -> bool:
    """True for names ending in one of ``IMAGE_SUFFIXES`` in any case (``IMG_1.JPG``)."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open ``path`` as an EXIF-oriented 8-bit RGB image.

    With ``min_side``, JPEGs are decoded at a reduced scale (1/2, 1/4 or 1/8, via ``Image.draft``) when the
    shorter side stays >= ``min_side``: a 3000x4000 photo needed at 620 px decodes at 1/4 size, several times
    faster. The result is never resized beyond that; callers resize to their exact size.
    Raises ``BadImageError`` naming the file when it cannot be read.
    """
    try:
        with Image.open(path) as image:
            if min_side and image.format == "JPEG":
                scale = min_side / min(image.size)
                if scale < 1:
                    image.draft("RGB", (round(image.width * scale), round(image.height * scale)))
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except _DECODE_ERRORS as err:
        raise BadImageError(f"cannot read image {path}: {_reason(path, err)}") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16/32-bit and float greys are rescaled (not clipped),
    transparency is composited on ``BACKGROUND``, CMYK/palette/grey/YCbCr are converted."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_grey_to_uint8(np.asarray(image), image.mode), "L").convert("RGB")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth grey image to 0..255 from the range its mode implies (16-bit: /257).

    Modes "I" and "F" carry no declared depth, so their range is inferred from the largest value.
    """
    values = pixels.astype(np.float64)
    peak = float(values.max(initial=0.0))
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F":
        top = 1.0 if peak <= 1.0 else peak
    else:
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)


def _reason(path: str | Path, err: Exception) -> str:
    """A short cause for a failed decode, without repeating the path that Pillow puts in its messages."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a directory"
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(err, UnidentifiedImageError):
        return "not an image file (or an unsupported format)"
    return str(err) or type(err).__name__
