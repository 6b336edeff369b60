"""A batch of calls (``Dispatcher.call_many``: GraphQL's nested lists) answers each request
exactly as the call alone does.

The batch handlers read every page of a batch in one statement (``storage.messages``'s
``_BATCH_*``, ``storage.conversations._BY_IDS``), so this runs the same requests both ways,
through the whole pipeline, over conversations that hold what pages must get right: thread
replies (on the timeline or not), a deleted message (a tombstone), a deleted reply, an edit,
reactions, an end-to-end encrypted conversation (ciphertext), a member added after the history
was hidden from new members, an empty conversation, a conversation of other users and one that
does not exist; each listing newest first, oldest first from a seq, and continued from page
tokens of both directions. Every answer, message and error must be equal.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf.message import Message

from chat_api.transport.dispatch import CallContext
from chat_devtools.e2ee_client import E2EEDevice
from chat_shared.e2ee import MEGOLM_ALGORITHM
from chat_shared.errors import ChatError
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token
from tests.helpers import create_conversation, send

pytestmark = pytest.mark.timeout(120)


def _ctx(user: str, method: str) -> CallContext:
    return CallContext(method=method, transport="test",
                       authorization=f"Bearer {make_token(user)}")


def _outcome(answer: Message | ChatError) -> Any:
    return (answer.code, str(answer)) if isinstance(answer, ChatError) else answer


async def alone_and_batched(app: Any, user: str, method: str, requests: list[Message]
                            ) -> tuple[list[Any], list[Any]]:
    dispatcher = app.dispatcher
    alone = []
    for request in requests:
        try:
            alone.append(await dispatcher.call(_ctx(user, method), request))
        except ChatError as exc:
            alone.append(_outcome(exc))
    batched = [_outcome(a) for a in await dispatcher.call_many(_ctx(user, method), requests)]
    return alone, batched


async def _reply(stub, user: str, conversation_id: str, root_id: str, text: str
                 ) -> chat_pb2.Message:
    return (await stub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=conversation_id, content=text, idempotency_key=uuid.uuid4().hex,
        thread_root_id=root_id), metadata=auth(user))).message


@pytest.fixture
async def world(api, stub) -> dict[str, Any]:
    """Conversations of every kind a page must get right (module docstring)."""
    busy = await create_conversation(stub, "alice", ["bob"], "busy")
    roots = [await send(stub, "alice" if i % 2 else "bob", busy.id, f"root {i}")
             for i in range(7)]
    replies = [await _reply(stub, "bob", busy.id, roots[1].id, f"reply {i}") for i in range(5)]
    await _reply(stub, "alice", busy.id, roots[4].id, "another thread")
    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(
        conversation_id=busy.id, message_id=roots[2].id), metadata=auth("bob"))
    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(
        conversation_id=busy.id, message_id=replies[3].id), metadata=auth("bob"))
    await stub.EditMessage(chat_pb2.EditMessageRequest(
        conversation_id=busy.id, message_id=roots[3].id, content="edited"),
        metadata=auth("alice"))
    for user, emoji in (("alice", "👍"), ("bob", "👍"), ("bob", "🎉")):
        await stub.AddReaction(chat_pb2.AddReactionRequest(
            conversation_id=busy.id, message_id=roots[5].id, emoji=emoji), metadata=auth(user))

    hidden = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], title="hidden", history_visible_to_new_members=False),
        metadata=auth("alice"))).conversation
    before = [await send(stub, "alice", hidden.id, f"before {i}") for i in range(3)]
    await _reply(stub, "bob", hidden.id, before[0].id, "old reply")
    await stub.AddMembers(chat_pb2.AddMembersRequest(conversation_id=hidden.id,
                                                     member_ids=["carol"]),
                          metadata=auth("alice"))
    after = [await send(stub, "bob", hidden.id, f"after {i}") for i in range(3)]
    await _reply(stub, "carol", hidden.id, after[0].id, "new reply")

    device = E2EEDevice(stub, "alice", make_token("alice"))
    await device.register(one_time_keys=1)
    secret = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob", "carol"], title="secret", encrypted=True),
        metadata=auth("alice"))).conversation
    for i in range(3):
        await stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=secret.id, idempotency_key=uuid.uuid4().hex,
            ciphertext=chat_pb2.Ciphertext(algorithm=MEGOLM_ALGORITHM,
                                           sender_device=device.device_id,
                                           body=bytes([i, 0, 255]) + b"opaque")),
            metadata=auth("alice"))

    empty = await create_conversation(stub, "alice", ["carol"], "empty")
    others = await create_conversation(stub, "bob", ["dave"], "not alice's")
    await send(stub, "bob", others.id, "private")
    return {"busy": busy.id, "hidden": hidden.id, "secret": secret.id, "empty": empty.id,
            "others": others.id, "missing": str(uuid.uuid4()),
            "roots": [m.id for m in roots], "replies": [m.id for m in replies],
            "hidden_roots": [before[0].id, after[0].id]}


async def _continued(app: Any, user: str, requests: list[chat_pb2.GetMessagesRequest]
                     ) -> list[chat_pb2.GetMessagesRequest]:
    """The requests of the next pages of the requests' answers (those that have one)."""
    out = []
    for request in requests:
        try:
            answer = await app.dispatcher.call(_ctx(user, "GetMessages"), request)
        except ChatError:
            continue
        if answer.next_page_token:
            out.append(chat_pb2.GetMessagesRequest(
                conversation_id=request.conversation_id, limit=2,
                page_token=answer.next_page_token,
                include_thread_replies=request.include_thread_replies))
    return out


@pytest.mark.parametrize("user", ["alice", "carol"])
async def test_message_pages_in_a_batch_equal_each_page_alone(api, world, user):
    ids = [world[k] for k in ("busy", "hidden", "secret", "empty", "others", "missing")]
    kinds = [
        {}, {"limit": 2}, {"limit": 3, "after_seq": 0}, {"limit": 2, "after_seq": 3},
        {"after_seq": 100}, {"include_thread_replies": True},
        {"limit": 2, "include_thread_replies": True},
        {"limit": 3, "after_seq": 2, "include_thread_replies": True},
    ]
    for kind in kinds:
        requests = [chat_pb2.GetMessagesRequest(conversation_id=c, **kind) for c in ids]
        alone, batched = await alone_and_batched(api, user, "GetMessages", requests)
        assert batched == alone, kind
        # Continued from each page's token (backwards or forwards), all in one batch.
        continued = await _continued(api, user, requests)
        if continued:
            alone, batched = await alone_and_batched(api, user, "GetMessages", continued)
            assert batched == alone, ("continued", kind)
    # Whatever the mix: the batch groups requests by how they page.
    mixed = [chat_pb2.GetMessagesRequest(conversation_id=c, **kind)
             for c in ids for kind in kinds]
    alone, batched = await alone_and_batched(api, user, "GetMessages", mixed)
    assert batched == alone
    if user == "alice":  # the batch saw what matters, not only errors
        busy = alone[0]
        assert any(m.deleted for m in busy.messages) and any(m.reactions for m in busy.messages)
        assert any(m.ciphertext.body for m in alone[2 * len(kinds)].messages)


@pytest.mark.parametrize("user", ["alice", "carol"])
async def test_thread_pages_in_a_batch_equal_each_thread_alone(api, world, user):
    busy, hidden = world["busy"], world["hidden"]
    roots = [(busy, r) for r in world["roots"]] + [(hidden, r) for r in world["hidden_roots"]]
    roots += [(busy, world["replies"][0]),  # a reply: INVALID_ARGUMENT
              (busy, str(uuid.uuid4())),  # no such message
              (world["others"], world["roots"][1]),  # not a member there
              (hidden, world["roots"][1])]  # a message of another conversation
    kinds = [{}, {"limit": 2}, {"limit": 2, "after_seq": 0}, {"after_seq": 9},
             {"limit": 1, "after_seq": 10}]
    seen = 0
    for kind in kinds:
        requests = [chat_pb2.GetThreadRequest(conversation_id=c, root_id=r, **kind)
                    for c, r in roots]
        alone, batched = await alone_and_batched(api, user, "GetThread", requests)
        assert batched == alone, kind
        seen += sum(len(a.messages) for a in alone if isinstance(a, Message))
        tokens = []
        for (c, r), answer in zip(roots, alone, strict=True):
            if isinstance(answer, Message) and answer.next_page_token:
                tokens.append(chat_pb2.GetThreadRequest(conversation_id=c, root_id=r, limit=2,
                                                        page_token=answer.next_page_token))
        if tokens:
            alone, batched = await alone_and_batched(api, user, "GetThread", tokens)
            assert batched == alone, ("continued", kind)
    assert seen  # the batches held replies, not only errors


async def test_conversations_by_id_in_a_batch_equal_each_alone_and_the_list(api, world):
    ids = [world[k] for k in ("busy", "hidden", "secret", "empty", "others", "missing")]
    for user in ("alice", "bob", "carol"):
        requests = [chat_pb2.GetConversationRequest(conversation_id=c) for c in ids + ids[:2]]
        alone, batched = await alone_and_batched(api, user, "GetConversation", requests)
        assert batched == alone
        listed = {s.conversation.id: s for s in (await api.dispatcher.call(
            _ctx(user, "GetConversations"), chat_pb2.GetConversationsRequest())).conversations}
        for request, answer in zip(requests, alone, strict=True):
            if isinstance(answer, Message):
                assert answer.conversation == listed[request.conversation_id]
            else:
                assert answer[0] == "NOT_FOUND" and request.conversation_id not in listed


async def test_a_refused_request_fails_alone_in_its_batch(api, world):
    requests = [chat_pb2.GetMessagesRequest(conversation_id=world["busy"]),
                chat_pb2.GetMessagesRequest(conversation_id="not-a-uuid"),
                chat_pb2.GetMessagesRequest(conversation_id=world["busy"], limit=500),
                chat_pb2.GetMessagesRequest(conversation_id=world["empty"],
                                            page_token="garbage")]
    alone, batched = await alone_and_batched(api, "alice", "GetMessages", requests)
    assert batched == alone
    assert isinstance(alone[0], Message) and [a[0] for a in alone[1:]] == ["INVALID_ARGUMENT"] * 3
    # A caller without valid credentials: every request's error.
    answers = await api.dispatcher.call_many(
        CallContext(method="GetMessages", transport="test", authorization="Bearer nope"),
        requests)
    assert [a.code for a in answers] == ["UNAUTHENTICATED"] * 4
