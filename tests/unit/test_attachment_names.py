"""Filenames users give are shown and sent back in Content-Disposition: never a path, never a
control character, never longer than 255 characters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chat_api.service.attachments import (
    MAX_FILENAME,
    content_disposition,
    is_image,
    sanitise_filename,
)


def test_path_separators_and_control_characters_are_replaced() -> None:
    assert sanitise_filename("../../etc/passwd") == "_.._etc_passwd"
    assert sanitise_filename("C:\\Windows\\evil.exe") == "C:_Windows_evil.exe"
    assert sanitise_filename("a\x00b\r\nc\x7f.txt") == "a_b__c_.txt"
    assert sanitise_filename("report\u202egnp.exe") == "report_gnp.exe"  # right-to-left override
    assert sanitise_filename(".hidden") == "hidden"
    assert sanitise_filename("  ") == "file"


def test_a_long_name_is_cut_keeping_its_extension() -> None:
    name = sanitise_filename("a" * 1000 + ".pdf")
    assert len(name) == MAX_FILENAME and name.endswith(".pdf")
    assert len(sanitise_filename("b" * 1000)) == MAX_FILENAME


@given(st.text(max_size=1200))
def test_any_name_comes_out_safe(name: str) -> None:
    out = sanitise_filename(name)
    assert 0 < len(out) <= MAX_FILENAME
    assert "/" not in out and "\\" not in out
    assert not any(ord(c) < 32 or ord(c) == 127 for c in out)
    header = content_disposition(out, inline=False)
    assert header.isascii() and "\r" not in header and "\n" not in header


def test_only_raster_images_are_shown_inline() -> None:
    assert is_image("image/png") and is_image("image/webp")
    assert not is_image("image/svg+xml") and not is_image("application/pdf")
