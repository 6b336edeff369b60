"""Thumbnails of image attachments: decoding untrusted images safely, as a pure function.

An uploaded image is untrusted input that Pillow decodes. A small file can declare a huge
canvas (a decompression bomb: a few kilobytes of PNG that inflate to gigabytes), so the pixel
count from the header is checked before anything is decoded, Pillow's own guard
(``Image.MAX_IMAGE_PIXELS``) is set to the same limit, and its warning is an error here. JPEGs
are decoded at a reduced scale (``draft``): a 4-megapixel photo decodes at an eighth of its size
in a few milliseconds instead of in full. EXIF orientation is applied (a photo taken sideways
shows upright), and the thumbnail is a fresh JPEG with no metadata (no EXIF: no location).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

THUMBNAIL_TYPE = "image/jpeg"
_ORIENTATION = 0x0112  # the EXIF tag
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class ThumbnailRefused(Exception):
    """The image is not one to decode: too many pixels, a bomb, or not a readable image."""


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    width: int
    """The original image's width (pixels, after EXIF orientation)."""
    height: int


def make_thumbnail(data: bytes, *, max_pixels: int, size: int) -> Thumbnail:
    """A JPEG at most ``size`` pixels on its longer side.

    Raises:
        ThumbnailRefused: more than ``max_pixels`` pixels, a decompression bomb, or not an
            image Pillow reads.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ThumbnailRefused(f"{width}x{height} is over {max_pixels} pixels")
                if image.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS:
                    width, height = height, width  # shown turned by a quarter
                if image.format == "JPEG":
                    image.draft("RGB", (size, size))
                oriented = ImageOps.exif_transpose(image)
                rgb = oriented.convert("RGB")
                rgb.thumbnail((size, size))
                out = io.BytesIO()
                rgb.save(out, "JPEG", quality=80, optimize=True)
    except ThumbnailRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ThumbnailRefused(f"decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's "cannot read"
        raise ThumbnailRefused(f"not a readable image: {type(exc).__name__}") from None
    return Thumbnail(out.getvalue(), width, height)
