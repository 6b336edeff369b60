"""Messages of files alone, and a message's attachments wherever a Message is built.

A message has text, attachments or both: SendMessage takes an empty ``content`` when
``attachment_ids`` lists an upload, over gRPC and HTTP alike, and refuses a message with
neither (INVALID_ARGUMENT naming ``content``). Every read that returns a Message (the send's
answer, GetMessages, GetThread, GetConversations' ``last_message``, SearchMessages' hits,
EditMessage's and AddReaction's answers) and every event that carries one shows the same
attachments, in the order they were listed. Real gRPC, HTTP, PostgreSQL and S3 server.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chat_shared import events
from chat_shared.protos.chat.v1 import chat_pb2
from tests.attachment_helpers import (  # noqa: F401 - fixtures
    PDF_BYTES,
    astub,
    attach_api,
    jpeg_bytes,
    png_bytes,
    send_with,
    upload,
)
from tests.conftest import auth, make_token
from tests.helpers import create_conversation, db_rows, error_info, get_messages, rpc_error

REQUIRED = ("content: is required unless attachment_ids lists at least one upload or "
            "ciphertext is set")


def bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields of the google.rpc.BadRequest detail of a gRPC error."""
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    return []


async def http(app: Any, method: str, path: str, body: dict[str, Any] | None = None,
               user: str = "alice") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.request(
            method, f"http://127.0.0.1:{app.http_port}{path}", json=body,
            headers={"Authorization": f"Bearer {make_token(user)}"},
            timeout=aiohttp.ClientTimeout(total=20)) as resp:
        return resp.status, await resp.json()


def as_json(attachments: Any) -> list[dict[str, Any]]:
    """Proto attachments as the HTTP API renders them."""
    return [json_format.MessageToDict(a, preserving_proto_field_name=True,
                                      always_print_fields_with_no_presence=True)
            for a in attachments]


def as_event(attachments: Any) -> list[dict[str, Any]]:
    """Proto attachments as events carry them (chat_shared.events.Attachment)."""
    return [{"id": a.id, "filename": a.filename, "content_type": a.content_type,
             "size_bytes": a.size_bytes, "width": a.width, "height": a.height,
             "thumbnail_ready": a.thumbnail_ready} for a in attachments]


async def test_a_message_of_files_alone_is_sent_and_read_back(astub, db_source) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    upload_id = await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf", "a.pdf")
    msg = await send_with(astub, "alice", conv.id, [upload_id], content="", key="files-only")
    assert (msg.content, msg.seq, [a.id for a in msg.attachments]) == ("", 1, [upload_id])
    [shown] = (await get_messages(astub, "bob", conv.id)).messages
    assert shown == msg
    # A retry of it is a retry, as for any send.
    retry = await rpc_error(send_with(astub, "alice", conv.id, [upload_id], content="",
                                      key="files-only"))
    assert retry.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (error_info(retry).reason, error_info(retry).metadata["message_id"]) == (
        "DUPLICATE_REQUEST", msg.id)
    assert await db_rows(db_source, "SELECT content FROM messages") == [("",)]


async def test_a_message_with_neither_text_nor_files_is_refused(astub, db_source) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    upload_id = await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf")
    cases = [
        ("", [], REQUIRED),
        # Text that is only blanks is refused with or without files: send "" instead.
        (" \n ", [], "content: must not be only spaces and line breaks"),
        (" \n ", [upload_id], "content: must not be only spaces and line breaks"),
    ]
    for content, ids, message in cases:
        err = await rpc_error(send_with(astub, "alice", conv.id, ids, content=content))
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
        assert bad_request_fields(err) == ["content"]
    assert await db_rows(db_source, "SELECT count(*) FROM messages") == [(0,)]
    assert await db_rows(db_source, "SELECT status FROM attachments") == [("uploaded",)]


async def test_over_http_content_may_be_left_out_when_files_are_sent(astub, attach_api) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    upload_id = await upload(astub, "alice", conv.id, png_bytes(), "image/png", "dot.png")
    status, body = await http(attach_api, "POST", "/v1/messages", {
        "conversation_id": conv.id, "idempotency_key": "h1", "attachment_ids": [upload_id]})
    assert status == 200, body
    message = body["message"]
    assert message["content"] == "" and [a["id"] for a in message["attachments"]] == [upload_id]
    for refused in ({}, {"content": ""}, {"content": "", "attachment_ids": []}):
        status, body = await http(attach_api, "POST", "/v1/messages", {
            "conversation_id": conv.id, "idempotency_key": uuid.uuid4().hex, **refused})
        assert (status, body["message"]) == (400, REQUIRED), (refused, body)
        [bad] = [d for d in body["details"] if d["@type"].endswith("BadRequest")]
        assert [v["field"] for v in bad["field_violations"]] == ["content"]


async def test_without_a_store_a_message_of_files_alone_is_attachments_disabled(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(send_with(stub, "alice", conv.id, [str(uuid.uuid4())], content=""))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "ATTACHMENTS_DISABLED"


async def test_every_message_read_and_event_carries_the_same_attachments(
        astub, attach_api, db_source) -> None:
    a, b = auth("alice"), auth("bob")
    conv = await create_conversation(astub, "alice", ["bob"])
    ids = [await upload(astub, "alice", conv.id, png_bytes(), "image/png", "chart.png"),
           await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf", "notes.pdf")]
    root = await send_with(astub, "alice", conv.id, ids, content="quarterly figures")
    expected = list(root.attachments)
    assert [x.id for x in expected] == ids
    reacted = (await astub.AddReaction(chat_pb2.AddReactionRequest(
        conversation_id=conv.id, message_id=root.id, emoji="👍"), metadata=b)).message
    assert list(reacted.attachments) == expected

    # GetConversations' last message carries its attachments (its reactions are left out).
    [summary] = (await astub.GetConversations(chat_pb2.GetConversationsRequest(),
                                              metadata=b)).conversations
    assert summary.last_message.id == root.id
    assert list(summary.last_message.attachments) == expected
    assert len(summary.last_message.reactions) == 0
    shown = (await get_messages(astub, "bob", conv.id)).messages[0]
    del shown.reactions[:]
    assert summary.last_message == shown
    status, body = await http(attach_api, "GET", "/v1/conversations", user="bob")
    assert status == 200, body
    assert body["conversations"][0]["last_message"]["attachments"] == as_json(expected)

    edited = (await astub.EditMessage(chat_pb2.EditMessageRequest(
        conversation_id=conv.id, message_id=root.id, content="quarterly figures, final"),
        metadata=a)).message
    assert list(edited.attachments) == expected

    # A reply of a file alone in the root's thread.
    reply_upload = await upload(astub, "bob", conv.id, jpeg_bytes(), "image/jpeg", "me.jpg")
    reply = (await astub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=conv.id, idempotency_key="r1", thread_root_id=root.id,
        attachment_ids=[reply_upload]), metadata=b)).message
    assert reply.content == "" and [x.id for x in reply.attachments] == [reply_upload]

    thread = await astub.GetThread(chat_pb2.GetThreadRequest(
        conversation_id=conv.id, root_id=root.id), metadata=a)
    assert list(thread.root.attachments) == expected
    assert [list(m.attachments) for m in thread.messages] == [list(reply.attachments)]
    every = await astub.GetMessages(chat_pb2.GetMessagesRequest(
        conversation_id=conv.id, include_thread_replies=True, after_seq=0), metadata=a)
    assert [list(m.attachments) for m in every.messages] == [expected, list(reply.attachments)]
    [summary] = (await astub.GetConversations(chat_pb2.GetConversationsRequest(),
                                              metadata=a)).conversations
    assert summary.last_message == every.messages[1]

    hits = (await astub.SearchMessages(chat_pb2.SearchMessagesRequest(query="quarterly"),
                                       metadata=b)).hits
    assert [(h.message.id, list(h.message.attachments)) for h in hits] == [(root.id, expected)]

    # The events: message.created and message.updated (the edit) carry them as the reads do.
    rows = await db_rows(db_source, "SELECT event_type, payload FROM outbox"
                                    " WHERE event_type LIKE %s ORDER BY id", "message.%")
    carried = [(t, events.decode_payload(t, p)["message"]) for t, p in rows]
    assert [(t, m["id"], m.get("attachments")) for t, m in carried] == [
        (events.MESSAGE_CREATED, root.id, as_event(expected)),
        (events.MESSAGE_UPDATED, root.id, as_event(expected)),
        (events.MESSAGE_CREATED, reply.id, as_event(reply.attachments)),
    ]
