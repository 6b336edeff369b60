"""The fast JSON printer of the HTTP gateway gives exactly json_format's output.

Random instances of every chat.v1 message (and of protobuf's test-free well-known types, to see
the fallback) are rendered both ways and compared; a difference names the message and seed.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from chat_api.transport.json_render import message_to_dict
from chat_shared.protos.chat.v1 import chat_pb2

MESSAGES = [getattr(chat_pb2, name) for name in chat_pb2.DESCRIPTOR.message_types_by_name]
TEXT = ["", "a", "héllo wörld", "日本語", "emoji 🎉", "quote \" and \\ backslash", "\u2028"]
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)]


def reference(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def fill(message: Message, rng: random.Random, depth: int = 0) -> None:
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue  # left at its default (absent for fields with presence)
        count = rng.randint(0, 3) if field.is_repeated else 1
        for _ in range(count):
            put(message, field, rng, depth)


def put(message: Message, field: FieldDescriptor, rng: random.Random, depth: int) -> None:
    fd = FieldDescriptor
    if field.type == fd.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        getattr(message, field.name)[rng.choice(TEXT)] = rng.choice(TEXT)  # string -> string
        return
    if field.type == fd.TYPE_MESSAGE:
        target = (getattr(message, field.name).add() if field.is_repeated
                  else getattr(message, field.name))
        if field.message_type.full_name == "google.protobuf.Timestamp":
            target.seconds = rng.choice([rng.randint(-62135596800, 253402300799), 0,
                                         1_700_000_000, -1])
            target.nanos = rng.choice([0, 5_000_000, 123_456_000, 999_999_999, 7])
        elif depth < 3:
            fill(target, rng, depth + 1)
        else:
            target.SetInParent()
        return
    if field.type == fd.TYPE_STRING:
        value: Any = rng.choice(TEXT)
    elif field.type == fd.TYPE_INT32:
        value = rng.choice([0, 1, -1, 2**31 - 1, -(2**31)])
    elif field.type == fd.TYPE_INT64:
        value = rng.choice(INTS)
    elif field.type == fd.TYPE_BOOL:
        value = rng.random() < 0.5
    elif field.type == fd.TYPE_BYTES:
        value = rng.choice([b"", b"\x00\xff", bytes(range(256)), b"ciphertext"])
    else:
        raise AssertionError(f"the test does not fill {field.full_name} yet")
    if field.is_repeated:
        getattr(message, field.name).append(value)
    else:
        setattr(message, field.name, value)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.DESCRIPTOR.name)
def test_every_chat_message_renders_exactly_as_json_format(cls: type[Message]) -> None:
    assert message_to_dict(cls()) == reference(cls())
    for seed in range(150):
        message = cls()
        fill(message, random.Random(seed))
        assert message_to_dict(message) == reference(message), (cls.DESCRIPTOR.name, seed)


def test_types_it_leaves_to_json_format_still_render_exactly() -> None:
    value = struct_pb2.Struct()
    value.update({"a": 1.5, "b": [True, None, "x"], "c": {"d": -2.25e-7}})
    assert message_to_dict(value) == reference(value)
    stamp = timestamp_pb2.Timestamp(seconds=1, nanos=20)
    assert message_to_dict(stamp) == reference(stamp)  # a bare Timestamp is a JSON string


def test_invalid_timestamps_fail_as_json_format_fails() -> None:
    for seconds, nanos in ((1, -5), (1, 1_500_000_000), (253402300800, 0)):
        message = chat_pb2.Message(created_at=timestamp_pb2.Timestamp(seconds=seconds,
                                                                      nanos=nanos))
        with pytest.raises(json_format.Error):
            reference(message)
        with pytest.raises(ValueError):  # the server makes none: either way a 500
            message_to_dict(message)
