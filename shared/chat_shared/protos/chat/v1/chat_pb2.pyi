import datetime

from chat_shared.protos.buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Message(_message.Message):
    __slots__ = ("id", "conversation_id", "sender_id", "content", "seq", "created_at", "edited_at", "version", "deleted", "reactions", "attachments", "thread_root_id", "reply_count", "last_reply_at", "ciphertext")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EDITED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    REACTIONS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    THREAD_ROOT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_REPLY_AT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    conversation_id: str
    sender_id: str
    content: str
    seq: int
    created_at: _timestamp_pb2.Timestamp
    edited_at: _timestamp_pb2.Timestamp
    version: int
    deleted: bool
    reactions: _containers.RepeatedCompositeFieldContainer[Reaction]
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    thread_root_id: str
    reply_count: int
    last_reply_at: _timestamp_pb2.Timestamp
    ciphertext: Ciphertext
    def __init__(self, id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., content: _Optional[str] = ..., seq: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., edited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., deleted: _Optional[bool] = ..., reactions: _Optional[_Iterable[_Union[Reaction, _Mapping]]] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ..., thread_root_id: _Optional[str] = ..., reply_count: _Optional[int] = ..., last_reply_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ciphertext: _Optional[_Union[Ciphertext, _Mapping]] = ...) -> None: ...

class Ciphertext(_message.Message):
    __slots__ = ("algorithm", "sender_device", "body")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    sender_device: str
    body: bytes
    def __init__(self, algorithm: _Optional[str] = ..., sender_device: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class Reaction(_message.Message):
    __slots__ = ("emoji", "count", "reacted_by_me")
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REACTED_BY_ME_FIELD_NUMBER: _ClassVar[int]
    emoji: str
    count: int
    reacted_by_me: bool
    def __init__(self, emoji: _Optional[str] = ..., count: _Optional[int] = ..., reacted_by_me: _Optional[bool] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("id", "filename", "content_type", "size_bytes", "width", "height", "thumbnail_ready")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_READY_FIELD_NUMBER: _ClassVar[int]
    id: str
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    thumbnail_ready: bool
    def __init__(self, id: _Optional[str] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., thumbnail_ready: _Optional[bool] = ...) -> None: ...

class CreateUploadRequest(_message.Message):
    __slots__ = ("conversation_id", "filename", "content_type", "size_bytes")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    filename: str
    content_type: str
    size_bytes: int
    def __init__(self, conversation_id: _Optional[str] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class CreateUploadResponse(_message.Message):
    __slots__ = ("upload_id", "url", "method", "headers", "fields", "expires_at")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    url: str
    method: str
    headers: _containers.ScalarMap[str, str]
    fields: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, upload_id: _Optional[str] = ..., url: _Optional[str] = ..., method: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., fields: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAttachmentUrlRequest(_message.Message):
    __slots__ = ("attachment_id", "thumbnail")
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    attachment_id: str
    thumbnail: bool
    def __init__(self, attachment_id: _Optional[str] = ..., thumbnail: _Optional[bool] = ...) -> None: ...

class GetAttachmentUrlResponse(_message.Message):
    __slots__ = ("url", "expires_at")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("id", "title", "member_ids", "created_at", "last_message_at", "last_seq", "role", "history_visible_to_new_members", "last_pos", "encrypted")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGE_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_VISIBLE_TO_NEW_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LAST_POS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    member_ids: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    last_message_at: _timestamp_pb2.Timestamp
    last_seq: int
    role: str
    history_visible_to_new_members: bool
    last_pos: int
    encrypted: bool
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., member_ids: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_message_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ..., role: _Optional[str] = ..., history_visible_to_new_members: _Optional[bool] = ..., last_pos: _Optional[int] = ..., encrypted: _Optional[bool] = ...) -> None: ...

class ConversationSummary(_message.Message):
    __slots__ = ("conversation", "unread_count", "last_message", "last_read_seq")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    UNREAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    unread_count: int
    last_message: Message
    last_read_seq: int
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., unread_count: _Optional[int] = ..., last_message: _Optional[_Union[Message, _Mapping]] = ..., last_read_seq: _Optional[int] = ...) -> None: ...

class CreateConversationRequest(_message.Message):
    __slots__ = ("member_ids", "title", "history_visible_to_new_members", "encrypted")
    MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_VISIBLE_TO_NEW_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    member_ids: _containers.RepeatedScalarFieldContainer[str]
    title: str
    history_visible_to_new_members: bool
    encrypted: bool
    def __init__(self, member_ids: _Optional[_Iterable[str]] = ..., title: _Optional[str] = ..., history_visible_to_new_members: _Optional[bool] = ..., encrypted: _Optional[bool] = ...) -> None: ...

class CreateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("conversation_id", "content", "idempotency_key", "thread_root_id", "attachment_ids", "ciphertext")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    THREAD_ROOT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    content: str
    idempotency_key: str
    thread_root_id: str
    attachment_ids: _containers.RepeatedScalarFieldContainer[str]
    ciphertext: Ciphertext
    def __init__(self, conversation_id: _Optional[str] = ..., content: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., thread_root_id: _Optional[str] = ..., attachment_ids: _Optional[_Iterable[str]] = ..., ciphertext: _Optional[_Union[Ciphertext, _Mapping]] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class GetMessagesRequest(_message.Message):
    __slots__ = ("conversation_id", "limit", "page_token", "before_timestamp", "after_seq", "include_thread_replies")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BEFORE_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THREAD_REPLIES_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    limit: int
    page_token: str
    before_timestamp: _timestamp_pb2.Timestamp
    after_seq: int
    include_thread_replies: bool
    def __init__(self, conversation_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., before_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., after_seq: _Optional[int] = ..., include_thread_replies: _Optional[bool] = ...) -> None: ...

class GetMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetThreadRequest(_message.Message):
    __slots__ = ("conversation_id", "root_id", "limit", "page_token", "after_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    root_id: str
    limit: int
    page_token: str
    after_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., root_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class GetThreadResponse(_message.Message):
    __slots__ = ("root", "messages", "next_page_token")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    root: Message
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, root: _Optional[_Union[Message, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetConversationsRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetConversationsResponse(_message.Message):
    __slots__ = ("conversations", "next_page_token")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[ConversationSummary]
    next_page_token: str
    def __init__(self, conversations: _Optional[_Iterable[_Union[ConversationSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetConversationRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class GetConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: ConversationSummary
    def __init__(self, conversation: _Optional[_Union[ConversationSummary, _Mapping]] = ...) -> None: ...

class MarkAsReadRequest(_message.Message):
    __slots__ = ("conversation_id", "up_to_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    up_to_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., up_to_seq: _Optional[int] = ...) -> None: ...

class MarkAsReadResponse(_message.Message):
    __slots__ = ("last_read_seq", "unread_count")
    LAST_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    UNREAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    last_read_seq: int
    unread_count: int
    def __init__(self, last_read_seq: _Optional[int] = ..., unread_count: _Optional[int] = ...) -> None: ...

class AddMembersRequest(_message.Message):
    __slots__ = ("conversation_id", "member_ids")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    member_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_id: _Optional[str] = ..., member_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AddMembersResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("conversation_id", "user_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class RemoveMemberResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetMemberRoleRequest(_message.Message):
    __slots__ = ("conversation_id", "user_id", "role")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    role: str
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class SetMemberRoleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "title", "history_visible_to_new_members")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_VISIBLE_TO_NEW_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    title: str
    history_visible_to_new_members: bool
    def __init__(self, conversation_id: _Optional[str] = ..., title: _Optional[str] = ..., history_visible_to_new_members: _Optional[bool] = ...) -> None: ...

class UpdateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class EditMessageRequest(_message.Message):
    __slots__ = ("conversation_id", "message_id", "content")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message_id: str
    content: str
    def __init__(self, conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class EditMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class DeleteMessageRequest(_message.Message):
    __slots__ = ("conversation_id", "message_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class DeleteMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class AddReactionRequest(_message.Message):
    __slots__ = ("conversation_id", "message_id", "emoji")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message_id: str
    emoji: str
    def __init__(self, conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., emoji: _Optional[str] = ...) -> None: ...

class AddReactionResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class RemoveReactionRequest(_message.Message):
    __slots__ = ("conversation_id", "message_id", "emoji")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message_id: str
    emoji: str
    def __init__(self, conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., emoji: _Optional[str] = ...) -> None: ...

class RemoveReactionResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class SearchMessagesRequest(_message.Message):
    __slots__ = ("query", "conversation_id", "sender_id", "after", "before", "limit", "page_token")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query: str
    conversation_id: str
    sender_id: str
    after: _timestamp_pb2.Timestamp
    before: _timestamp_pb2.Timestamp
    limit: int
    page_token: str
    def __init__(self, query: _Optional[str] = ..., conversation_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Highlight(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("message", "conversation_id", "highlights")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHTS_FIELD_NUMBER: _ClassVar[int]
    message: Message
    conversation_id: str
    highlights: _containers.RepeatedCompositeFieldContainer[Highlight]
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., conversation_id: _Optional[str] = ..., highlights: _Optional[_Iterable[_Union[Highlight, _Mapping]]] = ...) -> None: ...

class SearchMessagesResponse(_message.Message):
    __slots__ = ("hits", "next_page_token")
    HITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    next_page_token: str
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeviceKeys(_message.Message):
    __slots__ = ("user_id", "device_id", "curve25519_key", "ed25519_key", "signature")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CURVE25519_KEY_FIELD_NUMBER: _ClassVar[int]
    ED25519_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    curve25519_key: str
    ed25519_key: str
    signature: str
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., curve25519_key: _Optional[str] = ..., ed25519_key: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class OneTimeKey(_message.Message):
    __slots__ = ("key_id", "public_key", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: str
    signature: str
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class RegisterDeviceRequest(_message.Message):
    __slots__ = ("device_id", "curve25519_key", "ed25519_key", "signature")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CURVE25519_KEY_FIELD_NUMBER: _ClassVar[int]
    ED25519_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    curve25519_key: str
    ed25519_key: str
    signature: str
    def __init__(self, device_id: _Optional[str] = ..., curve25519_key: _Optional[str] = ..., ed25519_key: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class RegisterDeviceResponse(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: DeviceKeys
    def __init__(self, device: _Optional[_Union[DeviceKeys, _Mapping]] = ...) -> None: ...

class UploadOneTimeKeysRequest(_message.Message):
    __slots__ = ("device_id", "keys", "fallback_key")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_KEY_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    keys: _containers.RepeatedCompositeFieldContainer[OneTimeKey]
    fallback_key: OneTimeKey
    def __init__(self, device_id: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[OneTimeKey, _Mapping]]] = ..., fallback_key: _Optional[_Union[OneTimeKey, _Mapping]] = ...) -> None: ...

class UploadOneTimeKeysResponse(_message.Message):
    __slots__ = ("one_time_key_count",)
    ONE_TIME_KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    one_time_key_count: int
    def __init__(self, one_time_key_count: _Optional[int] = ...) -> None: ...

class DeviceRef(_message.Message):
    __slots__ = ("user_id", "device_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...

class ClaimKeysRequest(_message.Message):
    __slots__ = ("conversation_id", "devices")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceRef]
    def __init__(self, conversation_id: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceRef, _Mapping]]] = ...) -> None: ...

class ClaimedKey(_message.Message):
    __slots__ = ("device", "one_time_key", "fallback")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ONE_TIME_KEY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    device: DeviceKeys
    one_time_key: OneTimeKey
    fallback: bool
    def __init__(self, device: _Optional[_Union[DeviceKeys, _Mapping]] = ..., one_time_key: _Optional[_Union[OneTimeKey, _Mapping]] = ..., fallback: _Optional[bool] = ...) -> None: ...

class ClaimKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ClaimedKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ClaimedKey, _Mapping]]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("conversation_id", "user_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceKeys]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceKeys, _Mapping]]] = ...) -> None: ...

class RemoveDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class RemoveDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ToDeviceMessage(_message.Message):
    __slots__ = ("id", "recipient_id", "recipient_device", "sender_id", "sender_device", "message_type", "body", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_DEVICE_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    recipient_id: str
    recipient_device: str
    sender_id: str
    sender_device: str
    message_type: str
    body: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., recipient_id: _Optional[str] = ..., recipient_device: _Optional[str] = ..., sender_id: _Optional[str] = ..., sender_device: _Optional[str] = ..., message_type: _Optional[str] = ..., body: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SendToDeviceRequest(_message.Message):
    __slots__ = ("conversation_id", "sender_device", "messages")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    sender_device: str
    messages: _containers.RepeatedCompositeFieldContainer[ToDeviceMessage]
    def __init__(self, conversation_id: _Optional[str] = ..., sender_device: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ToDeviceMessage, _Mapping]]] = ...) -> None: ...

class SendToDeviceResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    def __init__(self, stored: _Optional[int] = ...) -> None: ...

class GetToDeviceMessagesRequest(_message.Message):
    __slots__ = ("device_id", "after_id", "limit")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    after_id: int
    limit: int
    def __init__(self, device_id: _Optional[str] = ..., after_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class GetToDeviceMessagesResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ToDeviceMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ToDeviceMessage, _Mapping]]] = ...) -> None: ...

class AckToDeviceMessagesRequest(_message.Message):
    __slots__ = ("device_id", "up_to_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    up_to_id: int
    def __init__(self, device_id: _Optional[str] = ..., up_to_id: _Optional[int] = ...) -> None: ...

class AckToDeviceMessagesResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...
