"""``ChatExecutor``'s short path for plain fields answers what graphql-core's general path
answers: the same data for the API's schema over answers of every shape (nulls, lists,
nested objects, 64-bit numbers, times, ciphertext), and the same errors where a plain field
cannot be answered (a null where it may not be, a value its scalar refuses)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import strawberry
from google.protobuf.message import Message
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from chat_api.transport.graphql_executor import ChatExecutor
from chat_api.transport.graphql_schema import Mutation, Query, config
from chat_shared.protos.chat.v1 import chat_pb2


def _message(i: int, **extra: Any) -> chat_pb2.Message:
    m = chat_pb2.Message(id=f"m{i}", conversation_id="c1", sender_id=f"u{i % 3}",
                         content=f"hello {i}" if i % 4 else "", seq=(1 << 40) + i,
                         version=1 + i % 2, deleted=i % 5 == 0, reply_count=i,
                         thread_root_id="" if i % 2 else "m0", **extra)
    m.created_at.FromDatetime(datetime(2026, 1, 1, 12, i % 60, tzinfo=UTC))
    if i % 3 == 0:
        m.edited_at.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    if i % 2:
        m.reactions.add(emoji="👍", count=i, reacted_by_me=bool(i % 4))
        m.attachments.add(id=f"a{i}", filename="x.png", content_type="image/png",
                          size_bytes=1 << 33, width=10, height=20, thumbnail_ready=True)
    if i % 7 == 0:
        m.ciphertext.algorithm, m.ciphertext.sender_device = "m.megolm.v1", "D1"
        m.ciphertext.body = bytes(range(i % 256))
    return m


def _summary(i: int) -> chat_pb2.ConversationSummary:
    s = chat_pb2.ConversationSummary(unread_count=i, last_read_seq=i * 2)
    c = s.conversation
    c.id, c.title, c.role, c.last_seq, c.last_pos = f"c{i}", f"title {i}", "member", i, i + 1
    c.member_ids.extend(["alice", f"friend-{i}"])
    c.encrypted = i % 2 == 0
    c.created_at.FromDatetime(datetime(2025, 5, 5, tzinfo=UTC))
    if i % 3:
        c.last_message_at.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
        s.last_message.CopyFrom(_message(i))
    return s


class FakeCaller:
    """Answers each call from canned responses, as the pipeline would."""

    async def call(self, method: str, request: Message, response_type: type[Any]) -> Any:
        if method == "GetConversations":
            return chat_pb2.GetConversationsResponse(
                conversations=[_summary(i) for i in range(request.limit)],
                next_page_token="next")
        if method == "GetConversation":
            return chat_pb2.GetConversationResponse(conversation=_summary(4))
        if method == "GetMessages":
            return chat_pb2.GetMessagesResponse(
                messages=[_message(i) for i in range(request.limit)])
        if method == "GetThread":
            return chat_pb2.GetThreadResponse(root=_message(0),
                                              messages=[_message(i) for i in range(1, 3)])
        raise AssertionError(method)


OPERATIONS = [
    """{ viewer { conversations(first: 50) { edges { node { id title unreadCount lastReadSeq
        memberIds role encrypted lastSeq lastPos createdAt lastMessageAt
        historyVisibleToNewMembers
        lastMessage { id senderId content seq createdAt editedAt version deleted threadRootId
                      replyCount lastReplyAt
                      reactions { emoji count reactedByMe }
                      attachments { id filename contentType sizeBytes width height
                                    thumbnailReady }
                      ciphertext { algorithm senderDevice body } } } }
        pageInfo { hasNextPage endCursor } } } }""",
    """{ conversation(id: "c4") { id title __typename unreadCount
        messages(first: 9) { edges { cursor node { id seq content
            thread(first: 2) { root { id } edges { node { id content } } } } }
            pageInfo { hasNextPage } } } }""",
    """{ a: viewer { conversations(first: 3) { edges { node { id t: title } } } }
         b: viewer { conversations(first: 4) { edges { node { ...F } } } } }
       fragment F on Conversation { id title @include(if: false) unreadCount @skip(if: true)
                                    lastMessage { content } }""",
]


def _run(executor: type[Any], query: str, schema_types: tuple[Any, ...] = (Query, Mutation)
         ) -> Any:
    query_type, mutation_type = schema_types
    schema = strawberry.Schema(query=query_type, mutation=mutation_type, config=config(),
                               execution_context_class=executor)
    result = asyncio.run(schema.execute(query, context_value=FakeCaller()))
    errors = [(e.message, e.path) for e in result.errors or []]
    return result.data, errors


def test_the_short_path_answers_as_the_general_one() -> None:
    for query in OPERATIONS:
        fast = _run(ChatExecutor, query)
        general = _run(StrawberryGraphQLCoreExecutionContext, query)
        assert fast == general, query
        assert fast[0] is not None and not fast[1]


@strawberry.type
class Odd:
    name: str
    maybe: str | None
    count: int


@strawberry.type
class OddQuery:
    @strawberry.field
    def odd(self) -> list[Odd]:
        return [Odd(name="ok", maybe=None, count=1),
                Odd(name=None, maybe="x", count=2),  # type: ignore[arg-type]
                Odd(name="big", maybe=None, count=1 << 40)]  # beyond GraphQL's Int


def test_a_plain_field_it_cannot_answer_fails_as_in_the_general_path() -> None:
    query = "{ odd { name maybe count } }"
    fast = _run(ChatExecutor, query, (OddQuery, None))
    general = _run(StrawberryGraphQLCoreExecutionContext, query, (OddQuery, None))
    assert fast == general
    assert fast[1] and all(path[0] == "odd" for _, path in fast[1])


def test_plain_fields_take_the_short_path() -> None:
    from chat_api.transport.graphql_executor import _NOT_PLAIN, plain_value
    from chat_api.transport.graphql_schema import Conversation

    schema = strawberry.Schema(query=Query, mutation=Mutation, config=config())
    fields = schema._schema.type_map["Conversation"].fields  # type: ignore[union-attr]
    summary = _summary(1)
    node = Conversation.of(summary.conversation, summary)
    assert plain_value(fields["title"], node) == "title 1"
    assert plain_value(fields["unreadCount"], node) == 1
    assert plain_value(fields["lastMessageAt"], node) == "2026-01-01T00:00:00+00:00"
    assert plain_value(fields["messages"], node) is _NOT_PLAIN  # a resolver of ours
    assert plain_value(fields["lastMessage"], node) is _NOT_PLAIN  # an object
