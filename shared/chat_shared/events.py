"""The event contract: what travels outbox -> Redis Streams -> gateway and outside consumers.

This module is the contract's one description. The API writes events (the payload SQL comes
from ``payload_sql``), the relay publishes them (``entry_values``, also the field list of its Lua
script), the gateway and any other consumer read them (``decode_entry``, ``decode_payload``).

Events
------
An event is one change to a conversation, written to the ``outbox`` table in the transaction
that makes the change: both commit or neither does. Its ``event_id`` (a UUID) is fixed then, so
every publication of the event (after a relay crash, a retry, a dead-letter replay) carries the
same id.

Positions
---------
Every conversation has two gapless counters, both assigned under the conversation's row lock
in the transaction of the change:

- ``seq`` numbers its *messages*: 1, 2, 3, ... (a deleted message keeps its seq as a
  tombstone). It is the cursor of message pages and the basis of unread counts.
- ``pos`` numbers its *ordered changes*: every event of ``ORDERED_TYPES`` (a message created,
  updated or deleted, a reaction added or removed, a member added, removed or given a role, the
  conversation updated) takes the next pos: 1, 2, 3, ... with no gap and no duplicate.
  ``conversation.read`` and ``to_device.created`` are not ordered and take none. So in a
  conversation where only messages were ever sent, pos == seq.

The stream entry's ``seq`` field is the event's **pos** for an ordered event (the message
payload keeps the message's own ``seq``), the new read position for ``conversation.read``, and
the message's mailbox id for ``to_device.created``.
Each ordered change is also written to the permanent table ``conversation_changes`` (one row
per pos, references only, never content), so a consumer that knows the last pos it applied can
be brought to the current state by the changes after it, each rendered from the current rows:
a change to a message renders the message as it is now (a since-deleted message as its
tombstone), so replaying any suffix of the log in pos order ends in the server's state.

Types and payloads (JSON objects). Consumers ignore types and fields they do not know.

``message.created``: a message was sent::

    {"message": {"id": uuid, "conversation_id": uuid, "sender_id": string, "content": string,
                 "seq": integer, "created_at": timestamp, "version": integer,
                 "edited_at": timestamp or null, "deleted": boolean,
                 "attachments"?: [{"id": uuid, "filename": string, "content_type": string,
                                   "size_bytes": integer, "width": integer, "height": integer,
                                   "thumbnail_ready": boolean}],
                 "thread_root_id"?: uuid,
                 "ciphertext"?: {"algorithm": string, "sender_device": string,
                                 "body": string}}}

A field marked ``?`` may be absent, as in every event written before it existed; readers treat
an absent ``attachments`` as empty. ``attachments`` is there only on a message with attachments
(never on a tombstone: deleting a message erases them). ``thread_root_id`` is there only on a
thread reply (it names the root-level message the reply answers) and absent on a root-level
message. A reply is an ordered change like any message: it takes the next seq and the next pos,
and can be edited, deleted and reacted to like any message. ``ciphertext`` is there only on a
message of an end-to-end encrypted conversation (docs/e2ee.md): its ``content`` is then "", and
``body`` is the sender device's encrypted bytes in base64, stored and relayed unchanged.

``message.updated``: a message changed: its sender edited it (``version`` counts the edits,
from 1), or a thumbnail of one of its attachments became ready (``thumbnail_ready``, the
image's ``width`` and ``height``; the version stays). Either way it is an ordered change at a
new pos, and the payload is the whole message as it is now::

    {"message": {"id": uuid, "conversation_id": uuid, "sender_id": string, "content": string,
                 "seq": integer, "created_at": timestamp, "version": integer,
                 "edited_at": timestamp or null, "deleted": boolean,
                 "attachments"?: [{"id": uuid, "filename": string, "content_type": string,
                                   "size_bytes": integer, "width": integer, "height": integer,
                                   "thumbnail_ready": boolean}],
                 "thread_root_id"?: uuid,
                 "ciphertext"?: {"algorithm": string, "sender_device": string,
                                 "body": string}}}

``message.deleted``: a message became a tombstone (``content`` "", ``deleted`` true, no
attachments: their files are deleted from the store with it)::

    {"message": {"id": uuid, "conversation_id": uuid, "sender_id": string, "content": string,
                 "seq": integer, "created_at": timestamp, "version": integer,
                 "edited_at": timestamp or null, "deleted": boolean,
                 "attachments"?: [{"id": uuid, "filename": string, "content_type": string,
                                   "size_bytes": integer, "width": integer, "height": integer,
                                   "thumbnail_ready": boolean}],
                 "thread_root_id"?: uuid,
                 "ciphertext"?: {"algorithm": string, "sender_device": string,
                                 "body": string}}}

``reaction.added`` / ``reaction.removed``: a user's reaction with an emoji to a message::

    {"conversation_id": uuid, "message_id": uuid, "user_id": string, "emoji": string}

``member.added`` / ``member.role_changed``: ``user_id`` is a member now, with ``role``
(``owner``, ``admin`` or ``member``); ``actor_id`` made the change::

    {"conversation_id": uuid, "user_id": string, "role": string, "actor_id": string}

``member.removed``: ``user_id`` is no longer a member (left, when ``actor_id`` is the same
user); the removed user is among its recipients, and receives nothing of the conversation
after it::

    {"conversation_id": uuid, "user_id": string, "actor_id": string}

``conversation.updated``: the conversation's settings, as they are now::

    {"conversation_id": uuid, "title": string, "history_visible_to_new_members": boolean,
     "actor_id": string}

``conversation.read``: a member's read position moved forward; ``seq`` is the new position::

    {"conversation_id": uuid, "user_id": string, "last_read_seq": integer, "read_at": timestamp}

``to_device.created``: a to-device message (docs/e2ee.md) was stored in the mailbox of one
device, ``recipient_device`` of ``recipient_id`` (the event's one recipient); ``seq`` and ``id``
are its mailbox id. Not a change to the conversation (the one whose member sent it): it takes no
pos. The event refers to the message and never carries its body, which stays in the mailbox
only, so that once the device acknowledges it no copy is left (not in the outbox's retention,
not in the stream): a consumer reads the body from the mailbox, as the gateway does::

    {"id": integer, "recipient_id": string, "recipient_device": string}

A uuid is its canonical lower-case text. A timestamp is RFC 3339 text in UTC with microseconds
and a ``Z``, ``2026-11-27T10:00:00.123456Z`` (``format_time``). It is formatted once, by whoever
writes it (payload times by the SQL that writes the outbox row, ``occurred_at`` by the relay),
and readers pass it on unchanged.

Streams
-------
Events are appended to ``STREAM_SHARDS`` Redis streams named ``<prefix>:<shard>`` (prefix
``STREAM_PREFIX``, default ``chat:events``; with the default single shard the one stream is
``chat:events:0``). A conversation's shard is ``zlib.crc32(str(conversation_uuid).encode()) %
STREAM_SHARDS`` (``shard_of``), so all of a conversation's events are in one stream. The relay
trims each stream to about ``STREAM_MAXLEN`` entries (``XADD MAXLEN ~``).

Every entry has the fields of ``ENTRY_FIELDS``, all strings:
``event_id`` (uuid), ``type``, ``conversation_id`` (uuid), ``seq`` (decimal), ``occurred_at``
(timestamp: when the outbox row was written), ``recipients`` (JSON array of the member ids at
the time of the event), ``payload`` (compact JSON, as above), ``tenant`` (the tenant the
conversation belongs to: the recipients are user ids *of that tenant*, and a consumer routes
the event only to that tenant's users); and ``epoch`` (``EPOCH_FIELD``, see below). An entry
written before tenants existed has no ``tenant`` and belongs to the tenant ``default``.
Consumers ignore fields they do not know.

Stream epochs
-------------
A stream can lose entries without its consumers noticing from the entry ids alone: Redis
restarted without persistence, was flushed, or the key was deleted, and the relay recreated the
stream with new entries. Each stream therefore has an epoch, an opaque string kept in the Redis
key ``{<stream>}:epoch`` (``epoch_key``: ``{chat:events:0}:epoch``; the braces keep it in the
stream's hash slot on a Redis Cluster) and copied into the ``epoch``
field of every entry. The relay sets a new epoch whenever it appends to a stream that does not
exist, in the same script as the append, so every entry of a recreated stream carries the new
epoch. A consumer remembers the epoch of the last entry it processed; an entry with another
epoch (or a ``<stream>:epoch`` that differs from it) means the stream was recreated and entries
may be missing between the two: resynchronise (from the API, or have the stream refilled with
``chat-outbox republish``) before trusting positions again. Epochs are compared for equality
only.

Ordering and delivery
---------------------
- At least once: an outbox row is marked published only after Redis acknowledged its entry,
  so an event may be published twice (never lost); after a Redis fault the same event can
  appear more than once, with the same ``event_id``. Consumers must drop duplicates by
  ``event_id`` (for an ordered type, ``(conversation_id, seq)`` identifies it as well).
- Per conversation, the first publication of each event is in outbox order, which for the
  ordered types is ``pos`` order; a re-publication, a dead-letter replay or a
  ``chat-outbox republish`` can arrive after newer events (a republish itself appends each
  conversation's events in order).
- Published rows stay in PostgreSQL for ``OUTBOX_RETENTION`` (default 7 days):
  ``chat-outbox republish --since TIME`` (or ``--from-id ID``) appends them to their streams
  again, same ``event_id``, so a stream that lost entries within that window can be refilled.
"""

from __future__ import annotations

import functools
import re
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import (
    Any,
    NewType,
    TypeAlias,
    TypedDict,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

import orjson

from chat_shared.tenancy import DEFAULT_TENANT

__all__ = [
    "CONVERSATION_READ", "CONVERSATION_UPDATED", "DEFAULT_STREAM_PREFIX", "ENTRY_FIELDS",
    "EPOCH_FIELD", "MEMBER_ADDED", "MEMBER_REMOVED", "MEMBER_ROLE_CHANGED", "MESSAGE_CREATED",
    "MESSAGE_DELETED", "MESSAGE_TYPES", "MESSAGE_UPDATED", "ORDERED_TYPES", "PAYLOADS",
    "REACTION_ADDED", "REACTION_REMOVED", "TO_DEVICE_CREATED", "Attachment",
    "ConversationRead", "ConversationUpdated", "Event", "MemberChanged", "MemberRemoved",
    "Message", "MessageCreated", "MessageEvent", "Reaction", "Timestamp", "ToDeviceCreated",
    "UuidText", "conversation_read", "decode_entry", "decode_payload", "describe_payload",
    "encode_entry", "entry_values", "epoch_key", "format_time", "message", "message_created",
    "parse_time", "payload_sql", "shard_of", "stream_key", "stream_keys",
]

MESSAGE_CREATED = "message.created"
MESSAGE_UPDATED = "message.updated"
MESSAGE_DELETED = "message.deleted"
REACTION_ADDED = "reaction.added"
REACTION_REMOVED = "reaction.removed"
MEMBER_ADDED = "member.added"
MEMBER_REMOVED = "member.removed"
MEMBER_ROLE_CHANGED = "member.role_changed"
CONVERSATION_UPDATED = "conversation.updated"
CONVERSATION_READ = "conversation.read"
TO_DEVICE_CREATED = "to_device.created"

MESSAGE_TYPES = frozenset({MESSAGE_CREATED, MESSAGE_UPDATED, MESSAGE_DELETED})
"""The types whose payload is the message as it is (``{"message": ...}``)."""
ORDERED_TYPES = frozenset({*MESSAGE_TYPES, REACTION_ADDED, REACTION_REMOVED, MEMBER_ADDED,
                           MEMBER_REMOVED, MEMBER_ROLE_CHANGED, CONVERSATION_UPDATED})
"""The types that take a change position (``pos``, the entry's ``seq``): see "Positions"."""

# --- Payloads ---------------------------------------------------------------------------------

UuidText = NewType("UuidText", str)
"""A UUID as its canonical lower-case text."""
Timestamp = NewType("Timestamp", str)
"""RFC 3339 in UTC with microseconds and a ``Z``, as ``format_time`` writes it."""
OptionalTimestamp = NewType("OptionalTimestamp", object)
"""A ``Timestamp`` or null (JSON); in Python ``Timestamp | None``."""


class Attachment(TypedDict):
    id: UuidText
    filename: str
    content_type: str
    size_bytes: int
    width: int
    """Pixels, once the thumbnail worker has read the image; 0 before and for other files."""
    height: int
    thumbnail_ready: bool


class Ciphertext(TypedDict):
    algorithm: str
    sender_device: str
    body: str
    """The encrypted bytes in standard base64 (with padding), as proto3 JSON writes bytes."""


class _MessageFields(TypedDict):
    id: UuidText
    conversation_id: UuidText
    sender_id: str
    content: str
    seq: int
    created_at: Timestamp
    version: int
    edited_at: OptionalTimestamp
    deleted: bool


# The optional fields through ``total=False`` rather than ``NotRequired``: with postponed
# annotations, Python 3.11's TypedDict does not see a ``NotRequired`` inside the annotation text.
class Message(_MessageFields, total=False):
    attachments: list[Attachment]
    """Only on a message with attachments (so never on a tombstone)."""
    thread_root_id: UuidText
    """Only on a thread reply: the root-level message it answers."""
    ciphertext: Ciphertext
    """Only in an end-to-end encrypted conversation (``content`` is then "")."""


class MessageCreated(TypedDict):
    message: Message


MessageEvent = MessageCreated
"""The payload of every type of ``MESSAGE_TYPES``: the message as it is."""


class Reaction(TypedDict):
    conversation_id: UuidText
    message_id: UuidText
    user_id: str
    emoji: str


class MemberChanged(TypedDict):
    conversation_id: UuidText
    user_id: str
    role: str
    actor_id: str


class MemberRemoved(TypedDict):
    conversation_id: UuidText
    user_id: str
    actor_id: str


class ConversationUpdated(TypedDict):
    conversation_id: UuidText
    title: str
    history_visible_to_new_members: bool
    actor_id: str


class ConversationRead(TypedDict):
    conversation_id: UuidText
    user_id: str
    last_read_seq: int
    read_at: Timestamp


class ToDeviceCreated(TypedDict):
    id: int
    """The message's id in the device's mailbox (also the entry's ``seq``)."""
    recipient_id: str
    recipient_device: str


PAYLOADS: Mapping[str, type] = {
    MESSAGE_CREATED: MessageCreated, MESSAGE_UPDATED: MessageCreated,
    MESSAGE_DELETED: MessageCreated, REACTION_ADDED: Reaction, REACTION_REMOVED: Reaction,
    MEMBER_ADDED: MemberChanged, MEMBER_ROLE_CHANGED: MemberChanged,
    MEMBER_REMOVED: MemberRemoved, CONVERSATION_UPDATED: ConversationUpdated,
    CONVERSATION_READ: ConversationRead, TO_DEVICE_CREATED: ToDeviceCreated}
"""Every event type and the one description of its payload."""

_SQL_TIME = """to_char(({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
"""A timestamptz as ``format_time`` writes it (PostgreSQL's own JSON form trims zeros and
carries the session's offset, so the writer formats the text itself)."""
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_KIND_NAMES: Mapping[object, str] = {UuidText: "uuid", str: "string", int: "integer",
                                     Timestamp: "timestamp", bool: "boolean",
                                     OptionalTimestamp: "timestamp or null"}


@functools.cache
def _fields(shape: type) -> dict[str, Any]:
    # Cached: the shapes are fixed at import, and get_type_hints re-resolves every annotation
    # on each call (it was 90% of decode_payload's time, which consumers run per event).
    return get_type_hints(shape)


def _optional(shape: type) -> frozenset[str]:
    """The fields of a payload object that may be absent (``NotRequired``)."""
    return frozenset(getattr(shape, "__optional_keys__", ()))


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: ``2026-11-27T10:00:00.123456Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # isoformat, not strftime: %Y does not pad years before 1000 to four digits.
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """The aware datetime of a timestamp (the inverse of ``format_time``)."""
    return datetime.fromisoformat(text)


def message(id: str, conversation_id: str, sender_id: str, content: str, seq: int,
            created_at: datetime, version: int = 1, edited_at: datetime | None = None,
            deleted: bool = False, attachments: Sequence[Attachment] = (),
            thread_root_id: str | None = None, ciphertext: Ciphertext | None = None
            ) -> Message:
    """A message as events carry it (also the shape the gateway sends from PostgreSQL);
    ``attachments`` only when it has any."""
    out: Message = {
        "id": UuidText(id), "conversation_id": UuidText(conversation_id),
        "sender_id": sender_id, "content": content, "seq": seq,
        "created_at": Timestamp(format_time(created_at)), "version": version,
        "edited_at": OptionalTimestamp(None if edited_at is None else format_time(edited_at)),
        "deleted": deleted}
    if attachments:
        out["attachments"] = list(attachments)
    if thread_root_id is not None:
        out["thread_root_id"] = UuidText(thread_root_id)
    if ciphertext is not None:
        out["ciphertext"] = ciphertext
    return out


def message_created(msg: Message) -> MessageCreated:
    return {"message": msg}


def conversation_read(conversation_id: str, user_id: str, last_read_seq: int,
                      read_at: datetime) -> ConversationRead:
    return {"conversation_id": UuidText(conversation_id), "user_id": user_id,
            "last_read_seq": last_read_seq, "read_at": Timestamp(format_time(read_at))}


SqlFields: TypeAlias = Mapping[str, "str | SqlFields"]
"""SQL expressions by payload field; a nested payload object is a nested mapping."""


def payload_sql(event_type: str, expressions: SqlFields) -> str:
    """The ``jsonb_build_object(...)`` that writes ``event_type``'s payload in SQL.

    ``expressions`` gives the SQL expression of every field of the payload (nested objects as
    nested mappings), the fields of its description: a missing required field or an unknown
    field is a ValueError when the statement is built (at import), not a wrong event at run
    time. Timestamps are formatted here, in the statement, as ``format_time`` would. An
    optional field (``?``) may be left out, and is left out of the object where its expression
    is NULL.
    """
    return _object_sql(PAYLOADS[event_type], expressions, event_type)


def _object_sql(shape: type, expressions: SqlFields, where: str) -> str:
    fields = _fields(shape)
    optional = _optional(shape)
    if not set(fields) - optional <= set(expressions) <= set(fields):
        raise ValueError(f"{where}: the payload's fields are {sorted(fields)}, "
                         f"the SQL gives {sorted(expressions)}")
    parts: list[str] = []
    extra: list[str] = []
    for name, kind in fields.items():
        if name not in expressions:  # an optional field this writer never sets
            continue
        expression = expressions[name]
        if is_typeddict(kind) and not isinstance(expression, str):
            sql = _object_sql(kind, expression, f"{where}.{name}")
        elif is_typeddict(kind) and name in optional and isinstance(expression, str):
            # An optional object as one SQL expression that is the object or NULL (a jsonb
            # column kept in the payload's shape, e.g. ``messages.ciphertext``).
            sql = expression
        elif isinstance(expression, str) and (kind in _KIND_NAMES or get_origin(kind) is list):
            # A list is one SQL expression that builds the JSON array itself. A timestamp and
            # an optional one alike: to_char of NULL is NULL, JSON null.
            sql = (_SQL_TIME.format(expression) if kind in (Timestamp, OptionalTimestamp)
                   else expression)
        else:
            raise ValueError(f"{where}.{name}: expected {_describe(kind)}")
        (extra if name in optional else parts).append(f"'{name}', {sql}")
    built = f"jsonb_build_object({', '.join(parts)})"
    if extra:
        # Only the optional keys are stripped of NULLs: a required field stays as written.
        built = f"({built} || jsonb_strip_nulls(jsonb_build_object({', '.join(extra)})))"
    return built


def describe_payload(event_type: str) -> str:
    """The payload's shape as the module docstring shows it (a test keeps the two in step)."""
    return _describe(PAYLOADS[event_type])


def _describe(kind: object) -> str:
    if kind in _KIND_NAMES:
        return _KIND_NAMES[kind]
    if get_origin(kind) is list:
        return "[" + _describe(get_args(kind)[0]) + "]"
    optional = _optional(kind)  # type: ignore[arg-type]
    inner = ", ".join(f'"{name}"{"?" if name in optional else ""}: {_describe(k)}'
                      for name, k in _fields(kind).items())
    return "{" + inner + "}"


def decode_payload(event_type: str, payload: Any) -> Mapping[str, Any]:
    """The payload, checked against its description (exact fields, types, timestamp form).

    For consumers and tests that want the check; raises ValueError naming what differs
    (also for a type this module does not know: a consumer skips those instead).
    """
    shape = PAYLOADS.get(event_type)
    if shape is None:
        raise ValueError(f"unknown event type {event_type!r}")
    _check(shape, payload, event_type)
    return payload  # type: ignore[no-any-return]


def _check(kind: object, value: Any, where: str) -> None:
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is OptionalTimestamp:
        ok = value is None or (isinstance(value, str) and _TIMESTAMP.fullmatch(value) is not None)
    elif get_origin(kind) is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected {_describe(kind)}, got {value!r:.60}")
        for i, item in enumerate(value):
            _check(get_args(kind)[0], item, f"{where}[{i}]")
        return
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is UuidText:
        ok = isinstance(value, str) and _is_uuid_text(value)
    elif kind is Timestamp:
        ok = isinstance(value, str) and _TIMESTAMP.fullmatch(value) is not None
    else:
        fields = _fields(kind)
        required = set(fields) - _optional(kind)  # type: ignore[arg-type]
        if not isinstance(value, dict) or not required <= set(value) <= set(fields):
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"{where}: expected the fields {sorted(fields)}, got {got}")
        for name, k in fields.items():
            if name in value:
                _check(k, value[name], f"{where}.{name}")
        return
    if not ok:
        raise ValueError(f"{where}: expected {_describe(kind)}, got {value!r:.60}")


def _is_uuid_text(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# --- Events and stream entries ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: str
    conversation_id: str
    seq: int
    occurred_at: datetime
    recipients: list[str]
    payload: dict[str, Any] = field(default_factory=dict)
    tenant: str = DEFAULT_TENANT
    """The tenant of the conversation; ``recipients`` are user ids within it."""


DEFAULT_STREAM_PREFIX = "chat:events"

ENTRY_FIELDS = ("event_id", "type", "conversation_id", "seq", "occurred_at", "recipients",
                "payload", "tenant")
"""The fields of every stream entry, in the order ``entry_values`` gives them."""


EPOCH_FIELD = "epoch"
"""The entry field with the stream's epoch (set by the relay's script, not by ``entry_values``)."""


def shard_of(conversation_id: str, shards: int) -> int:
    """The stream shard of a conversation: CRC-32 of its canonical UUID text, modulo shards.

    CRC-32 is stable across processes, languages and versions (unlike Python's ``hash``), so
    any consumer can compute it: ``zlib.crc32(str(uuid).encode()) % shards``.
    """
    if shards <= 1:
        return 0
    return zlib.crc32(str(uuid.UUID(str(conversation_id))).encode("ascii")) % shards


def stream_key(conversation_id: str, shards: int, prefix: str = DEFAULT_STREAM_PREFIX) -> str:
    """The stream a conversation's events are appended to."""
    return f"{prefix}:{shard_of(conversation_id, shards)}"


def stream_keys(shards: int, prefix: str = DEFAULT_STREAM_PREFIX) -> list[str]:
    """Every stream of the layout, for consumers that read all of them."""
    return [f"{prefix}:{i}" for i in range(max(1, shards))]


def epoch_key(stream: str) -> str:
    """The Redis key that holds ``stream``'s epoch (see "Stream epochs"):
    ``{<stream>}:epoch``, whose hash tag is the stream's whole name, so on a Redis Cluster the
    two keys live in one hash slot (the relay's script writes both). A stream whose name
    already has a hash tag (a STREAM_PREFIX with braces) shares it: ``<stream>:epoch``."""
    if _hash_tag(stream) is not None:
        return f"{stream}:epoch"
    return f"{{{stream}}}:epoch"


def _hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it is not the whole key: the text between
    the first ``{`` and the first ``}`` after it, when that is not empty."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1:end]


def _json(value: Any) -> str:
    """Compact JSON, the one encoding of ``recipients`` and ``payload``."""
    return orjson.dumps(value).decode()


def entry_values(event: Event) -> tuple[str, str, str, str, str, str, str, str]:
    """The values of an event's stream entry, in ENTRY_FIELDS order (the relay's XADD)."""
    return (event.event_id, event.type, event.conversation_id, str(event.seq),
            format_time(event.occurred_at), _json(event.recipients), _json(event.payload),
            event.tenant)


def encode_entry(event: Event) -> dict[str, str]:
    """The stream entry of an event, field by field."""
    return dict(zip(ENTRY_FIELDS, entry_values(event), strict=True))


def decode_entry(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> Event:
    """An event from a stream entry's fields (str or bytes, as redis-py returns them)."""
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    missing = [name for name in ENTRY_FIELDS if name not in f and name != "tenant"]
    if missing:
        raise ValueError(f"stream entry lacks field(s) {missing}")
    return Event(
        event_id=f["event_id"],
        type=f["type"],
        conversation_id=f["conversation_id"],
        seq=int(f["seq"]),
        occurred_at=parse_time(f["occurred_at"]),
        recipients=list(orjson.loads(f["recipients"])),
        payload=dict(orjson.loads(f["payload"])),
        tenant=f.get("tenant") or DEFAULT_TENANT,
    )
