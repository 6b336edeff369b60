"""Domain records -> chat.v1 protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from chat_api.models import ConversationRecord, ConversationSummary, MessageRecord
from chat_shared.protos.chat.v1 import chat_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    # Timestamp.FromDatetime is general (naive datetimes, rounding) and slow; the database
    # always returns aware datetimes with microseconds, so the arithmetic is exact here.
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def message(record: MessageRecord) -> chat_pb2.Message:
    return chat_pb2.Message(
        id=record.id, conversation_id=record.conversation_id, sender_id=record.sender_id,
        content=record.content, seq=record.seq, created_at=timestamp(record.created_at),
    )


def conversation(record: ConversationRecord) -> chat_pb2.Conversation:
    out = chat_pb2.Conversation(
        id=record.id, title=record.title, member_ids=record.member_ids,
        created_at=timestamp(record.created_at), last_seq=record.last_seq,
    )
    if record.last_message_at is not None:
        out.last_message_at.CopyFrom(timestamp(record.last_message_at))
    return out


def summary(record: ConversationSummary) -> chat_pb2.ConversationSummary:
    out = chat_pb2.ConversationSummary(
        conversation=conversation(record.conversation), unread_count=record.unread_count,
        last_read_seq=record.last_read_seq,
    )
    if record.last_message is not None:
        out.last_message.CopyFrom(message(record.last_message))
    return out
