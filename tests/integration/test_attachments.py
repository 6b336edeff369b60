"""Attachments end to end through real gRPC, PostgreSQL and the S3 server: CreateUpload, the
store's own refusal of a wrong size or type, SendMessage with attachment_ids (size, type and
magic bytes checked, one message per upload), Message.attachments, GetAttachmentUrl for members
only, and a dead store.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.attachment_helpers import (  # noqa: F401 - fixtures
    PDF_BYTES,
    astub,
    attach_api,
    create_upload,
    fetch,
    jpeg_bytes,
    png_bytes,
    post_form,
    send_with,
    upload,
)
from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, error_info, get_messages, rpc_error


async def test_an_image_and_a_pdf_attached_and_downloaded(astub, db_source) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    png, pdf = png_bytes(), PDF_BYTES
    ids = [await upload(astub, "alice", conv.id, png, "image/png", "cat.png"),
           await upload(astub, "alice", conv.id, pdf, "application/pdf", "report.pdf")]
    msg = await send_with(astub, "alice", conv.id, ids)
    assert [(a.id, a.filename, a.content_type, a.size_bytes) for a in msg.attachments] == [
        (ids[0], "cat.png", "image/png", len(png)),
        (ids[1], "report.pdf", "application/pdf", len(pdf))]
    rows = await db_rows(db_source, "SELECT status, message_id::text, position, object_key"
                                    " FROM attachments ORDER BY position")
    assert [r[:3] for r in rows] == [("attached", msg.id, 1), ("attached", msg.id, 2)]
    assert rows[0][3] == f"default/{conv.id}/{ids[0]}"  # tenant-scoped key, not the filename
    # Bob, a member, sees them in the history and downloads both.
    page = await get_messages(astub, "bob", conv.id)
    assert [a.id for a in page.messages[0].attachments] == ids
    for attachment_id, body, disposition in ((ids[0], png, "inline"),
                                             (ids[1], pdf, "attachment")):
        resp = await astub.GetAttachmentUrl(
            chat_pb2.GetAttachmentUrlRequest(attachment_id=attachment_id), metadata=auth("bob"))
        status, got, headers = await fetch(resp.url)
        assert (status, got) == (200, body)
        assert headers["Content-Disposition"].startswith(disposition + "; filename=")
        assert 290 <= resp.expires_at.seconds - _now() <= 300


def _now() -> int:
    import time

    return int(time.time())


@pytest.mark.parametrize(("data", "override", "code"), [
    (b"\x89PNG\r\n\x1a\n" + b"x" * 100, {}, "EntityTooLarge"),
    (b"\x89PNG", {}, "EntityTooSmall"),
    (None, {"Content-Type": "text/html"}, "AccessDenied"),
])
async def test_the_store_refuses_an_upload_of_another_size_or_type(
        astub, data, override, code) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    good = png_bytes()
    ticket = await create_upload(astub, "alice", conv.id, good, "image/png")
    status, body = await post_form(ticket, data if data is not None else good, **override)
    assert status in (400, 403) and f"<Code>{code}</Code>" in body
    err = await rpc_error(send_with(astub, "alice", conv.id, [ticket.upload_id]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "UPLOAD_INCOMPLETE"


async def test_a_png_that_is_not_a_png_is_refused_at_send(astub, db_source) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    fake = b"<html><script>alert(1)</script></html>"
    upload_id = await upload(astub, "alice", conv.id, fake, "image/png", "x.png")
    err = await rpc_error(send_with(astub, "alice", conv.id, [upload_id]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "attachment_ids[0]" in err.details() and "not a image/png" in err.details()
    # Nothing was sent: no message, the upload still free.
    assert await db_rows(db_source, "SELECT count(*) FROM messages") == [(0,)]
    assert await db_rows(db_source, "SELECT status FROM attachments") == [("uploaded",)]


@pytest.mark.parametrize(("stored", "content_type"), [
    (PDF_BYTES + b"more", "application/pdf"),  # another size
    (PDF_BYTES, "text/plain"),  # another type
    (PDF_BYTES, "Application/PDF"),  # the declared type, in other case: the same type
])
async def test_an_object_stored_otherwise_than_declared_is_refused_at_send(
        astub, db_source, s3, stored, content_type) -> None:
    """The send statement attaches an upload only when its row declares the size and type the
    store holds it with (the probe's answer; the rows are not read before the send): an
    object put beside the upload form, of another size or type, is refused, and nothing is
    sent."""
    conv = await create_conversation(astub, "alice", ["bob"])
    ticket = await create_upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf")
    s3.client().put_object(Bucket=s3.bucket, Key=f"default/{conv.id}/{ticket.upload_id}",
                           Body=stored, ContentType=content_type)
    sent = send_with(astub, "alice", conv.id, [ticket.upload_id])
    if content_type.lower() == "application/pdf" and stored == PDF_BYTES:
        assert [a.id for a in (await sent).attachments] == [ticket.upload_id]
        return
    err = await rpc_error(sent)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "UPLOAD_MISMATCH"
    assert "attachment_ids[0]" in err.details() and "declared size and type" in err.details()
    assert await db_rows(db_source, "SELECT count(*) FROM messages") == [(0,)]
    assert await db_rows(db_source, "SELECT status FROM attachments") == [("uploaded",)]


async def test_an_upload_belongs_to_one_message(astub) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    upload_id = await upload(astub, "alice", conv.id, jpeg_bytes(), "image/jpeg")
    first = await send_with(astub, "alice", conv.id, [upload_id], key="k1")
    err = await rpc_error(send_with(astub, "alice", conv.id, [upload_id], key="k2"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "ATTACHMENT_ALREADY_USED"
    # A retry of the first send is still a retry: ALREADY_EXISTS naming the original.
    retry = await rpc_error(send_with(astub, "alice", conv.id, [upload_id], key="k1"))
    assert retry.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(retry).metadata["message_id"] == first.id


async def test_only_the_uploader_attaches_and_only_to_its_conversation(astub) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    other = await create_conversation(astub, "alice", ["carol"])
    upload_id = await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf")
    for caller, cid in (("bob", conv.id), ("alice", other.id)):
        err = await rpc_error(send_with(astub, caller, cid, [upload_id]))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err).reason == "UPLOAD_MISMATCH"
    # An upload not yet attached is only the uploader's to download.
    err = await rpc_error(astub.GetAttachmentUrl(
        chat_pb2.GetAttachmentUrlRequest(attachment_id=upload_id), metadata=auth("bob")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_uploads_are_invalid_arguments_naming_the_field(astub) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    cases = [
        (chat_pb2.CreateUploadRequest(conversation_id=conv.id, filename="a.exe",
                                      content_type="application/x-msdownload", size_bytes=10),
         "content_type"),
        (chat_pb2.CreateUploadRequest(conversation_id=conv.id, filename="big.pdf",
                                      content_type="application/pdf",
                                      size_bytes=(25 << 20) + 1), "size_bytes"),
        (chat_pb2.CreateUploadRequest(conversation_id=conv.id, filename="zero.pdf",
                                      content_type="application/pdf", size_bytes=0),
         "size_bytes"),
        (chat_pb2.CreateUploadRequest(conversation_id="nope", filename="a.pdf",
                                      content_type="application/pdf", size_bytes=1),
         "conversation_id"),
    ]
    for request, field in cases:
        err = await rpc_error(astub.CreateUpload(request, metadata=auth("alice")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert err.details().startswith(f"{field}:"), err.details()
    too_many = [str(uuid.uuid4()) for _ in range(11)]
    err = await rpc_error(send_with(astub, "alice", conv.id, too_many))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("attachment_ids:")


async def test_strangers_get_one_not_found(astub) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    upload_id = await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf")
    await send_with(astub, "alice", conv.id, [upload_id])
    answers = []
    for attachment_id in (upload_id, str(uuid.uuid4())):
        err = await rpc_error(astub.GetAttachmentUrl(
            chat_pb2.GetAttachmentUrlRequest(attachment_id=attachment_id),
            metadata=auth("mallory")))
        answers.append((err.code(), err.details()))
    assert answers[0] == answers[1] and answers[0][0] == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(create_upload(astub, "mallory", conv.id, PDF_BYTES, "application/pdf"))
    missing = await rpc_error(create_upload(astub, "mallory", str(uuid.uuid4()), PDF_BYTES,
                                            "application/pdf"))
    assert (err.code(), err.details()) == (missing.code(), missing.details())
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_filenames_are_sanitised(astub) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    upload_id = await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf",
                             "../../etc/\x00pass\nwd\u202e.pdf")
    msg = await send_with(astub, "alice", conv.id, [upload_id])
    name = msg.attachments[0].filename
    assert name == "_.._etc__pass_wd_.pdf"
    resp = await astub.GetAttachmentUrl(
        chat_pb2.GetAttachmentUrlRequest(attachment_id=upload_id), metadata=auth("bob"))
    _, _, headers = await fetch(resp.url)
    assert headers["Content-Disposition"] == (
        'attachment; filename="_.._etc__pass_wd_.pdf"; '
        "filename*=UTF-8''_.._etc__pass_wd_.pdf")


async def test_without_a_store_attachments_are_off(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(create_upload(stub, "alice", conv.id, PDF_BYTES, "application/pdf"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "ATTACHMENTS_DISABLED"
    err = await rpc_error(send_with(stub, "alice", conv.id, [str(uuid.uuid4())]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_dead_store_is_unavailable_only_for_uploads_the_caller_may_attach(
        api_settings_factory, s3) -> None:
    """The store is asked while the rows are read: its failure answers a send only for an
    upload the rows let the caller attach; anything else is refused as without a store."""
    from chat_api.app import build_app
    from chat_devtools.ports import closed_port

    env = {k.lower(): v for k, v in s3.env().items()}
    with closed_port() as port:
        env.update(s3_endpoint=f"http://127.0.0.1:{port}", s3_timeout="0.5")
        app = build_app(api_settings_factory(**env))
        await app.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
                stub = chat_pb2_grpc.ChatServiceStub(ch)
                conv = await create_conversation(stub, "alice", ["bob"])
                # Presigning is local: the upload is recorded, though never stored.
                ticket = await create_upload(stub, "alice", conv.id, PDF_BYTES,
                                             "application/pdf")
                err = await rpc_error(send_with(stub, "alice", conv.id, [ticket.upload_id]))
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                for caller, ids in (("bob", [ticket.upload_id]),
                                    ("alice", [ticket.upload_id, str(uuid.uuid4())])):
                    err = await rpc_error(send_with(stub, caller, conv.id, ids))
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
                    assert error_info(err).reason == "UPLOAD_MISMATCH"
        finally:
            await app.stop(grace=1.0)
