"""Helpers for attachment tests: an API with the test S3 server, uploads through presigned
forms (aiohttp, so the in-process API keeps serving), small real image files."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth


def png_bytes(width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 10, 10)
              ) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(width: int = 8, height: int = 6) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "JPEG", quality=85)
    return out.getvalue()


PDF_BYTES = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def photo_jpeg(width: int = 1600, height: int = 1200) -> bytes:
    """A real photo-like JPEG (gradients and shapes, camera EXIF), as a phone would send."""
    from PIL import Image, ImageDraw

    size = (width, height)
    image = Image.merge("RGB", (Image.linear_gradient("L").resize(size),
                                Image.radial_gradient("L").resize(size),
                                Image.new("L", size, 90)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(240, 200, 40))
    draw.rectangle((width // 2, height // 2, width - 40, height - 40), outline=(255, 255, 255),
                   width=12)
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88, exif=exif.tobytes())
    return out.getvalue()


def pdf_document(text: str = "chat-service attachment") -> bytes:
    """A small real PDF (one page, as Pillow writes it: objects, xref table, trailer)."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (420, 200), "white")
    ImageDraw.Draw(page).text((20, 90), text, fill="black")
    out = io.BytesIO()
    page.save(out, "PDF", resolution=72.0, title=text)
    return out.getvalue()


@pytest.fixture
async def attach_api(api_settings_factory: Callable[..., Any], s3: Any
                     ) -> AsyncIterator[Any]:
    """The API in-process, with the session's S3 server (bucket emptied)."""
    from chat_api.app import build_app

    env = {k.lower(): v for k, v in s3.env().items()}
    app = build_app(api_settings_factory(**env))
    await app.start()
    await app.probe_once()
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def astub(attach_api: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{attach_api.grpc_port}") as ch:
        yield chat_pb2_grpc.ChatServiceStub(ch)


async def create_upload(stub: Any, caller: str, conversation_id: str, data: bytes,
                        content_type: str, filename: str = "f.bin"
                        ) -> chat_pb2.CreateUploadResponse:
    resp: chat_pb2.CreateUploadResponse = await stub.CreateUpload(
        chat_pb2.CreateUploadRequest(conversation_id=conversation_id, filename=filename,
                                     content_type=content_type, size_bytes=len(data)),
        metadata=auth(caller))
    return resp


async def post_form(ticket: chat_pb2.CreateUploadResponse, data: bytes,
                    **override: str) -> tuple[int, str]:
    """Uploads ``data`` with the ticket's form; (status, body) of the store's answer."""
    form = aiohttp.FormData()
    for name, value in {**dict(ticket.fields), **override}.items():
        form.add_field(name, value)
    form.add_field("file", data, filename="upload")
    async with aiohttp.ClientSession() as session, session.post(
            ticket.url, data=form, timeout=aiohttp.ClientTimeout(total=20)) as resp:
        return resp.status, await resp.text()


async def upload(stub: Any, caller: str, conversation_id: str, data: bytes, content_type: str,
                 filename: str = "f.bin") -> str:
    """A complete upload; its id."""
    ticket = await create_upload(stub, caller, conversation_id, data, content_type, filename)
    status, body = await post_form(ticket, data)
    assert status == 204, body
    return ticket.upload_id


async def send_with(stub: Any, caller: str, conversation_id: str, ids: list[str],
                    content: str = "see attached", key: str | None = None) -> chat_pb2.Message:
    resp = await stub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conversation_id, content=content,
                                    idempotency_key=key or uuid.uuid4().hex,
                                    attachment_ids=ids),
        metadata=auth(caller))
    return resp.message


async def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(
            url, timeout=aiohttp.ClientTimeout(total=20)) as resp:
        return resp.status, await resp.read(), dict(resp.headers)
