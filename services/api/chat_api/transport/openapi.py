"""The OpenAPI 3 document of the HTTP/JSON API, generated from the proto descriptors.

Paths and parameters come from the same HttpBindings the gateway routes with; schemas come from
the message descriptors and describe canonical JSON as the gateway writes it (proto field names,
64-bit integers as strings, timestamps as RFC 3339 strings). Response schemas list every field
without presence as required, because the gateway always prints them; request schemas forbid
unknown properties, because the gateway rejects them.

Request schemas also publish chat.proto's buf.validate rules, the ones the server enforces
(``request_rules``): string lengths, UUIDs, CEL ``this.matches(r'...')`` rules as patterns,
integer ranges, list sizes and uniqueness, required fields; a rule this module cannot publish
stops the generator (and the server's start) rather than going unpublished. An integer in a
request body is a JSON integer or a decimal string (proto3 JSON accepts both; the gateway
accepts exactly what the schema says, see ``http_json``).

The document is served at ``/openapi.json`` and committed as ``services/api/openapi.json``
(``scripts/gen_openapi.py`` writes it; a test fails while it is stale).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from chat_api.transport.http_json import _INT_RANGES, IDEMPOTENCY_FIELD
from chat_api.transport.http_routes import HttpBinding, chat_service, http_bindings
from chat_shared.protos.buf.validate import validate_pb2

ERROR_SCHEMA = "google.rpc.Status"
_INT64_PATTERN = r"^-?[0-9]+$"
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0,
                                  "maximum": 4294967295},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0,
                                   "maximum": 4294967295},
    # Canonical JSON writes 64-bit integers as decimal strings (JavaScript loses precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64",
                                    "pattern": _INT64_PATTERN},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
}


def _schema_name(desc: Descriptor) -> str:
    return str(desc.full_name)


def _ref(desc: Descriptor) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{_schema_name(desc)}"}


def _has_presence(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE or fd.containing_oneof is not None


def _field_schema(fd: FieldDescriptor, pending: list[Descriptor]) -> dict[str, Any]:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value = fd.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _single_schema(value, pending)}
    single = _single_schema(fd, pending)
    if fd.is_repeated:
        return {"type": "array", "items": single}
    return single


def _single_schema(fd: FieldDescriptor, pending: list[Descriptor]) -> dict[str, Any]:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        wkt = _WELL_KNOWN.get(fd.message_type.full_name)
        if wkt is not None:
            return dict(wkt)
        pending.append(fd.message_type)
        return _ref(fd.message_type)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
    return dict(_SCALARS[fd.type])


def _message_schema(desc: Descriptor, pending: list[Descriptor], *, response: bool,
                    exclude: frozenset[str] = frozenset(),
                    optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A message's schema; ``optional``: request fields that another part of the request
    (a header) may supply, so the body need not hold them."""
    if response:
        properties = {fd.name: _field_schema(fd, pending) for fd in desc.fields
                      if fd.name not in exclude}
        required = [fd.name for fd in desc.fields if not _has_presence(fd)]
    else:
        properties = {fd.name: _request_field_schema(fd, pending, in_body=True)
                      for fd in desc.fields if fd.name not in exclude}
        if IDEMPOTENCY_FIELD in properties:
            # The gateway takes it from the Idempotency-Key header when the body has none.
            optional |= {IDEMPOTENCY_FIELD}
            properties[IDEMPOTENCY_FIELD]["description"] = (
                "Required here or in the Idempotency-Key header (equal when both are given).")
        required = [fd.name for fd in desc.fields if fd.name not in exclude | optional
                    and _is_required(fd)]
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": False}
    if required:
        schema["required"] = required
    rules = _message_rules(desc)
    if rules and not response:
        schema["description"] = rules
    return schema


def _rules(fd: FieldDescriptor) -> validate_pb2.FieldRules | None:
    options = fd.GetOptions()
    if not options.HasExtension(validate_pb2.field):
        return None
    rules: validate_pb2.FieldRules = options.Extensions[validate_pb2.field]
    return rules


def _is_required(fd: FieldDescriptor) -> bool:
    """Whether the rules make the field required (in JSON: the key must be there)."""
    rules = _rules(fd)
    if rules is None or rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE:
        return False  # the rules hold only for a value that is given
    if rules.required:
        return True
    kind = rules.WhichOneof("type")
    if kind == "string":
        return rules.string.min_len > 0 or rules.string.uuid
    if kind == "repeated":
        return rules.repeated.min_items > 0
    if kind == "bytes":
        return rules.bytes.min_len > 0
    if kind in ("int32", "int64"):
        # 0 (what a missing key means) breaks the rule: the key must be there.
        ints = getattr(rules, kind)
        return bool((ints.HasField("gt") and ints.gt >= 0)
                    or (ints.HasField("gte") and ints.gte > 0))
    return False


def _message_rules(desc: Descriptor) -> str:
    """Message-level rules in words (OpenAPI 3.0 cannot state them across parameters)."""
    options = desc.GetOptions()
    if not options.HasExtension(validate_pb2.message):
        return ""
    rules = options.Extensions[validate_pb2.message]
    # A CEL rule across fields is published as its message, which must say it in words.
    words = [rule.message.rstrip(".") + "." for rule in rules.cel]
    if any(not rule.message for rule in rules.cel):
        raise ValueError(f"{desc.full_name}: a message CEL rule without a message cannot be "
                         "published")
    for rule in rules.oneof:
        fields = ", ".join(rule.fields)
        words.append(f"{'Exactly' if rule.required else 'At most'} one of {fields}.")
    return " ".join(words)


_CEL_MATCHES = re.compile(r"^this\.matches\(r'([^']*)'\)$")
_UUID_PATTERN = ("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                 "[0-9a-fA-F]{12}$")


def _cel_patterns(owner: str, cel: Any) -> list[str]:
    patterns = []
    for rule in cel:
        m = _CEL_MATCHES.match(rule.expression)
        if m is None:
            raise ValueError(f"{owner}: CEL rule {rule.id!r} is not this.matches(r'...'), "
                             "so it cannot be published as a pattern")
        patterns.append(m.group(1))
    return patterns


def _with_patterns(schema: dict[str, Any], patterns: list[str]) -> dict[str, Any]:
    if not patterns:
        return schema
    schema["pattern"] = patterns[0]
    if len(patterns) > 1:
        schema["allOf"] = [{"pattern": p} for p in patterns[1:]]
    return schema


def _string_rules(owner: str, rules: Any, cel: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    published = {"min_len", "max_len", "uuid"}
    unknown = [f.name for f, _ in rules.ListFields() if f.name not in published]
    if unknown:
        raise ValueError(f"{owner}: string rules {unknown} cannot be published yet")
    if rules.uuid:
        schema.update(format="uuid", pattern=_UUID_PATTERN)
    if rules.min_len:
        schema["minLength"] = rules.min_len
    if rules.HasField("max_len"):
        schema["maxLength"] = rules.max_len
    patterns = _cel_patterns(owner, cel)
    if rules.uuid and patterns:
        raise ValueError(f"{owner}: a UUID rule and a pattern cannot be published together")
    return _with_patterns(schema, patterns)


def _bytes_rules(owner: str, rules: Any) -> dict[str, Any]:
    """Bytes travel as base64 in JSON: the lengths are those of the base64 text."""
    unknown = [f.name for f, _ in rules.ListFields() if f.name not in {"min_len", "max_len"}]
    if unknown:
        raise ValueError(f"{owner}: bytes rules {unknown} cannot be published yet")
    schema: dict[str, Any] = {"type": "string", "format": "byte"}
    if rules.min_len:
        schema["minLength"] = 4 * -(-rules.min_len // 3)
    if rules.HasField("max_len"):
        schema["maxLength"] = 4 * -(-rules.max_len // 3)
    return schema


def _int_bounds(owner: str, fd_type: int, rules: Any) -> tuple[int, int]:
    low, high = _INT_RANGES[fd_type]
    if rules is None:
        return low, high
    unknown = [f.name for f, _ in rules.ListFields() if f.name not in ("gte", "lte", "gt", "lt")]
    if unknown:
        raise ValueError(f"{owner}: integer rules {unknown} cannot be published yet")
    if rules.HasField("gte"):
        low = max(low, rules.gte)
    if rules.HasField("gt"):
        low = max(low, rules.gt + 1)
    if rules.HasField("lte"):
        high = min(high, rules.lte)
    if rules.HasField("lt"):
        high = min(high, rules.lt - 1)
    return low, high


def _decimal_at_most(limit: str, *, zero: bool = True) -> str:
    """A regex for the decimal numbers 0 (or 1) ..limit without leading zeros."""
    n = len(limit)
    alts = ["0"] if zero else []
    if n > 1:
        alts.append(f"[1-9][0-9]{{0,{n - 2}}}" if n > 2 else "[1-9]")
    for i, digit in enumerate(limit):
        d = int(digit)
        first = 1 if i == 0 else 0
        if d > first:
            rest = n - i - 1
            tail = f"[0-9]{{{rest}}}" if rest > 1 else ("[0-9]" if rest == 1 else "")
            alts.append(limit[:i] + (f"[{first}-{d - 1}]" if d - 1 > first else str(first)
                                     if d - 1 == first else "") + tail)
    alts.append(limit)
    return "|".join(a for a in alts if a)


def _integer_string_pattern(owner: str, low: int, high: int) -> str:
    """The decimal strings the gateway accepts for an integer in ``low..high``."""
    if low in (0, 1):
        return f"^({_decimal_at_most(str(high), zero=low == 0)})$"
    if low < 0 and high >= 0:
        return f"^({_decimal_at_most(str(high))}|-({_decimal_at_most(str(-low), zero=False)}))$"
    raise ValueError(f"{owner}: an integer range {low}..{high} cannot be published yet")


def _int_schema(fd: FieldDescriptor, rules: Any, *, in_body: bool) -> dict[str, Any]:
    owner = fd.full_name
    low, high = _int_bounds(owner, fd.type, rules)
    fmt = "int64" if fd.type in _SIXTY_FOUR_BIT else "int32"
    number = {"type": "integer", "format": fmt, "minimum": low, "maximum": high}
    if not in_body:
        return number  # a query or path value is text: the same digits either way
    text = {"type": "string", "format": fmt, "pattern": _integer_string_pattern(owner, low, high)}
    return {"oneOf": [number, text],
            "description": "A JSON integer or the same number as a decimal string."}


_SIXTY_FOUR_BIT = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
                   FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_UINT64,
                   FieldDescriptor.TYPE_FIXED64}


def _request_field_schema(fd: FieldDescriptor, pending: list[Descriptor], *,
                          in_body: bool) -> dict[str, Any]:
    """A request field's schema with its rules (what the server accepts, exactly)."""
    rules = _rules(fd)
    kind = rules.WhichOneof("type") if rules is not None else None
    if fd.is_repeated and not (fd.message_type is not None
                               and fd.message_type.GetOptions().map_entry):
        repeated = rules.repeated if rules is not None and kind == "repeated" else None
        item_rules = repeated.items if repeated is not None else None
        items = _request_single(fd, pending, item_rules, in_body=in_body)
        schema: dict[str, Any] = {"type": "array", "items": items}
        if repeated is not None:
            if repeated.min_items:
                schema["minItems"] = repeated.min_items
            if repeated.HasField("max_items"):
                schema["maxItems"] = repeated.max_items
            if repeated.unique:
                schema["uniqueItems"] = True
        return schema
    return _request_single(fd, pending, rules, in_body=in_body)


def _request_single(fd: FieldDescriptor, pending: list[Descriptor], rules: Any, *,
                    in_body: bool) -> dict[str, Any]:
    kind = rules.WhichOneof("type") if rules is not None else None
    cel = rules.cel if rules is not None else []
    if fd.type in _INT_RANGES:
        if cel:
            raise ValueError(f"{fd.full_name}: CEL rules on integers cannot be published")
        return _int_schema(fd, getattr(rules, kind) if kind else None, in_body=in_body)
    if fd.type == FieldDescriptor.TYPE_STRING:
        schema = _string_rules(fd.full_name, rules.string if kind == "string" else
                               validate_pb2.StringRules(), cel)
        if rules is not None and rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE:
            # Empty means "not given", which the rules let through: every pattern admits
            # "" too (a maximum length does already), and a minimum length of 1 says nothing
            # more than "not empty"; a longer minimum would contradict it.
            if set(schema) - {"type", "format", "pattern", "allOf", "minLength", "maxLength",
                              "description"} or schema.get("minLength", 1) != 1:
                raise ValueError(f"{fd.full_name}: {sorted(schema)} cannot be published "
                                 "with IGNORE_IF_ZERO_VALUE yet")
            schema.pop("format", None)
            schema.pop("minLength", None)
            for part in (schema, *schema.get("allOf", ())):
                if "pattern" in part:
                    part["pattern"] = f"^$|{part['pattern']}"
        return schema
    if fd.type == FieldDescriptor.TYPE_BYTES and kind == "bytes" and not cel:
        return _bytes_rules(fd.full_name, rules.bytes)
    if kind is not None or cel:
        raise ValueError(f"{fd.full_name}: {kind or 'CEL'} rules cannot be published yet")
    return _single_schema(fd, pending)


def _reachable(roots: list[Descriptor]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        desc = stack.pop()
        if desc.full_name in seen or desc.full_name in _WELL_KNOWN:
            continue
        seen.add(desc.full_name)
        stack.extend(fd.message_type for fd in desc.fields if fd.message_type is not None)
    return seen


def _parameters(binding: HttpBinding, schemas_pending: list[Descriptor]) -> list[dict[str, Any]]:
    desc = binding.method.input_type
    params: list[dict[str, Any]] = []
    for path in binding.path_fields.values():
        fd = _leaf(desc, path)
        params.append({"name": path, "in": "path", "required": True,
                       "schema": _request_field_schema(fd, schemas_pending, in_body=False)})
    if binding.body == "*":
        return params
    bound = {*binding.path_fields.values(), binding.body}
    for fd in desc.fields:
        if fd.name in bound:
            continue
        is_plain_message = (fd.type == FieldDescriptor.TYPE_MESSAGE
                            and fd.message_type.full_name not in _WELL_KNOWN)
        if is_plain_message:
            continue  # reachable as key.field=value, not documented field by field
        schema = _request_field_schema(fd, schemas_pending, in_body=False)
        # A proto3 ``optional`` field may be left out whatever rules its value has.
        required = _is_required(fd) and not (fd.has_presence and not fd.is_repeated)
        param: dict[str, Any] = {"name": fd.name, "in": "query", "required": required,
                                 "schema": schema}
        if schema.get("type") == "array":
            param.update(style="form", explode=True)
        params.append(param)
    return params


def _leaf(desc: Descriptor, path: str) -> FieldDescriptor:
    names = path.split(".")
    for name in names[:-1]:
        desc = desc.fields_by_name[name].message_type
    return desc.fields_by_name[names[-1]]


def _error_schemas() -> dict[str, Any]:
    return {
        ERROR_SCHEMA: {
            "type": "object",
            "description": "google.rpc.Status: the gRPC code number, a message and details.",
            "properties": {
                "code": {"type": "integer", "format": "int32"},
                "message": {"type": "string"},
                "details": {"type": "array",
                            "items": {"$ref": "#/components/schemas/google.protobuf.Any"}},
            },
            "required": ["code", "message", "details"],
        },
        "google.protobuf.Any": {
            "type": "object",
            "description": "A detail such as google.rpc.ErrorInfo, named by @type.",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": True,
        },
    }


# Which answers name what a member operation needs: a conversation (its id) and one of its
# members (its first member id). Published as links, so a client (and a stateful fuzzer) follows
# them with a real member; without them, tools that infer links from names took the
# conversation's id for ``user_id`` (the last ``*_id`` of the path) and got NOT_FOUND.
_CONVERSATION_ANSWERS = ("CreateConversation", "AddMembers", "UpdateConversation")
_MEMBER_OPERATIONS = ("RemoveMember", "SetMemberRole")


def _links(method: str, methods: set[str]) -> dict[str, Any]:
    if method not in _CONVERSATION_ANSWERS:
        return {}
    return {target: {"operationId": target, "parameters": {
                "conversation_id": "$response.body#/conversation/id",
                "user_id": "$response.body#/conversation/member_ids/0"}}
            for target in _MEMBER_OPERATIONS if target in methods}


def openapi_document(service: ServiceDescriptor | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0 document for every annotated RPC of a service (chat.v1.ChatService)."""
    service = service or chat_service()
    bindings = http_bindings(service)
    response_types = [b.method.output_type for b in bindings]
    response_side = _reachable(response_types)
    request_side = _reachable([b.method.input_type for b in bindings])
    pending: list[Descriptor] = []
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for binding in bindings:
        method = binding.method
        op: dict[str, Any] = {
            "operationId": method.name,
            "tags": [service.name],
            "parameters": _parameters(binding, pending),
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {
                    "schema": _response_schema(binding, pending)}}},
                "default": {"description": "An error (google.rpc.Status as JSON)",
                            "content": {"application/json": {
                                "schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}},
            },
        }
        rules = _message_rules(method.input_type)
        if rules:
            op["description"] = rules
        if binding.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": _body_schema(binding, pending, schemas)}}}
        if binding.method.input_type.fields_by_name.get("idempotency_key") is not None:
            op["parameters"].append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Used as idempotency_key when the body has none.",
                "schema": {"type": "string"}})
        links = _links(method.name, set(service.methods_by_name))
        if links:
            op["responses"]["200"]["links"] = links
        paths.setdefault(binding.openapi_path, {})[binding.http_method.lower()] = op
    while pending:
        desc = pending.pop()
        name = _schema_name(desc)
        if name in schemas:
            continue
        is_response = desc.full_name in response_side and desc.full_name not in request_side
        schemas[name] = _message_schema(desc, pending, response=is_response)
    schemas.update(_error_schemas())
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{service.full_name} HTTP/JSON API", "version": "v1",
                 "description": f"Generated from {service.file.name} "
                                "(google.api.http annotations). JSON is protobuf's canonical "
                                "JSON with proto field names; responses write 64-bit integers "
                                "as decimal strings, requests take an integer as a JSON integer "
                                "or a decimal string. Request rules (lengths, ranges, patterns, "
                                "required fields) are the proto's buf.validate rules. Every "
                                "call needs a bearer token: without a valid one the answer is "
                                "401, whatever the request holds."},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _response_schema(binding: HttpBinding, pending: list[Descriptor]) -> dict[str, Any]:
    if binding.response_body:
        return _field_schema(binding.method.output_type.fields_by_name[binding.response_body],
                             pending)
    pending.append(binding.method.output_type)
    return _ref(binding.method.output_type)


def _body_schema(binding: HttpBinding, pending: list[Descriptor],
                 schemas: dict[str, Any]) -> dict[str, Any]:
    desc = binding.method.input_type
    if binding.body != "*":
        return _field_schema(desc.fields_by_name[binding.body], pending)
    top_level_path = frozenset(p for p in binding.path_fields.values() if "." not in p)
    if not top_level_path:
        pending.append(desc)
        return _ref(desc)
    # Fields bound by the path are not part of the body (protoc-gen-openapiv2 does the same).
    name = f"{desc.full_name}.Body"
    schemas[name] = _message_schema(desc, pending, response=False, exclude=top_level_path)
    return {"$ref": f"#/components/schemas/{name}"}


def render_openapi(service: ServiceDescriptor | None = None) -> bytes:
    """The document as committed and served: sorted keys, two-space indent, final newline."""
    return orjson.dumps(openapi_document(service), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                        ) + b"\n"
