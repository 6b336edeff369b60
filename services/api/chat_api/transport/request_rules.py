"""The request rules declared in chat.proto (buf.validate), enforced for every transport.

chat.proto is the one place a rule lives: this module runs protovalidate over each decoded
request (the Dispatcher calls it after authenticating the caller, so a stranger learns nothing
about the rules), and the OpenAPI generator publishes the same annotations. The service layer
receives only requests that passed.

Validation stops at the first broken rule (``fail_fast``): the rules are checked in declaration
order, a repeated field's size before its items, so a request that lists 100,000 member ids is
refused in microseconds instead of after matching every id (80 ms of the shared event loop).

A broken rule becomes InvalidArgument naming the field as a path (``member_ids[3]``) and the
rule in plain words: the annotation's own message for CEL rules, protovalidate's for standard
ones, with a few rephrased where protovalidate's wording is awkward ("must be at least 1
characters").
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from protovalidate import Validator, Violation

from chat_shared.errors import InvalidArgument
from chat_shared.protos.buf.validate import validate_pb2

_validator = Validator()

# protovalidate rule id -> plain words, where its own message reads badly for our fields.
_PLAIN: dict[str, str] = {
    "repeated.unique": "must not list the same value twice",
    "string.uuid_empty": "is required (a UUID)",
}

# Message-level CEL rule id -> the field its violation names. Such a rule relates several
# fields; its message starts with the field's name, which the violation's field repeats.
_MESSAGE_RULE_FIELD: dict[str, str] = {
    "content_or_attachments": "content",
}


def check(request: Message) -> None:
    """Raises InvalidArgument for the first rule of chat.proto that ``request`` breaks."""
    violations = _validator.collect_violations(request, fail_fast=True)
    if violations:
        raise _invalid(request, violations[0])


def _invalid(request: Message, violation: Violation) -> InvalidArgument:
    proto = violation.proto
    if proto.field is None and proto.rule_id == "message.oneof":
        return _oneof_violation(request)
    if proto.field is None and proto.rule_id in _MESSAGE_RULE_FIELD:
        name = _MESSAGE_RULE_FIELD[proto.rule_id]
        return InvalidArgument(name, proto.message.removeprefix(name + " "))
    field = _field_path(proto)
    message = _PLAIN.get(proto.rule_id, proto.message)
    if proto.rule_id == "string.min_len" and message == "must be at least 1 characters":
        message = "is required"
    elif proto.rule_id == "repeated.min_items" and message == "must contain at least 1 item(s)":
        message = "is required (at least one)"
    return InvalidArgument(field or "request", message)


def _field_path(proto: Any) -> str:
    """``member_ids[3]`` from protovalidate's field path (names and list indexes)."""
    parts: list[str] = []
    for element in proto.field.elements if proto.field is not None else ():
        subscript = element.subscript
        if subscript is not None and subscript.field == "index":
            parts.append(f"{element.field_name}[{subscript.value}]")
        elif subscript is not None:
            parts.append(f"{element.field_name}[{subscript.value!r}]")
        else:
            parts.append(element.field_name)
    return ".".join(parts)


def _oneof_violation(request: Message) -> InvalidArgument:
    """A message-level "at most one of" rule: name the first field given, then the others."""
    options = request.DESCRIPTOR.GetOptions().Extensions[validate_pb2.message]
    for rule in options.oneof:
        given = [name for name in rule.fields if request.HasField(name)]
        if len(given) > 1:
            return InvalidArgument(given[0], "cannot be combined with " + ", ".join(given[1:]))
        if rule.required and not given:
            return InvalidArgument(rule.fields[0], "one of " + ", ".join(rule.fields)
                                   + " is required")
    return InvalidArgument("request", "breaks a rule combining several fields")
