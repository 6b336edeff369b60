"""Protobuf message -> the dict of its canonical JSON, fast, for the HTTP gateway's responses.

``json_format.MessageToDict`` reflects over every field of every message in pure Python: 2.4 ms
for a GetConversations page of 50 summaries, which made that call 1.7x slower over HTTP than
over gRPC. This printer builds a plan per message type once (which fields, how each converts)
and then only runs the plan. Its output is exactly MessageToDict's with
``preserving_proto_field_name=True, always_print_fields_with_no_presence=True``:

- fields without presence (proto3 scalars, repeated fields) always, fields with presence
  (messages, ``optional``, oneofs) only when set;
- 64-bit integers as strings, enums by name, bytes as base64, Timestamps as RFC 3339.

Types it does not cover (floats, maps, well-known types other than Timestamp) are handed to
``json_format`` whole, so every message still renders correctly; tests/unit/test_json_render.py
checks the equality on random instances of every chat.v1 message.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_FD = FieldDescriptor
_INT64 = {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64,
          _FD.TYPE_SFIXED64}
_AS_IS = {_FD.TYPE_INT32, _FD.TYPE_UINT32, _FD.TYPE_SINT32, _FD.TYPE_FIXED32,
          _FD.TYPE_SFIXED32, _FD.TYPE_BOOL, _FD.TYPE_STRING}
_TIMESTAMP = "google.protobuf.Timestamp"
_EPOCH = datetime(1970, 1, 1)
_MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z, the range Timestamp allows
_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z

Convert = Callable[[Any], Any]
# (field name: JSON key and attribute, converter, repeated, has presence)
Step = tuple[str, Convert, bool, bool]


class _Unsupported(Exception):
    """The message type uses something this printer leaves to json_format."""


_plans: dict[str, list[Step] | None] = {}
_building: set[str] = set()


def message_to_dict(message: Message) -> Any:
    """The canonical JSON value of ``message`` (see the module doc for the options).

    A dict for chat.v1 messages; a well-known type at the top is its own JSON form.
    """
    plan = _plan(message.DESCRIPTOR)
    if plan is None:
        return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    return _run(plan, message)


def _run(plan: list[Step], message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, convert, repeated, presence in plan:
        if presence and not message.HasField(key):
            continue
        value = getattr(message, key)
        if not repeated:
            out[key] = convert(value)
        elif convert is _identity:
            out[key] = list(value)  # e.g. member_ids: no per-item call
        else:
            out[key] = [convert(v) for v in value]
    return out


def _plan(descriptor: Descriptor) -> list[Step] | None:
    name = descriptor.full_name
    if name in _building:
        raise _Unsupported(name)  # a recursive type: left to json_format
    if name not in _plans and name.startswith("google.protobuf."):
        _plans[name] = None  # well-known types have JSON forms of their own
    if name not in _plans:
        _building.add(name)
        try:
            _plans[name] = [_step(f) for f in descriptor.fields]
        except _Unsupported:
            _plans[name] = None
        finally:
            _building.discard(name)
    return _plans[name]


def _step(field: FieldDescriptor) -> Step:
    repeated = field.is_repeated
    return (field.name, _converter(field), repeated, field.has_presence and not repeated)


def _converter(field: FieldDescriptor) -> Convert:
    kind = field.type
    if kind in _AS_IS:
        return _identity
    if kind in _INT64:
        return str
    if kind == _FD.TYPE_BYTES:
        return _base64
    if kind == _FD.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda v: names.get(v, v)
    if kind == _FD.TYPE_MESSAGE:
        sub = field.message_type
        if sub.GetOptions().map_entry:
            raise _Unsupported(field.full_name)
        if sub.full_name == _TIMESTAMP:
            return _timestamp
        plan = _plan(sub)
        if plan is None:
            raise _Unsupported(field.full_name)
        return lambda v: _run(plan, v)
    raise _Unsupported(field.full_name)  # float and double: json_format's formatting rules


def _identity(value: Any) -> Any:
    return value


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _timestamp(value: Any) -> str:
    """Timestamp.ToJsonString's text, without its general-purpose normalization steps."""
    seconds, nanos = value.seconds, value.nanos
    if not (0 <= nanos < 1_000_000_000 and _MIN_SECONDS <= seconds <= _MAX_SECONDS):
        text: str = value.ToJsonString()  # out of range: its own normalization or error
        return text
    base = (_EPOCH + timedelta(seconds=seconds)).isoformat()
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{base}.{nanos // 1000:06d}Z"
    return f"{base}.{nanos:09d}Z"
