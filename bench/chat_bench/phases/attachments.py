"""The attachments phase: the attachment RPCs' own cost, and how soon a thumbnail is ready.

Sequential gRPC calls (the rpc phase's blocking client) by one user in a conversation of two:
CreateUpload (a row and a presigned POST: signing is local, no call to the store),
GetAttachmentUrl (a membership read and a presigned GET), and SendMessage with one attachment
(one ranged GET in the store while the upload's row is read, then the send statement that
attaches it); the uploads a send attaches are made beforehand, untimed. Then thumbnails: a
4-megapixel JPEG is uploaded and sent, and the time from the send's answer until GetMessages
shows ``thumbnail_ready`` is the thumbnail's latency: the relay publishing message.created,
the API's worker reading the stream, fetching the image, decoding, storing the thumbnail and
writing message.updated.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from chat_bench.clients import Sequential, User
from chat_bench.database import analyze
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_shared.protos.chat.v1 import chat_pb2

WARMUP = 10
PDF = b"%PDF-1.4\n%bench\n%%EOF\n"
MEAN_TARGET_MS = {"CreateUpload": 2.0, "GetAttachmentUrl": 2.0, "SendMessage + 1 attachment": 3.0}
THUMBNAIL_P99_S = 2.0
PHOTO_SIZE = (2309, 1732)  # 4.0 megapixels
READY_WITHIN = 30.0


def photo() -> bytes:
    """A 4-megapixel JPEG with a camera photo's entropy (noise over a gradient)."""
    from PIL import Image

    noise = Image.effect_noise(PHOTO_SIZE, 40).convert("RGB")
    gradient = Image.linear_gradient("L").resize(PHOTO_SIZE).convert("RGB")
    out = io.BytesIO()
    Image.blend(noise, gradient, 0.5).save(out, "JPEG", quality=88)
    return out.getvalue()


def post_form(url: str, fields: Mapping[str, str], data: bytes) -> int:
    """A multipart/form-data upload (the fields, then the file), as a browser sends it."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="f"\r\n\r\n'.encode() + data + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, data=b"".join(parts), method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return int(resp.status)


def measure(client: Sequential, secret: str, calls: int, thumbnails: int,
            progress: Callable[[str], None],
            settle: Callable[[], object] = lambda: None) -> dict[str, Any]:
    stub = client.stub
    me = User("bench-attach", secret)
    conv = stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bench-peer"]), metadata=me.meta, timeout=30).conversation.id

    def create(content_type: str, size: int) -> Any:
        return stub.CreateUpload(chat_pb2.CreateUploadRequest(
            conversation_id=conv, filename="f", content_type=content_type, size_bytes=size),
            metadata=me.meta, timeout=30)

    def uploaded(data: bytes, content_type: str) -> str:
        ticket = create(content_type, len(data))
        if post_form(ticket.url, dict(ticket.fields), data) != 204:
            raise RuntimeError("the store refused an upload")
        return str(ticket.upload_id)

    def send(ids: list[str]) -> Any:
        return stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=conv, content="file", idempotency_key=uuid.uuid4().hex,
            attachment_ids=ids), metadata=me.meta, timeout=30).message

    out: dict[str, Any] = {"calls": calls, "thumbnails": thumbnails}
    settle()
    progress(f"attachments: CreateUpload, {calls} sequential calls ...")
    samples: list[float] = []
    for i in range(WARMUP + calls):
        start = time.perf_counter()
        create("application/pdf", len(PDF))
        if i >= WARMUP:
            samples.append(time.perf_counter() - start)
    out["CreateUpload"] = summarize(samples)

    progress(f"attachments: SendMessage with one attachment, {calls} calls ...")
    ids = [uploaded(PDF, "application/pdf") for _ in range(WARMUP + calls)]
    settle()  # statistics for the uploads just made (chat_bench.database.analyze)
    samples = []
    for i, upload_id in enumerate(ids):
        start = time.perf_counter()
        msg = send([upload_id])
        if i >= WARMUP:
            samples.append(time.perf_counter() - start)
        if len(msg.attachments) != 1:
            raise RuntimeError("a send did not attach its upload")
    out["SendMessage + 1 attachment"] = summarize(samples)

    progress(f"attachments: GetAttachmentUrl, {calls} calls ...")
    samples = []
    for i in range(WARMUP + calls):
        start = time.perf_counter()
        stub.GetAttachmentUrl(chat_pb2.GetAttachmentUrlRequest(attachment_id=ids[0]),
                              metadata=me.meta, timeout=30)
        if i >= WARMUP:
            samples.append(time.perf_counter() - start)
    out["GetAttachmentUrl"] = summarize(samples)

    image = photo()
    out["photo_bytes"] = len(image)
    progress(f"attachments: {thumbnails} thumbnails of a {len(image) >> 10} KiB "
             f"4-megapixel JPEG ...")
    samples = []
    for _ in range(thumbnails):
        upload_id = uploaded(image, "image/jpeg")
        msg = send([upload_id])
        sent = time.perf_counter()
        while True:
            page = stub.GetMessages(chat_pb2.GetMessagesRequest(
                conversation_id=conv, after_seq=msg.seq - 1, limit=1),
                metadata=me.meta, timeout=30)
            if page.messages and page.messages[0].attachments[0].thumbnail_ready:
                samples.append(time.perf_counter() - sent)
                break
            if time.perf_counter() - sent > READY_WITHIN:
                raise RuntimeError(f"no thumbnail within {READY_WITHIN:g} s")
            time.sleep(0.005)
    out["thumbnail_ready"] = summarize(samples)
    return out


async def run(ctx: Context) -> dict[str, Any]:
    client = Sequential(ctx.target.grpc, ctx.target.http)
    try:
        return await asyncio.to_thread(measure, client, ctx.target.jwt_secret,
                                       ctx.settings["attachment_calls"],
                                       ctx.settings["thumbnails"], ctx.progress,
                                       partial(analyze, ctx.target.db_source))
    finally:
        client.close()


def _figure(figures: Mapping[str, Any], name: str, key: str) -> Any:
    return (figures.get(name) or {}).get(key)


def targets(figures: Mapping[str, Any]) -> list[Check]:
    out = [check(f"{name} mean", _figure(figures, name, "mean_ms"), f"<= {limit:g} ms",
                 at_most(limit), "ms") for name, limit in MEAN_TARGET_MS.items()]
    p99 = _figure(figures, "thumbnail_ready", "p99_ms")
    out.append(check("thumbnail ready p99 (4 MP JPEG)", None if p99 is None else p99 / 1000,
                     f"<= {THUMBNAIL_P99_S:g} s", at_most(THUMBNAIL_P99_S), "s"))
    return out


def details(figures: Mapping[str, Any]) -> list[str]:
    rows = []
    for name in (*MEAN_TARGET_MS, "thumbnail_ready"):
        s = figures.get(name) or {}
        rows.append([name, *(fmt(s.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"))])
    return [f"Attachments, {figures['calls']} sequential gRPC calls each; thumbnail ready after "
            f"the send for {figures['thumbnails']} 4-megapixel JPEGs "
            f"({(figures.get('photo_bytes') or 0) >> 10} KiB), ms:", "",
            *table(["call", "p50", "p95", "p99", "mean"], rows)]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--attachment-calls", type=int,
                       help="sequential calls per attachment RPC (300)")
    group.add_argument("--thumbnails", type=int, help="4-megapixel JPEGs thumbnailed (50)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    calls = args.attachment_calls if args.attachment_calls is not None else (
        30 if args.quick else 300)
    thumbs = args.thumbnails if args.thumbnails is not None else (5 if args.quick else 50)
    return {"attachment_calls": calls, "thumbnails": thumbs}


PHASE = Phase(
    name="attachments", about="attachment RPCs (sequential) and thumbnail latency",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
