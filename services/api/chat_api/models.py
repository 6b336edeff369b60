"""The API's domain records, free of protobuf and SQL types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReactionCount:
    emoji: str
    count: int
    reacted_by_me: bool


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """An attachment as a message shows it."""

    id: str
    filename: str
    content_type: str
    size_bytes: int
    width: int = 0
    height: int = 0
    thumbnail_ready: bool = False


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """An upload row as attaching and downloading need it."""

    id: str
    conversation_id: str
    uploader: str
    filename: str
    content_type: str
    size_bytes: int
    object_key: str
    attached: bool
    thumbnail_key: str | None = None
    attached_with_key: str | None = None
    """The idempotency key of the message it is attached to (a retried send names it again)."""


@dataclass(frozen=True, slots=True)
class StoredUpload:
    """An upload as the object store holds it (the send's probe): the send statement attaches
    the upload only when its row declares this size and type."""

    id: str
    size_bytes: int
    content_type: str


@dataclass(frozen=True, slots=True)
class CiphertextRecord:
    """An end-to-end encrypted message body: opaque to the server (docs/e2ee.md)."""

    algorithm: str
    sender_device: str
    body: bytes


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device's public keys, as registered (docs/e2ee.md)."""

    user_id: str
    device_id: str
    curve25519_key: str
    ed25519_key: str
    signature: str


@dataclass(frozen=True, slots=True)
class OneTimeKeyRecord:
    key_id: str
    public_key: str
    signature: str


@dataclass(frozen=True, slots=True)
class ClaimedKeyRecord:
    device: DeviceRecord
    key: OneTimeKeyRecord
    fallback: bool


@dataclass(frozen=True, slots=True)
class ToDeviceRecord:
    id: int
    recipient_id: str
    recipient_device: str
    sender_id: str
    sender_device: str
    message_type: str
    body: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    conversation_id: str
    sender_id: str
    content: str
    seq: int
    created_at: datetime
    version: int = 1
    edited_at: datetime | None = None
    deleted: bool = False
    reactions: tuple[ReactionCount, ...] = ()
    thread_root_id: str | None = None
    """The root-level message a reply answers; None on a root-level message."""
    reply_count: int = 0
    last_reply_at: datetime | None = None
    thread_seq: int | None = None
    """A reply's position in its thread (1, 2, ...): the cursor of GetThread's page tokens."""
    attachments: tuple[AttachmentRecord, ...] = ()
    ciphertext: CiphertextRecord | None = None
    """Set in an end-to-end encrypted conversation (``content`` is then "")."""


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: str
    title: str
    member_ids: list[str]
    created_at: datetime
    last_message_at: datetime | None
    last_seq: int
    role: str = ""
    """The caller's role: owner, admin or member."""
    history_visible_to_new_members: bool = True
    encrypted: bool = False
    """End-to-end encrypted: messages carry ciphertext only (docs/e2ee.md)."""
    last_pos: int = 0


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation: ConversationRecord
    last_read_seq: int
    last_message: MessageRecord | None
    last_activity_at: datetime
    deleted_unread: int = 0
    """Deleted messages after the read position: they do not count as unread."""

    @property
    def unread_count(self) -> int:
        return max(0, self.conversation.last_seq - self.last_read_seq - self.deleted_unread)


@dataclass(frozen=True, slots=True)
class ReadPosition:
    last_read_seq: int
    unread_count: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant's registry entry: whether it may use the service, and its own limits by name
    (a name it does not set takes the service's setting)."""

    id: str
    active: bool
    limits: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """A search query as engine-neutral text: ``tsquery`` is ``to_tsquery`` input whose every
    operand is one quoted word or phrase."""

    text: str
    """The query as the caller typed it."""
    tsquery: str


@dataclass(frozen=True, slots=True)
class SearchFilters:
    conversation_id: str | None = None
    sender_id: str | None = None
    after: datetime | None = None
    before: datetime | None = None


@dataclass(frozen=True, slots=True)
class SearchCursor:
    """Where the next page starts: strictly below this (score, message id)."""

    score: float
    message_id: str


@dataclass(frozen=True, slots=True)
class SearchHit:
    message: MessageRecord
    score: float
    highlights: tuple[tuple[int, int], ...]
    """[start, end) ranges of the content in code points."""
