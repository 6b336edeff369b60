"""Opaque page tokens: base64url JSON naming what the next page continues from.

Opaque to clients (they only pass them back), but checked here: a token from another
conversation, another listing or with a tampered shape is INVALID_ARGUMENT, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from chat_shared.errors import InvalidArgument

MAX_TOKEN_LENGTH = 512


def encode(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, field: str = "page_token") -> dict[str, Any]:
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(field, "is not a valid page token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument(field, "is not a valid page token") from None
    if not isinstance(data, dict):
        raise InvalidArgument(field, "is not a valid page token")
    return data


def messages_token(conversation_id: str, seq: int, ascending: bool) -> str:
    return encode({"k": "m", "c": conversation_id, "s": seq, "a": ascending})


def parse_messages_token(token: str, conversation_id: str) -> tuple[int, bool]:
    data = decode(token)
    seq, ascending = data.get("s"), data.get("a")
    if (data.get("k") != "m" or data.get("c") != conversation_id or not isinstance(seq, int)
            or isinstance(seq, bool) or seq < 0 or not isinstance(ascending, bool)):
        raise InvalidArgument("page_token", "is not a valid page token for this conversation")
    return seq, ascending


def thread_token(conversation_id: str, root_id: str, thread_seq: int, ascending: bool) -> str:
    return encode({"k": "t", "c": conversation_id, "r": root_id, "s": thread_seq,
                   "a": ascending})


def parse_thread_token(token: str, conversation_id: str, root_id: str) -> tuple[int, bool]:
    data = decode(token)
    seq, ascending = data.get("s"), data.get("a")
    if (data.get("k") != "t" or data.get("c") != conversation_id or data.get("r") != root_id
            or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0
            or not isinstance(ascending, bool)):
        raise InvalidArgument("page_token", "is not a valid page token for this thread")
    return seq, ascending


def conversations_token(activity: datetime, conversation_id: str) -> str:
    return encode({"k": "c", "t": activity.isoformat(), "i": conversation_id})


def parse_conversations_token(token: str) -> tuple[datetime, str]:
    data = decode(token)
    try:
        if data.get("k") != "c":
            raise ValueError
        activity = datetime.fromisoformat(data["t"])
        conv = str(data["i"])
        if activity.tzinfo is None:
            raise ValueError
        uuid.UUID(conv)
    except (KeyError, ValueError, TypeError):
        raise InvalidArgument("page_token", "is not a valid page token for conversations") from None
    return activity, conv
