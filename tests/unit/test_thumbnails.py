"""make_thumbnail on real image bytes: bounded size, EXIF orientation applied and metadata
stripped, bombs and oversized images refused before decoding."""

from __future__ import annotations

import io
import zlib
import struct

import pytest
from PIL import Image

from chat_api.service.thumbnails import ThumbnailRefused, make_thumbnail


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    image = Image.new("RGB", (width, height), (20, 140, 60))
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {2: (52.0, 31.0, 12.0)}  # GPS info: must not survive
    if orientation:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def test_a_thumbnail_is_bounded_and_carries_no_metadata() -> None:
    thumb = make_thumbnail(_jpeg(1600, 900), max_pixels=40_000_000, size=320)
    assert (thumb.width, thumb.height) == (1600, 900)
    with Image.open(io.BytesIO(thumb.data)) as image:
        assert image.format == "JPEG"
        assert max(image.size) == 320 and image.size[0] > image.size[1]
        assert not image.getexif()


def test_exif_orientation_is_applied() -> None:
    thumb = make_thumbnail(_jpeg(800, 400, orientation=6), max_pixels=40_000_000, size=200)
    assert (thumb.width, thumb.height) == (400, 800)
    with Image.open(io.BytesIO(thumb.data)) as image:
        assert image.size[1] > image.size[0]  # upright: taller than wide


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring a huge canvas with a tiny compressed body (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("data", [
    _png_header_only(50_000, 50_000),   # 2.5 gigapixels declared
    _png_header_only(5_000, 5_000),     # over the limit below, under Pillow's default
    b"not an image at all",
])
def test_bombs_oversized_and_unreadable_images_are_refused(data: bytes) -> None:
    with pytest.raises(ThumbnailRefused):
        make_thumbnail(data, max_pixels=20_000_000, size=320)
