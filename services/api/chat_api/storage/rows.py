"""Row -> record conversions shared by the repositories."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Sequence
from typing import Any

from chat_api.models import AttachmentRecord, CiphertextRecord, MessageRecord, ReactionCount

ATTACHMENTS_AGG = """(SELECT jsonb_agg(jsonb_build_object(
        'id', a.id, 'filename', a.filename, 'content_type', a.content_type,
        'size_bytes', a.size_bytes, 'width', coalesce(a.width, 0),
        'height', coalesce(a.height, 0), 'thumbnail_ready', a.thumbnail_key IS NOT NULL)
        ORDER BY a.position)
    FROM attachments a WHERE a.tenant_id = {tenant} AND a.message_id = {message})"""
"""A message's attachments as one JSON array, NULL when it has none (one probe of
ix_attachments_message); the shape of ``chat_shared.events.Attachment``, so event payloads
(where the field is left out when NULL) use it as it is. ``.format(tenant=, message=)``."""

ATTACHMENTS_JSON = "coalesce(" + ATTACHMENTS_AGG + ", '[]'::jsonb)"
"""``ATTACHMENTS_AGG``, an empty array when there are none (the column ``message_from``
reads with ``attachments``, which takes ``ATTACHMENTS_AGG``'s NULL as none too: the reads
that return many messages use that, so that psycopg does not parse an empty JSON array for
each message without attachments)."""

MESSAGE_COLUMNS = 14
"""id, conversation_id, seq, sender_id, content, created_at, version, edited_at, deleted,
thread_root_id, reply_count, last_reply_at, thread_seq, ciphertext."""


def message_columns(alias: str, *, text_ids: bool = False) -> str:
    """The select list ``message_from`` reads, of the messages row ``alias`` (each column
    named as the table's, ``deleted`` for the tombstone flag).

    ``text_ids``: the three uuid columns as text, for a statement that only returns them (not
    for a CTE whose ids other parts of the statement compare with uuid columns). psycopg loads
    a uuid as a ``uuid.UUID`` (parsed in Python) that ``message_from`` then formats back to
    text, about 2.5 us for each id; text arrives as ``str`` through psycopg's C loader. A page
    of 50 messages carries 100 to 150 ids."""
    a = alias
    ids = (f"CAST({a}.id AS text) AS id, CAST({a}.conversation_id AS text) AS conversation_id"
           if text_ids else f"{a}.id, {a}.conversation_id")
    root = (f"CAST({a}.thread_root_id AS text) AS thread_root_id" if text_ids
            else f"{a}.thread_root_id")
    return (f"{ids}, {a}.seq, {a}.sender_id, {a}.content, "
            f"{a}.created_at, {a}.version, {a}.edited_at, {a}.deleted_at IS NOT NULL AS deleted, "
            f"{root}, {a}.reply_count, {a}.last_reply_at, {a}.thread_seq, "
            f"{a}.ciphertext")


def attachments_from(value: Any) -> tuple[AttachmentRecord, ...]:
    """The attachments of ``ATTACHMENTS_JSON`` or ``ATTACHMENTS_AGG`` (or of an event's
    message)."""
    if not value:
        return ()
    return tuple(AttachmentRecord(str(a["id"]), a["filename"], a["content_type"],
                                  int(a["size_bytes"]), int(a["width"]), int(a["height"]),
                                  bool(a["thumbnail_ready"])) for a in value)


def reactions_from(value: Any) -> tuple[ReactionCount, ...]:
    """The reactions of a message as ``storage.messages.reactions_sql`` aggregates them: JSON
    text of [emoji, count, whether the caller is among them] each, NULL for none (or that
    JSON already parsed)."""
    if not value:
        return ()
    if isinstance(value, str):
        return _parsed_reactions(value)
    return tuple([ReactionCount(e, n, mine) for e, n, mine in value])


@functools.lru_cache(maxsize=4096)
def _parsed_reactions(text: str) -> tuple[ReactionCount, ...]:
    """``reactions_from`` of the JSON text, parsed once per distinct text: the same few sets
    of reactions (one thumbs-up, by the caller or not) recur on message after message, and a
    page of 50 messages with two reactions each spent 250 us of the API's CPU parsing them
    (psycopg's jsonb loader, 2.5 us each) and 125 us building the same records again. The
    records are immutable, so messages share them."""
    return tuple([ReactionCount(e, n, mine) for e, n, mine in json.loads(text)])


def message_from(row: Sequence[Any], offset: int = 0, *, attachments: bool = False,
                 reactions: bool = False) -> MessageRecord:
    """A message from the columns of ``message_columns`` starting at ``offset`` in ``row``
    (and with ``attachments``, the attachments' JSON in the column after them; with
    ``reactions`` too, the aggregated reactions in the column after that).

    The reactions go into the record as it is built: a copy with them
    (``dataclasses.replace``) cost 7 us per message, so a page of 50 messages with reactions
    took 430 us more of the API's CPU to read than one without; 85 us now (fastest of 300
    interleaved timings each)."""
    root = row[offset + 9]
    thread_seq = row[offset + 12]
    aggregated = row[offset + MESSAGE_COLUMNS + 1] if reactions else None
    return MessageRecord(
        id=str(row[offset]),
        conversation_id=str(row[offset + 1]),
        seq=int(row[offset + 2]),
        sender_id=row[offset + 3],
        content=row[offset + 4],
        created_at=row[offset + 5],
        version=int(row[offset + 6]),
        edited_at=row[offset + 7],
        deleted=bool(row[offset + 8]),
        thread_root_id=str(root) if root is not None else None,
        reply_count=int(row[offset + 10]),
        last_reply_at=row[offset + 11],
        thread_seq=int(thread_seq) if thread_seq is not None else None,
        attachments=attachments_from(row[offset + MESSAGE_COLUMNS]) if attachments else (),
        ciphertext=ciphertext_from(row[offset + 13]),
        reactions=reactions_from(aggregated) if aggregated else (),
    )


def ciphertext_from(value: Any) -> CiphertextRecord | None:
    """The record of a ``messages.ciphertext`` value (the event payload's shape)."""
    if value is None:
        return None
    return CiphertextRecord(value["algorithm"], value["sender_device"],
                            base64.b64decode(value["body"]))


def ciphertext_json(value: CiphertextRecord | None) -> dict[str, str] | None:
    """The ``messages.ciphertext`` value of a record: the event payload's shape."""
    if value is None:
        return None
    return {"algorithm": value.algorithm, "sender_device": value.sender_device,
            "body": base64.b64encode(value.body).decode()}
