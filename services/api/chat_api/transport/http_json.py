"""HTTP request -> proto request and proto response -> JSON, in protobuf's canonical JSON.

Parsing goes through google.protobuf.json_format, so requests accept proto names
(``conversation_id``) and lowerCamelCase (``conversationId``), timestamps are RFC 3339, and an
unknown field is an error rather than silently dropped. Every parse failure becomes
InvalidArgument naming the field in plain words (never the parser's own text, which speaks
Python: "invalid literal for int()"), which the error table turns into a 400 with a
BadRequest field violation.

What a request may hold is exactly what the OpenAPI document says (``openapi.py``), checked
here before json_format sees it (``_check_types``): a string field takes a JSON string, an
integer field a JSON integer or a string of decimal digits (proto3 JSON writes 64-bit integers
as strings and accepts both; fractions, exponents, ``+`` signs, leading zeros and Python's
``1_000`` are refused), in its type's range; ``null`` is refused (leave the field out
instead). A method with a body needs one: at least ``{}``.

Top-level string fields and lists of strings (``member_ids``) skip json_format: it scans each
string for unpaired surrogates with a regular expression (0.18 s for a 1 MiB ``content``) and
converts list entries one by one in Python (0.2 s for the 90,000 ids that fit in 1 MiB), all
before any size check can run, on the loop every caller shares. orjson never yields an unpaired
surrogate, and protobuf's own setters refuse text that is not UTF-8 (path and query values), so
they are set directly, in C; the service checks sizes first thing.

Responses use proto field names and print fields without presence even at their default
(``"unread_count": "0"``, ``"next_page_token": ""``), as gRPC-Gateway v2's default marshaler
does (EmitUnpopulated): a JSON client never has to guess whether a missing key means zero.
Unset message fields (``last_message`` of an empty conversation) are left out. 64-bit integers
are strings, as canonical JSON requires.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from multidict import MultiMapping

from chat_api.transport.http_routes import HttpBinding
from chat_api.transport.json_render import message_to_dict
from chat_shared.errors import InvalidArgument
from chat_shared.protos.buf.validate import validate_pb2

IDEMPOTENCY_FIELD = "idempotency_key"
"""A request field of this name may also come from the ``Idempotency-Key`` header."""

_FAILED_FIELD = re.compile(r"Failed to parse (\S+) field: (.*?)(?: at [\w.]+)?\.?$", re.S)
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_MULTIPLE = re.compile(r'multiple "([^"]+)" fields')
# Query values are strings; these well-known types parse from their JSON string form.
_STRING_WKT = {"google.protobuf.Timestamp", "google.protobuf.Duration",
               "google.protobuf.FieldMask"}


def parse_request(binding: HttpBinding, path_params: Mapping[str, str],
                  query: MultiMapping[str], body: bytes,
                  idempotency_header: str | None = None) -> Message:
    """The RPC's request message from the path, query string and body of one HTTP request."""
    desc = binding.method.input_type
    data: dict[str, Any] = {}
    if binding.body:
        parsed = _load_body(body)
        if binding.body == "*":
            if not isinstance(parsed, dict):
                raise InvalidArgument("body", "must be a JSON object")
            data = parsed
        else:
            data[binding.body] = parsed
    bound = {*binding.path_fields.values(), binding.body}
    if binding.body != "*":
        for key in query:
            _bind_query(desc, data, key, query.getall(key), bound)
    elif query:
        key = next(iter(query))
        raise InvalidArgument(key, "the request is in the body; query parameters are not accepted")
    for placeholder, path in binding.path_fields.items():
        _set_path(desc, data, path.split("."), path_params[placeholder])
    _check_list_sizes(desc, data)
    _check_types(desc, data, "")
    strings = _take_strings(desc, data)
    records = _take_records(desc, data)
    message = GetMessageClass(desc)()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise _invalid(desc, str(exc)) from exc
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise InvalidArgument("body", f"not a valid {desc.name}") from exc
    for name, value in strings.items():
        try:
            if isinstance(value, list):
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
        except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
            problem = "must be a list of strings" if isinstance(value, list) else "must be text"
            raise InvalidArgument(name, problem) from None
    for name, items in records.items():
        target = getattr(message, name)
        for item in items:
            try:
                target.add(**item)
            except (TypeError, ValueError):
                raise InvalidArgument(name, "must be a list of objects of text fields"
                                      ) from None
    if idempotency_header is not None:
        _apply_idempotency_header(message, idempotency_header)
    return message


def _check_list_sizes(desc: Descriptor, data: dict[str, Any]) -> None:
    """Refuses a top-level list longer than chat.proto's ``max_items`` before anything reads
    its entries (a list of objects costs json_format tens of microseconds an entry)."""
    for key, value in data.items():
        fd = _field(desc, key)
        if fd is None:
            continue
        rules = fd.GetOptions().Extensions[validate_pb2.field]
        if fd.is_repeated and isinstance(value, list):
            if rules.repeated.HasField("max_items") and len(value) > rules.repeated.max_items:
                raise InvalidArgument(fd.name, f"must contain at most "
                                               f"{rules.repeated.max_items} item(s)")
        elif fd.message_type is not None and isinstance(value, dict):
            _check_text_sizes(fd.message_type, value, fd.name)


def _check_text_sizes(desc: Descriptor, data: dict[str, Any], prefix: str) -> None:
    """A sub-object's text fields past their ``max_len`` are refused before json_format reads
    them (it scans a string for surrogates, and decodes bytes from base64, in Python)."""
    for key, value in data.items():
        fd = _field(desc, key)
        if fd is None or fd.is_repeated or not isinstance(value, str):
            continue
        rules = fd.GetOptions().Extensions[validate_pb2.field]
        if fd.type == FieldDescriptor.TYPE_STRING and rules.string.HasField("max_len"):
            limit = rules.string.max_len
        elif fd.type == FieldDescriptor.TYPE_BYTES and rules.bytes.HasField("max_len"):
            limit = 4 * -(-rules.bytes.max_len // 3)  # the base64 text of that many bytes
        else:
            continue
        if len(value) > limit:
            raise InvalidArgument(f"{prefix}.{fd.name}", f"must be at most {limit} characters")


def _take_records(desc: Descriptor, data: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Takes top-level lists of objects whose every value is text for a string field
    (``devices``, ``messages``, ``keys``) out of ``data``, to be added in C as keyword
    arguments: json_format converts each entry in Python (0.28 s for the 1 MiB of them a
    body may hold). Any other shape stays for json_format to judge."""
    taken: dict[str, list[dict[str, str]]] = {}
    for key, value in list(data.items()):
        fd = _field(desc, key)
        if fd is None or not fd.is_repeated or fd.message_type is None \
                or not isinstance(value, list):
            continue
        items = [_text_record(fd.message_type, item) for item in value]
        if any(item is None for item in items):
            continue
        if fd.name in taken:
            raise InvalidArgument(fd.name, "given more than once")
        taken[fd.name] = [item for item in items if item is not None]
        del data[key]
    return taken


def _text_record(desc: Descriptor, item: Any) -> dict[str, str] | None:
    if not isinstance(item, dict):
        return None
    out: dict[str, str] = {}
    for key, value in item.items():
        fd = _field(desc, key)
        if fd is None or fd.type != FieldDescriptor.TYPE_STRING or fd.is_repeated \
                or not isinstance(value, str) or fd.name in out:
            return None
        out[fd.name] = value
    return out


def _take_strings(desc: Descriptor, data: dict[str, Any]) -> dict[str, str | list[Any]]:
    """Takes the values of top-level string fields (and lists for repeated ones) out of
    ``data``; anything else, wrong types included, stays for json_format to judge."""
    taken: dict[str, str | list[Any]] = {}
    for key, value in list(data.items()):
        fd = _field(desc, key)
        if fd is None or fd.type != FieldDescriptor.TYPE_STRING:
            continue
        if not isinstance(value, list if fd.is_repeated else str):
            continue
        if fd.name in taken:
            raise InvalidArgument(fd.name, "given more than once")
        taken[fd.name] = data.pop(key)
    return taken


def render(message: Message, response_body: str = "") -> bytes:
    """The canonical JSON of a response (or of its ``response_body`` field)."""
    data = message_to_dict(message)  # json_format's output, several times faster
    if response_body:
        data = data.get(response_body)
    return orjson.dumps(data)


def _load_body(body: bytes) -> Any:
    if not body.strip():
        raise InvalidArgument("body", "is required: a JSON object (at least {})")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's text says where ("line 1 column 5 (char 4)"), nothing about the server.
        raise InvalidArgument("body", f"malformed JSON: {exc}") from exc


def _invalid(desc: Descriptor, error: str) -> InvalidArgument:
    """InvalidArgument naming the field json_format complained about, in our own words."""
    first_line = error.splitlines()[0] if error else error
    if m := _UNKNOWN_FIELD.search(first_line):
        return InvalidArgument(m.group(1), "unknown field")
    if m := _MULTIPLE.search(first_line):
        return InvalidArgument(m.group(1), "given more than once")
    if m := _FAILED_FIELD.match(first_line):
        inner = m.group(2)
        if n := _UNKNOWN_FIELD.search(inner):
            return InvalidArgument(f"{m.group(1)}.{n.group(1)}", "unknown field")
        fd = _field(desc, m.group(1))
        return InvalidArgument(m.group(1), _expected(fd) if fd is not None else "is not valid")
    return InvalidArgument("body", f"not a valid {desc.name}")


_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
}
"""Each integer type's range, as the OpenAPI document publishes it (openapi.py reads this)."""

DECIMAL = re.compile(r"0|-?[1-9][0-9]*")
"""An integer as a JSON string: decimal digits without leading zeros, an optional minus."""

_WKT_TEXT = {
    "google.protobuf.Timestamp": "an RFC 3339 timestamp such as 2024-01-31T12:00:00Z "
                                 "(0001-01-01 to 9999-12-31)",
    "google.protobuf.Duration": "a duration such as 1.5s",
    "google.protobuf.FieldMask": "a field mask such as a,b.c",
}


def _expected(fd: FieldDescriptor) -> str:
    """What a field takes, in the words the error message uses."""
    if fd.type in _INT_RANGES:
        low, high = _INT_RANGES[fd.type]
        return f"must be an integer from {low} to {high} (a JSON number or a decimal string)"
    if fd.type == FieldDescriptor.TYPE_STRING:
        return "must be a string"
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "must be true or false"
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        text = _WKT_TEXT.get(fd.message_type.full_name)
        return f"must be {text}" if text else "must be a JSON object"
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return "must be one of " + ", ".join(v.name for v in fd.enum_type.values)
    return "is not a valid value"


def _check_types(desc: Descriptor, data: dict[str, Any], prefix: str) -> None:
    """Refuses values of the wrong JSON type before json_format (see the module docstring);
    integers given as strings become ints. Unknown names are left for json_format to name."""
    for key, value in data.items():
        fd = _field(desc, key)
        if fd is None:
            continue
        name = prefix + fd.name
        if value is None:
            raise InvalidArgument(name, "must not be null (leave the field out instead)")
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if not isinstance(value, dict):
                raise InvalidArgument(name, "must be a JSON object")
            continue
        if fd.is_repeated:
            if not isinstance(value, list):
                raise InvalidArgument(name, "must be a list")
            if fd.type == FieldDescriptor.TYPE_STRING:
                continue  # protobuf's setter checks the items, in C (_take_strings)
            for i, item in enumerate(value):
                converted = _checked_single(fd, item, f"{name}[{i}]")
                if converted is not item:
                    value[i] = converted
            continue
        converted = _checked_single(fd, value, name)
        if converted is not value:
            data[key] = converted


def _past_range(kind: int) -> int:
    return _INT_RANGES[kind][1] + 1


def _checked_single(fd: FieldDescriptor, value: Any, name: str) -> Any:
    if value is None:
        raise InvalidArgument(name, "must not be null")
    kind = fd.type
    if kind in _INT_RANGES:
        if isinstance(value, str) and DECIMAL.fullmatch(value):
            # Longer than any 64-bit value: out of range, and not worth converting (Python
            # refuses to convert over 4,300 digits at all).
            number = int(value) if len(value) <= 21 else _past_range(kind)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise InvalidArgument(name, _expected(fd))
        low, high = _INT_RANGES[kind]
        if not low <= number <= high:
            raise InvalidArgument(name, _expected(fd))
        return number
    if kind == FieldDescriptor.TYPE_STRING and not isinstance(value, str):
        raise InvalidArgument(name, _expected(fd))
    if kind == FieldDescriptor.TYPE_BOOL and not isinstance(value, bool):
        raise InvalidArgument(name, _expected(fd))
    if kind == FieldDescriptor.TYPE_MESSAGE:
        full_name = fd.message_type.full_name
        if full_name in _WKT_TEXT:
            if not isinstance(value, str):
                raise InvalidArgument(name, _expected(fd))
        # Other well-known types (Struct, Value, wrappers...) are left to json_format, which
        # knows their JSON forms; every other message must be a JSON object, checked inside.
        elif not full_name.startswith("google.protobuf."):
            if not isinstance(value, dict):
                raise InvalidArgument(name, _expected(fd))
            _check_types(fd.message_type, value, name + ".")
    return value


def _field(desc: Descriptor, name: str) -> FieldDescriptor | None:
    fd = desc.fields_by_name.get(name)
    if fd is None:
        fd = next((f for f in desc.fields if f.json_name == name), None)
    return fd


def _bind_query(desc: Descriptor, data: dict[str, Any], key: str, values: list[str],
                bound: set[str]) -> None:
    """Sets ``a.b=v`` from the query string into ``data`` (gRPC-Gateway's query mapping)."""
    names = key.split(".")
    target, path = data, []
    for i, name in enumerate(names):
        fd = _field(desc, name)
        if fd is None:
            raise InvalidArgument(key, "unknown query parameter")
        path.append(fd.name)
        if ".".join(path) in bound:
            raise InvalidArgument(key, "is bound by the path or body, not the query string")
        last = i == len(names) - 1
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        if not last:
            if not is_message or _is_repeated(fd):
                raise InvalidArgument(key, "unknown query parameter")
            target = target.setdefault(fd.name, {})
            if not isinstance(target, dict):
                raise InvalidArgument(key, "conflicts with another parameter")
            desc = fd.message_type
            continue
        if is_message and fd.message_type.full_name not in _STRING_WKT:
            raise InvalidArgument(key, "a message field; set its fields as key.field=value")
        converted = [_query_scalar(key, fd, v) for v in values]
        if _is_repeated(fd):
            target[fd.name] = converted
        elif len(converted) > 1:
            raise InvalidArgument(key, "given more than once")
        else:
            target[fd.name] = converted[0]


def _is_repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def _query_scalar(key: str, fd: FieldDescriptor, value: str) -> Any:
    # json_format takes numbers, enums and well-known types as strings; only bool needs help.
    if fd.type == FieldDescriptor.TYPE_BOOL:
        if value not in ("true", "false"):
            raise InvalidArgument(key, "must be true or false")
        return value == "true"
    return value


def _set_path(desc: Descriptor, data: dict[str, Any], names: list[str], value: str) -> None:
    """Puts a path variable into the request; the path wins over the same field in the body."""
    target = data
    for i, name in enumerate(names):
        fd = desc.fields_by_name[name]
        for alias in {fd.name, fd.json_name} - {name}:
            if alias in target:
                target[name] = target.pop(alias)
        if i == len(names) - 1:
            target[name] = value
            return
        nested = target.get(name)
        if not isinstance(nested, dict):
            nested = target[name] = {}
        target, desc = nested, fd.message_type


def _apply_idempotency_header(message: Message, header: str) -> None:
    fd = message.DESCRIPTOR.fields_by_name.get(IDEMPOTENCY_FIELD)
    if fd is None or fd.type != FieldDescriptor.TYPE_STRING:
        return
    current = getattr(message, IDEMPOTENCY_FIELD)
    if not current:
        setattr(message, IDEMPOTENCY_FIELD, header)
    elif current != header:
        raise InvalidArgument(IDEMPOTENCY_FIELD, "differs from the Idempotency-Key header")
