"""The GraphQL schema of ChatService: every RPC as a query or a mutation.

Each field that needs data makes one ChatService call through the shared pipeline
(``graphql_calls``); the types here only reshape the RPCs' answers for GraphQL:

- lists are Relay-style connections: ``first`` is the RPC's ``limit`` and ``after`` its
  ``page_token`` (``pageInfo.endCursor`` is the RPC's ``next_page_token``);
- 64-bit integers (``seq``, counts, sizes) are the ``Int64`` scalar, as GraphQL's ``Int`` is
  32-bit;
- ``viewer.conversations`` is GetConversations, whose one statement already carries each
  conversation's unread count and last message, so those fields cost nothing more;
- ``conversation(id)`` is GetConversation: the conversation as ``viewer.conversations``
  shows it (null with NOT_FOUND for a conversation the caller is not a member of, as
  everywhere); its ``messages`` is GetMessages and its ``thread`` GetThread, as in every
  Conversation;
- nested lists (``conversations { messages }``, ``messages { thread }``) are a call per
  item, which the loader of ``graphql_calls`` runs as one batch per level: one SQL
  statement for the level, whatever the page size;
- end-to-end encryption (docs/e2ee.md): bytes (a message's ciphertext body) are base64
  strings, as in proto3 JSON; keys and to-device bodies are the RPCs' strings as they are.

docs/graphql.md shows the schema and example operations; ``services/api/schema.graphql`` is
the committed SDL (``scripts/gen_graphql_schema.py``; a test fails when it is stale).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any, NewType

import strawberry
from google.protobuf.timestamp_pb2 import Timestamp
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig

from chat_api.service import page_tokens
from chat_api.transport.graphql_calls import GraphQLCaller
from chat_shared.protos.chat.v1 import chat_pb2

Info = strawberry.Info[GraphQLCaller, None]

Int64 = NewType("Int64", int)

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _parse_int64(value: object) -> int:
    # A JSON number or its decimal string (what proto3 JSON writes for int64).
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise GraphQLError("Int64 must be an integer or a decimal string")
    try:
        number = int(value)
    except ValueError:
        raise GraphQLError("Int64 must be an integer or a decimal string") from None
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise GraphQLError("Int64 is out of the 64-bit range")
    return number


INT64_SCALAR = strawberry.scalar(
    name="Int64", description="A 64-bit integer (sequence numbers, counts, sizes): a JSON "
                              "number in answers; a number or a decimal string in variables",
    serialize=int, parse_value=_parse_int64)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(ts: Timestamp) -> datetime:
    # Timestamp.ToDatetime is general and slow; the answers' timestamps are whole
    # microseconds (PostgreSQL's), so the arithmetic is exact.
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _optional_time(parent: Any, name: str) -> datetime | None:
    return _time(getattr(parent, name)) if parent.HasField(name) else None


# --- types ----------------------------------------------------------------------------------

@strawberry.type(description="Where a connection's page ends.")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page; null on the last page.")

    @staticmethod
    def of(token: str) -> PageInfo:
        return PageInfo(has_next_page=bool(token), end_cursor=token or None)


@strawberry.type
class Reaction:
    emoji: str
    count: int
    reacted_by_me: bool


@strawberry.type
class Attachment:
    id: strawberry.ID
    filename: str
    content_type: str
    size_bytes: Int64
    width: int
    height: int
    thumbnail_ready: bool


@strawberry.type(description="An end-to-end encrypted message's body, opaque to the server "
                             "(docs/e2ee.md).")
class Ciphertext:
    algorithm: str
    sender_device: str
    body: str = strawberry.field(description="The encrypted bytes, base64.")

    @staticmethod
    def of(c: chat_pb2.Ciphertext) -> Ciphertext:
        return Ciphertext(algorithm=c.algorithm, sender_device=c.sender_device,
                          body=base64.b64encode(c.body).decode())


@strawberry.input(description="An end-to-end encrypted message's body, as the sender's device "
                              "encrypted it.")
class CiphertextInput:
    algorithm: str
    sender_device: str
    body: str = strawberry.field(description="The encrypted bytes, base64.")

    def proto(self) -> chat_pb2.Ciphertext:
        try:
            body = base64.b64decode(self.body, validate=True)
        except binascii.Error:
            raise GraphQLError("ciphertext.body must be base64") from None
        return chat_pb2.Ciphertext(algorithm=self.algorithm, sender_device=self.sender_device,
                                   body=body)


@strawberry.type(description="A message, a tombstone (deleted: true) or a thread reply.")
class Message:
    id: strawberry.ID
    conversation_id: strawberry.ID
    sender_id: str
    content: str
    seq: Int64
    created_at: datetime
    edited_at: datetime | None
    version: int
    deleted: bool
    reactions: list[Reaction]
    attachments: list[Attachment]
    thread_root_id: strawberry.ID | None = strawberry.field(
        description="The root-level message this reply answers; null on a root-level message.")
    reply_count: Int64
    last_reply_at: datetime | None
    ciphertext: Ciphertext | None = strawberry.field(
        description="The encrypted body in an end-to-end encrypted conversation (content is "
                    "then empty); null on a plain message and on a tombstone.")

    @staticmethod
    def of(m: chat_pb2.Message) -> Message:
        return Message(
            id=strawberry.ID(m.id), conversation_id=strawberry.ID(m.conversation_id),
            sender_id=m.sender_id, content=m.content, seq=Int64(m.seq),
            created_at=_time(m.created_at), edited_at=_optional_time(m, "edited_at"),
            version=m.version, deleted=m.deleted,
            reactions=[Reaction(emoji=r.emoji, count=r.count, reacted_by_me=r.reacted_by_me)
                       for r in m.reactions],
            attachments=[Attachment(id=strawberry.ID(a.id), filename=a.filename,
                                    content_type=a.content_type,
                                    size_bytes=Int64(a.size_bytes), width=a.width,
                                    height=a.height, thumbnail_ready=a.thumbnail_ready)
                         for a in m.attachments],
            thread_root_id=strawberry.ID(m.thread_root_id) if m.thread_root_id else None,
            reply_count=Int64(m.reply_count),
            last_reply_at=_optional_time(m, "last_reply_at"),
            ciphertext=Ciphertext.of(m.ciphertext) if m.HasField("ciphertext") else None)

    @strawberry.field(description="This root-level message's thread (GetThread): its replies, "
                                  "newest first, or oldest first after `afterSeq`.")
    async def thread(self, info: Info, first: int = 20, after: str | None = None,
                     after_seq: Int64 | None = None) -> ThreadConnection | None:
        return await _thread(info, str(self.conversation_id), str(self.id), first, after,
                             after_seq)


@strawberry.type
class MessageEdge:
    cursor: str = strawberry.field(description="Resumes the listing after this message.")
    node: Message


@strawberry.type(description="A page of a conversation's messages (GetMessages).")
class MessageConnection:
    edges: list[MessageEdge]
    page_info: PageInfo


@strawberry.type
class ThreadEdge:
    node: Message


@strawberry.type(description="A thread's root and a page of its replies (GetThread).")
class ThreadConnection:
    root: Message
    edges: list[ThreadEdge]
    page_info: PageInfo


@strawberry.type(description="A conversation the caller is a member of.")
class Conversation:
    id: strawberry.ID
    title: str
    member_ids: list[str]
    created_at: datetime
    last_message_at: datetime | None
    last_seq: Int64
    last_pos: Int64 = strawberry.field(
        description="The conversation's last change position (real-time resume).")
    role: str = strawberry.field(description="The caller's role: owner, admin or member.")
    history_visible_to_new_members: bool
    encrypted: bool = strawberry.field(
        description="End-to-end encrypted (set at creation): messages carry ciphertext.")
    unread_count: Int64 | None = strawberry.field(
        description="Messages after the caller's read position; in `viewer.conversations` and "
                    "`conversation(id)`.")
    last_read_seq: Int64 | None = strawberry.field(
        description="The caller's read position; in `viewer.conversations` and "
                    "`conversation(id)`.")
    last_message: Message | None = strawberry.field(
        description="The newest message the caller may see; in `viewer.conversations` and "
                    "`conversation(id)`.")

    @strawberry.field(description="A page of messages (GetMessages): newest first; oldest "
                                  "first from `afterSeq` on (0: from the first message).")
    async def messages(self, info: Info, first: int = 20, after: str | None = None,
                       after_seq: Int64 | None = None,
                       include_thread_replies: bool = False) -> MessageConnection | None:
        request = chat_pb2.GetMessagesRequest(
            conversation_id=str(self.id), limit=first, page_token=after or "",
            include_thread_replies=include_thread_replies)
        if after_seq is not None:
            request.after_seq = after_seq
        resp = await info.context.call("GetMessages", request, chat_pb2.GetMessagesResponse)
        ascending = after_seq is not None
        if after:  # valid: the call accepted it
            ascending = page_tokens.parse_messages_token(after, str(self.id))[1]
        return MessageConnection(
            edges=[MessageEdge(cursor=page_tokens.messages_token(m.conversation_id, m.seq,
                                                                 ascending),
                               node=Message.of(m)) for m in resp.messages],
            page_info=PageInfo.of(resp.next_page_token))

    @strawberry.field(description="A thread of this conversation (GetThread).")
    async def thread(self, info: Info, root_id: strawberry.ID, first: int = 20,
                     after: str | None = None,
                     after_seq: Int64 | None = None) -> ThreadConnection | None:
        return await _thread(info, str(self.id), str(root_id), first, after, after_seq)

    @staticmethod
    def of(c: chat_pb2.Conversation,
           summary: chat_pb2.ConversationSummary | None = None) -> Conversation:
        return Conversation(
            id=strawberry.ID(c.id), title=c.title, member_ids=list(c.member_ids),
            created_at=_time(c.created_at),
            last_message_at=_optional_time(c, "last_message_at"), last_seq=Int64(c.last_seq),
            last_pos=Int64(c.last_pos), role=c.role,
            history_visible_to_new_members=c.history_visible_to_new_members,
            encrypted=c.encrypted,
            unread_count=None if summary is None else Int64(summary.unread_count),
            last_read_seq=None if summary is None else Int64(summary.last_read_seq),
            last_message=(Message.of(summary.last_message)
                          if summary is not None and summary.HasField("last_message")
                          else None))


@strawberry.type
class ConversationEdge:
    node: Conversation


@strawberry.type(description="A page of the caller's conversations, most recent activity "
                             "first (GetConversations).")
class ConversationConnection:
    edges: list[ConversationEdge]
    page_info: PageInfo


@strawberry.type(description="The caller.")
class Viewer:
    @strawberry.field(description="The caller's conversations (GetConversations), with unread "
                                  "counts and last messages.")
    async def conversations(self, info: Info, first: int = 20,
                            after: str | None = None) -> ConversationConnection | None:
        resp = await info.context.call(
            "GetConversations",
            chat_pb2.GetConversationsRequest(limit=first, page_token=after or ""),
            chat_pb2.GetConversationsResponse)
        return ConversationConnection(
            edges=[ConversationEdge(node=Conversation.of(s.conversation, s))
                   for s in resp.conversations],
            page_info=PageInfo.of(resp.next_page_token))


@strawberry.type
class Highlight:
    start: int = strawberry.field(description="First matched code point of the content.")
    end: int = strawberry.field(description="Code point after the match.")


@strawberry.type
class SearchHit:
    conversation_id: strawberry.ID
    message: Message
    highlights: list[Highlight]


@strawberry.type
class SearchEdge:
    node: SearchHit


@strawberry.type(description="Messages matching a search, best first (SearchMessages).")
class SearchConnection:
    edges: list[SearchEdge]
    page_info: PageInfo


@strawberry.type
class SignedUrl:
    url: str
    expires_at: datetime


@strawberry.type
class FormField:
    name: str
    value: str


@strawberry.type(description="Where and how to upload a file's bytes (a presigned POST).")
class UploadTicket:
    upload_id: strawberry.ID
    url: str
    method: str
    fields: list[FormField] = strawberry.field(
        description="Form fields to send with the file (the file part goes last).")
    expires_at: datetime


@strawberry.type
class ReadPosition:
    last_read_seq: Int64
    unread_count: Int64


@strawberry.type(description="A device's public keys (end-to-end encryption).")
class DeviceKeys:
    user_id: str
    device_id: str
    curve25519_key: str
    ed25519_key: str
    signature: str = strawberry.field(
        description="The Ed25519 key's signature of the device's keys.")

    @staticmethod
    def of(d: chat_pb2.DeviceKeys) -> DeviceKeys:
        return DeviceKeys(user_id=d.user_id, device_id=d.device_id,
                          curve25519_key=d.curve25519_key, ed25519_key=d.ed25519_key,
                          signature=d.signature)


@strawberry.type(description="A signed one-time (or fallback) key of a device.")
class OneTimeKey:
    key_id: str
    public_key: str
    signature: str


@strawberry.input(description="A signed one-time (or fallback) key to upload.")
class OneTimeKeyInput:
    key_id: str
    public_key: str
    signature: str

    def proto(self) -> chat_pb2.OneTimeKey:
        return chat_pb2.OneTimeKey(key_id=self.key_id, public_key=self.public_key,
                                   signature=self.signature)


@strawberry.input(description="A device of a conversation's member.")
class DeviceRefInput:
    user_id: str
    device_id: str


@strawberry.type(description="A key handed out by claimKeys: a one-time key, or the device's "
                             "fallback key when it has none left.")
class ClaimedKey:
    device: DeviceKeys
    one_time_key: OneTimeKey
    fallback: bool


@strawberry.input(description="An opaque message for one device (a room key, encrypted for "
                              "that device).")
class ToDeviceMessageInput:
    recipient_id: str
    recipient_device: str
    message_type: str
    body: str


@strawberry.type(description="A to-device message waiting for one of the caller's devices.")
class ToDeviceMessage:
    id: Int64
    recipient_id: str
    recipient_device: str
    sender_id: str
    sender_device: str
    message_type: str
    body: str
    created_at: datetime


# --- resolvers ------------------------------------------------------------------------------

async def _thread(info: Info, conversation_id: str, root_id: str, first: int,
                  after: str | None, after_seq: int | None) -> ThreadConnection:
    request = chat_pb2.GetThreadRequest(conversation_id=conversation_id, root_id=root_id,
                                        limit=first, page_token=after or "")
    if after_seq is not None:
        request.after_seq = after_seq
    resp = await info.context.call("GetThread", request, chat_pb2.GetThreadResponse)
    return ThreadConnection(root=Message.of(resp.root),
                            edges=[ThreadEdge(node=Message.of(m)) for m in resp.messages],
                            page_info=PageInfo.of(resp.next_page_token))


def _timestamp(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    return out


async def _message_change(info: Info, method: str, request: Any,
                          response_type: type[Any]) -> Message:
    resp = await info.context.call(method, request, response_type)
    return Message.of(resp.message)


@strawberry.type
class Query:
    @strawberry.field(description="The caller and what it sees.")
    def viewer(self) -> Viewer:
        return Viewer()

    @strawberry.field(description="One of the caller's conversations by its id "
                                  "(GetConversation), as `viewer.conversations` shows it; "
                                  "null with NOT_FOUND when the caller is not a member.")
    async def conversation(self, info: Info,
                           id: strawberry.ID) -> Conversation | None:  # noqa: A002
        resp = await info.context.call(
            "GetConversation", chat_pb2.GetConversationRequest(conversation_id=id),
            chat_pb2.GetConversationResponse)
        return Conversation.of(resp.conversation.conversation, resp.conversation)

    @strawberry.field(description="Full-text search over the caller's conversations "
                                  "(SearchMessages).")
    async def search(self, info: Info, query: str, conversation_id: strawberry.ID | None = None,
                     sender_id: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, first: int = 20,
                     after: str | None = None) -> SearchConnection | None:
        request = chat_pb2.SearchMessagesRequest(query=query, limit=first,
                                                 page_token=after or "")
        if conversation_id is not None:
            request.conversation_id = conversation_id
        if sender_id is not None:
            request.sender_id = sender_id
        if since is not None:
            request.after.CopyFrom(_timestamp(since))
        if until is not None:
            request.before.CopyFrom(_timestamp(until))
        resp = await info.context.call("SearchMessages", request,
                                       chat_pb2.SearchMessagesResponse)
        return SearchConnection(
            edges=[SearchEdge(node=SearchHit(
                conversation_id=strawberry.ID(h.conversation_id), message=Message.of(h.message),
                highlights=[Highlight(start=x.start, end=x.end) for x in h.highlights]))
                for h in resp.hits],
            page_info=PageInfo.of(resp.next_page_token))

    @strawberry.field(description="A short-lived download URL of an attachment "
                                  "(GetAttachmentUrl).")
    async def attachment_url(self, info: Info, attachment_id: strawberry.ID,
                             thumbnail: bool = False) -> SignedUrl | None:
        resp = await info.context.call(
            "GetAttachmentUrl",
            chat_pb2.GetAttachmentUrlRequest(attachment_id=attachment_id, thumbnail=thumbnail),
            chat_pb2.GetAttachmentUrlResponse)
        return SignedUrl(url=resp.url, expires_at=_time(resp.expires_at))

    @strawberry.field(description="The devices of a conversation's members, or of one member "
                                  "(ListDevices; members only).")
    async def devices(self, info: Info, conversation_id: strawberry.ID,
                      user_id: str | None = None) -> list[DeviceKeys] | None:
        request = chat_pb2.ListDevicesRequest(conversation_id=conversation_id)
        if user_id is not None:
            request.user_id = user_id
        resp = await info.context.call("ListDevices", request, chat_pb2.ListDevicesResponse)
        return [DeviceKeys.of(d) for d in resp.devices]

    @strawberry.field(description="The to-device messages waiting for one of the caller's "
                                  "devices, oldest first, after `afterId` "
                                  "(GetToDeviceMessages).")
    async def to_device_messages(self, info: Info, device_id: str, after_id: Int64 = Int64(0),
                                 first: int = 20) -> list[ToDeviceMessage] | None:
        resp = await info.context.call(
            "GetToDeviceMessages",
            chat_pb2.GetToDeviceMessagesRequest(device_id=device_id, after_id=after_id,
                                                limit=first),
            chat_pb2.GetToDeviceMessagesResponse)
        return [ToDeviceMessage(id=Int64(m.id), recipient_id=m.recipient_id,
                                recipient_device=m.recipient_device, sender_id=m.sender_id,
                                sender_device=m.sender_device, message_type=m.message_type,
                                body=m.body, created_at=_time(m.created_at))
                for m in resp.messages]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="A new conversation, or the existing direct one "
                                     "(CreateConversation).")
    async def create_conversation(self, info: Info, member_ids: list[str], title: str = "",
                                  history_visible_to_new_members: bool | None = None,
                                  encrypted: bool = False) -> Conversation | None:
        request = chat_pb2.CreateConversationRequest(member_ids=member_ids, title=title,
                                                     encrypted=encrypted)
        if history_visible_to_new_members is not None:
            request.history_visible_to_new_members = history_visible_to_new_members
        resp = await info.context.call("CreateConversation", request,
                                       chat_pb2.CreateConversationResponse)
        return Conversation.of(resp.conversation)

    @strawberry.mutation(description="Sends a message (SendMessage). A retry with the same "
                                     "idempotencyKey sends nothing: it fails with "
                                     "ALREADY_EXISTS naming the original message. "
                                     "content may be empty with attachmentIds, and is "
                                     "replaced by ciphertext in an end-to-end encrypted "
                                     "conversation.")
    async def send_message(self, info: Info, conversation_id: strawberry.ID,
                           idempotency_key: str, content: str = "",
                           thread_root_id: strawberry.ID | None = None,
                           attachment_ids: list[strawberry.ID] | None = None,
                           ciphertext: CiphertextInput | None = None) -> Message | None:
        request = chat_pb2.SendMessageRequest(
            conversation_id=conversation_id, content=content, idempotency_key=idempotency_key,
            thread_root_id=thread_root_id or "", attachment_ids=attachment_ids or [])
        if ciphertext is not None:
            request.ciphertext.CopyFrom(ciphertext.proto())
        return await _message_change(info, "SendMessage", request,
                                     chat_pb2.SendMessageResponse)

    @strawberry.mutation(description="Moves the caller's read position (MarkAsRead).")
    async def mark_as_read(self, info: Info, conversation_id: strawberry.ID,
                           up_to_seq: Int64) -> ReadPosition | None:
        resp = await info.context.call(
            "MarkAsRead",
            chat_pb2.MarkAsReadRequest(conversation_id=conversation_id, up_to_seq=up_to_seq),
            chat_pb2.MarkAsReadResponse)
        return ReadPosition(last_read_seq=Int64(resp.last_read_seq),
                            unread_count=Int64(resp.unread_count))

    @strawberry.mutation(description="EditMessage: the sender changes a message's content.")
    async def edit_message(self, info: Info, conversation_id: strawberry.ID,
                           message_id: strawberry.ID, content: str) -> Message | None:
        return await _message_change(info, "EditMessage", chat_pb2.EditMessageRequest(
            conversation_id=conversation_id, message_id=message_id, content=content),
            chat_pb2.EditMessageResponse)

    @strawberry.mutation(description="DeleteMessage: the message becomes a tombstone.")
    async def delete_message(self, info: Info, conversation_id: strawberry.ID,
                             message_id: strawberry.ID) -> Message | None:
        return await _message_change(info, "DeleteMessage", chat_pb2.DeleteMessageRequest(
            conversation_id=conversation_id, message_id=message_id),
            chat_pb2.DeleteMessageResponse)

    @strawberry.mutation(description="AddReaction: the caller reacts with an emoji.")
    async def add_reaction(self, info: Info, conversation_id: strawberry.ID,
                           message_id: strawberry.ID, emoji: str) -> Message | None:
        return await _message_change(info, "AddReaction", chat_pb2.AddReactionRequest(
            conversation_id=conversation_id, message_id=message_id, emoji=emoji),
            chat_pb2.AddReactionResponse)

    @strawberry.mutation(description="RemoveReaction: the caller takes its reaction back.")
    async def remove_reaction(self, info: Info, conversation_id: strawberry.ID,
                              message_id: strawberry.ID, emoji: str) -> Message | None:
        return await _message_change(info, "RemoveReaction", chat_pb2.RemoveReactionRequest(
            conversation_id=conversation_id, message_id=message_id, emoji=emoji),
            chat_pb2.RemoveReactionResponse)

    @strawberry.mutation(description="AddMembers: adds users to a conversation.")
    async def add_members(self, info: Info, conversation_id: strawberry.ID,
                          member_ids: list[str]) -> Conversation | None:
        resp = await info.context.call(
            "AddMembers",
            chat_pb2.AddMembersRequest(conversation_id=conversation_id, member_ids=member_ids),
            chat_pb2.AddMembersResponse)
        return Conversation.of(resp.conversation)

    @strawberry.mutation(description="RemoveMember: removes a member (or the caller leaves); "
                                     "true once the user is not a member.")
    async def remove_member(self, info: Info, conversation_id: strawberry.ID,
                            user_id: str) -> bool | None:
        await info.context.call(
            "RemoveMember",
            chat_pb2.RemoveMemberRequest(conversation_id=conversation_id, user_id=user_id),
            chat_pb2.RemoveMemberResponse)
        return True

    @strawberry.mutation(description="SetMemberRole: admin or member; true once set.")
    async def set_member_role(self, info: Info, conversation_id: strawberry.ID, user_id: str,
                              role: str) -> bool | None:
        await info.context.call(
            "SetMemberRole",
            chat_pb2.SetMemberRoleRequest(conversation_id=conversation_id, user_id=user_id,
                                          role=role),
            chat_pb2.SetMemberRoleResponse)
        return True

    @strawberry.mutation(description="UpdateConversation: title and history visibility; an "
                                     "argument left out is left as it is.")
    async def update_conversation(self, info: Info, conversation_id: strawberry.ID,
                                  title: str | None = None,
                                  history_visible_to_new_members: bool | None = None
                                  ) -> Conversation | None:
        request = chat_pb2.UpdateConversationRequest(conversation_id=conversation_id)
        if title is not None:
            request.title = title
        if history_visible_to_new_members is not None:
            request.history_visible_to_new_members = history_visible_to_new_members
        resp = await info.context.call("UpdateConversation", request,
                                       chat_pb2.UpdateConversationResponse)
        return Conversation.of(resp.conversation)

    @strawberry.mutation(description="CreateUpload: a presigned POST for one file; send the "
                                     "upload id in sendMessage's attachmentIds.")
    async def create_upload(self, info: Info, conversation_id: strawberry.ID, filename: str,
                            content_type: str, size_bytes: Int64) -> UploadTicket | None:
        resp = await info.context.call(
            "CreateUpload",
            chat_pb2.CreateUploadRequest(conversation_id=conversation_id, filename=filename,
                                         content_type=content_type, size_bytes=size_bytes),
            chat_pb2.CreateUploadResponse)
        return UploadTicket(upload_id=strawberry.ID(resp.upload_id), url=resp.url,
                            method=resp.method,
                            fields=[FormField(name=k, value=v) for k, v in resp.fields.items()],
                            expires_at=_time(resp.expires_at))

    @strawberry.mutation(description="RegisterDevice: registers (or re-registers with the same "
                                     "keys) one of the caller's devices.")
    async def register_device(self, info: Info, device_id: str, curve25519_key: str,
                              ed25519_key: str, signature: str) -> DeviceKeys | None:
        resp = await info.context.call(
            "RegisterDevice",
            chat_pb2.RegisterDeviceRequest(device_id=device_id, curve25519_key=curve25519_key,
                                           ed25519_key=ed25519_key, signature=signature),
            chat_pb2.RegisterDeviceResponse)
        return DeviceKeys.of(resp.device)

    @strawberry.mutation(description="UploadOneTimeKeys: adds signed one-time keys (and "
                                     "optionally the fallback key) of one of the caller's "
                                     "devices; the device's count of unclaimed keys.")
    async def upload_one_time_keys(self, info: Info, device_id: str,
                                   keys: list[OneTimeKeyInput],
                                   fallback_key: OneTimeKeyInput | None = None) -> int | None:
        request = chat_pb2.UploadOneTimeKeysRequest(device_id=device_id,
                                                    keys=[k.proto() for k in keys])
        if fallback_key is not None:
            request.fallback_key.CopyFrom(fallback_key.proto())
        resp = await info.context.call("UploadOneTimeKeys", request,
                                       chat_pb2.UploadOneTimeKeysResponse)
        return int(resp.one_time_key_count)

    @strawberry.mutation(description="ClaimKeys: one key of each listed device of the "
                                     "conversation's members (members only).")
    async def claim_keys(self, info: Info, conversation_id: strawberry.ID,
                         devices: list[DeviceRefInput]) -> list[ClaimedKey] | None:
        resp = await info.context.call(
            "ClaimKeys",
            chat_pb2.ClaimKeysRequest(conversation_id=conversation_id, devices=[
                chat_pb2.DeviceRef(user_id=d.user_id, device_id=d.device_id)
                for d in devices]),
            chat_pb2.ClaimKeysResponse)
        return [ClaimedKey(device=DeviceKeys.of(k.device),
                           one_time_key=OneTimeKey(key_id=k.one_time_key.key_id,
                                                   public_key=k.one_time_key.public_key,
                                                   signature=k.one_time_key.signature),
                           fallback=k.fallback) for k in resp.keys]

    @strawberry.mutation(description="RemoveDevice: removes one of the caller's devices with "
                                     "its keys and undelivered to-device messages; true once "
                                     "removed.")
    async def remove_device(self, info: Info, device_id: str) -> bool | None:
        await info.context.call("RemoveDevice", chat_pb2.RemoveDeviceRequest(device_id=device_id),
                                chat_pb2.RemoveDeviceResponse)
        return True

    @strawberry.mutation(description="SendToDevice: opaque messages to devices of the "
                                     "conversation's members (members only); how many were "
                                     "stored.")
    async def send_to_device(self, info: Info, conversation_id: strawberry.ID,
                             sender_device: str,
                             messages: list[ToDeviceMessageInput]) -> int | None:
        resp = await info.context.call(
            "SendToDevice",
            chat_pb2.SendToDeviceRequest(
                conversation_id=conversation_id, sender_device=sender_device,
                messages=[chat_pb2.ToDeviceMessage(
                    recipient_id=m.recipient_id, recipient_device=m.recipient_device,
                    message_type=m.message_type, body=m.body) for m in messages]),
            chat_pb2.SendToDeviceResponse)
        return int(resp.stored)

    @strawberry.mutation(description="AckToDeviceMessages: deletes the device's to-device "
                                     "messages up to an id; how many were deleted.")
    async def ack_to_device_messages(self, info: Info, device_id: str,
                                     up_to_id: Int64) -> int | None:
        resp = await info.context.call(
            "AckToDeviceMessages",
            chat_pb2.AckToDeviceMessagesRequest(device_id=device_id, up_to_id=up_to_id),
            chat_pb2.AckToDeviceMessagesResponse)
        return int(resp.deleted)


FIELD_RPCS: dict[str, str] = {
    "viewer.conversations": "GetConversations",
    "conversation": "GetConversation",
    "conversation.messages": "GetMessages",
    "conversation.thread": "GetThread",
    "Message.thread": "GetThread",
    "search": "SearchMessages",
    "attachmentUrl": "GetAttachmentUrl",
    "createConversation": "CreateConversation",
    "sendMessage": "SendMessage",
    "markAsRead": "MarkAsRead",
    "editMessage": "EditMessage",
    "deleteMessage": "DeleteMessage",
    "addReaction": "AddReaction",
    "removeReaction": "RemoveReaction",
    "addMembers": "AddMembers",
    "removeMember": "RemoveMember",
    "setMemberRole": "SetMemberRole",
    "updateConversation": "UpdateConversation",
    "createUpload": "CreateUpload",
    "devices": "ListDevices",
    "toDeviceMessages": "GetToDeviceMessages",
    "registerDevice": "RegisterDevice",
    "uploadOneTimeKeys": "UploadOneTimeKeys",
    "claimKeys": "ClaimKeys",
    "removeDevice": "RemoveDevice",
    "sendToDevice": "SendToDevice",
    "ackToDeviceMessages": "AckToDeviceMessages",
}
"""Which field calls which RPC: every RPC of chat.proto has one (a test checks it)."""


def config() -> StrawberryConfig:
    return StrawberryConfig(scalar_map={Int64: INT64_SCALAR})
