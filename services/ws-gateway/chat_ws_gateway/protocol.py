"""The wire protocol of /v1/ws: JSON text frames, each an object with a ``type``.

Server -> client: the ordered changes (``message.created``, ``message.updated``,
``message.deleted``, ``reaction.added``, ``reaction.removed``, ``member.added``,
``member.removed``, ``member.role_changed``, ``conversation.updated``: each with its ``pos``),
``conversation.read``, ``to_device.created`` (on a socket opened for a device), ``resumed``,
``typing``, ``pong``, ``error``.
Client -> server: ``resume``, ``typing`` and ``ping``. Close codes are fixed here so
docs/websocket.md, the server and the demo client agree. Frames that several sockets receive are
encoded once (``encode``) and the same string is queued for each of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from chat_shared import events
from chat_shared.events import (
    CONVERSATION_READ,
    CONVERSATION_UPDATED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    MEMBER_ROLE_CHANGED,
    MESSAGE_TYPES,
    ORDERED_TYPES,
    REACTION_ADDED,
    REACTION_REMOVED,
    TO_DEVICE_CREATED,
    Event,
)
from chat_ws_gateway.history import StoredChange, StoredToDevice

# --- Close codes (4000-4999 are the application's range, RFC 6455 7.4.2) ---------------------
CLOSE_GOING_AWAY = 1001
"""The gateway is shutting down: reconnect (to another replica) and resume."""
CLOSE_TOKEN_EXPIRED = 4001
"""The access token expired during the connection: get a new token, reconnect, resume."""
CLOSE_SLOW_CONSUMER = 4008
"""The client did not read fast enough and its send queue overflowed: reconnect and resume."""

CLOSE_TOO_MANY_CONNECTIONS = 4029
"""The user already holds ``WS_MAX_CONNECTIONS_PER_USER`` sockets on this gateway: the new one
is closed at once. Close another (or wait) before reconnecting; do not retry in a loop."""
CLOSE_TENANT_DENIED = 4403
"""The token's tenant is not registered or is disabled (at connect, or disabled while the
socket was open: within WS_TENANT_CHECK_INTERVAL). Do not reconnect until the tenant is enabled
again."""
CLOSE_TOO_MANY_FRAMES = 4030
"""The client sent more than ``WS_MAX_INBOUND_FRAMES_PER_SECOND`` frames in a second: reconnect
after a pause, resume, and send fewer frames."""

CLOSE_CONNECT_RATE_LIMITED = 4031
"""The user opened sockets faster than RATE_LIMIT_CONNECT_RATE allows (burst
RATE_LIMIT_CONNECT_BURST, counted across every gateway replica), or its tenant as a whole did:
the new one is closed at once. The close reason says how many seconds to wait
(``retry after <s> s``); reconnect after that, with backoff."""

CLOSE_UNKNOWN_DEVICE = 4404
"""The socket's ``device_id`` is not a registered device of the user (never registered, or
removed): register it (RegisterDevice) before reconnecting with it, or connect without it."""

SUBPROTOCOL = "bearer"
"""Browsers offer the subprotocols ``["bearer", "<token>"]``; the server echoes ``bearer``."""

# --- Error codes of ``error`` frames -------------------------------------------------------
BAD_FRAME = "bad_frame"
UNKNOWN_TYPE = "unknown_type"
NOT_FOUND = "not_found"
CATCH_UP_FAILED = "unavailable"


class FrameError(Exception):
    """A client frame the server cannot act on; answered with an ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Resume:
    positions: dict[str, int]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Typing:
    conversation_id: str


ClientFrame = Resume | Ping | Typing


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def parse_client_frame(text: str, *, max_positions: int) -> ClientFrame:
    """The client frame in ``text``; raises FrameError naming what is wrong."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError(BAD_FRAME, "frame is not valid JSON") from exc
    if not isinstance(data, dict):
        raise FrameError(BAD_FRAME, "frame must be a JSON object")
    kind = data.get("type")
    if kind == "ping":
        return Ping()
    if kind == "typing":
        return Typing(_conversation_id(data.get("conversation_id"), "typing.conversation_id"))
    if kind != "resume":
        raise FrameError(UNKNOWN_TYPE, f"unknown frame type {str(kind)[:40]!r}; "
                                       "expected 'resume', 'typing' or 'ping'")
    positions = data.get("positions")
    if not isinstance(positions, dict):
        raise FrameError(BAD_FRAME, "resume.positions must be an object "
                                    "{conversation_id: last_seen_seq}")
    if len(positions) > max_positions:
        raise FrameError(BAD_FRAME, f"resume.positions has more than {max_positions} entries")
    out: dict[str, int] = {}
    for key, seq in positions.items():
        try:
            cid = str(uuid.UUID(key))
        except ValueError as exc:
            raise FrameError(BAD_FRAME, f"resume.positions: {key[:40]!r} is not a "
                                        "conversation id") from exc
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or seq >= 2**63:
            raise FrameError(BAD_FRAME, f"resume.positions[{cid}] must be an integer >= 0")
        out[cid] = seq
    return Resume(out)


def device_id(value: str | None) -> str | None:
    """The ``device_id`` query parameter as given (None when absent); raises ValueError when
    it cannot be a device id (the API's rule: 1 to 64 characters, no spaces or control
    characters)."""
    if value is None:
        return None
    if not 1 <= len(value) <= 64 or any(c <= " " or c == "\x7f" for c in value):
        raise ValueError("device_id must be 1 to 64 characters without spaces or control "
                         "characters")
    return value


def _conversation_id(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise FrameError(BAD_FRAME, f"{field} must be a conversation id")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise FrameError(BAD_FRAME, f"{field}: {value[:40]!r} is not a conversation id") from exc


def error_frame(code: str, message: str, **extra: Any) -> str:
    return encode({"type": "error", "code": code, "message": message, **extra})


def pong_frame() -> str:
    return encode({"type": "pong"})


def resumed_frame(conversation_id: str, pos: int) -> str:
    """Sent when a conversation's catch-up is complete up to ``pos``: live events follow.
    (``seq`` repeats ``pos`` for clients written when the two were the same.)"""
    return encode({"type": "resumed", "conversation_id": conversation_id, "pos": pos,
                   "seq": pos})


def event_frame(event: Event) -> str | None:
    """The frame of a live event, or None for an event type clients do not receive.

    The payload's fields go out as the writer wrote them (the event contract fixes their form,
    timestamps included); the envelope's ids come from the entry.
    """
    p = event.payload
    if event.type in ORDERED_TYPES:
        return change_frame(event.type, event.conversation_id, event.seq, p, event.event_id)
    if event.type == CONVERSATION_READ:
        return encode({"type": CONVERSATION_READ, "event_id": event.event_id,
                       "conversation_id": event.conversation_id,
                       "user_id": p.get("user_id"), "last_read_seq": p.get("last_read_seq"),
                       "read_at": p.get("read_at")})
    return None


def change_frame(event_type: str, conversation_id: str, pos: int, payload: Mapping[str, Any],
                 event_id: str | None) -> str:
    """The frame of an ordered change: its payload's fields beside ``type``, ``event_id``,
    ``conversation_id`` and ``pos``; a message change also has the message's ``seq``."""
    frame: dict[str, Any] = {**payload, "type": event_type, "event_id": event_id,
                             "conversation_id": conversation_id, "pos": pos}
    if event_type in MESSAGE_TYPES:
        frame["seq"] = (payload.get("message") or {}).get("seq")
    return encode(frame)


def stored_change_frame(change: StoredChange) -> str | None:
    """The frame of a change read from the log, rendered from the rows as they are now; None
    for a change the member does not see (about a message from before they joined a
    conversation that hides its history)."""
    t, cid = change.type, change.conversation_id
    payload: dict[str, Any]
    if change.message_id is not None and (
            change.message_seq is None or change.message_seq <= change.visible_from_seq):
        return None
    if t in MESSAGE_TYPES:
        assert change.created_at is not None and change.message_seq is not None
        payload = {"message": events.message(
            change.message_id or "", cid, change.sender_id or "",
            "" if change.deleted else change.content or "", change.message_seq,
            change.created_at, change.version or 1, change.edited_at, change.deleted,
            () if change.deleted else change.attachments or (), change.thread_root_id,
            None if change.deleted else change.ciphertext)}
    elif t in (REACTION_ADDED, REACTION_REMOVED):
        payload = {"conversation_id": cid, "message_id": change.message_id,
                   "user_id": change.user_id, "emoji": change.emoji}
    elif t in (MEMBER_ADDED, MEMBER_ROLE_CHANGED):
        payload = {"conversation_id": cid, "user_id": change.user_id, "role": change.role,
                   "actor_id": change.actor_id}
    elif t == MEMBER_REMOVED:
        payload = {"conversation_id": cid, "user_id": change.user_id,
                   "actor_id": change.actor_id}
    elif t == CONVERSATION_UPDATED:
        payload = {"conversation_id": cid, "title": change.title,
                   "history_visible_to_new_members": change.history_visible,
                   "actor_id": change.actor_id}
    else:
        return None
    return change_frame(t, cid, change.seq, payload, None)


def to_device_frame(message: StoredToDevice) -> str:
    """The frame of a to-device message, read from the device's mailbox: its ``id`` (what
    AckToDeviceMessages takes) and the message as GetToDeviceMessages returns it."""
    return encode({"type": TO_DEVICE_CREATED, "id": message.id,
                   "sender_id": message.sender_id, "sender_device": message.sender_device,
                   "message_type": message.message_type, "body": message.body,
                   "created_at": events.format_time(message.created_at)})
