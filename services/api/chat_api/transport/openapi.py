"""The OpenAPI 3 document of the HTTP/JSON API, generated from the proto descriptors.

Paths and parameters come from the same HttpBindings the gateway routes with; schemas come from
the message descriptors and describe canonical JSON as the gateway writes it (proto field names,
64-bit integers as strings, timestamps as RFC 3339 strings). Response schemas list every field
without presence as required, because the gateway always prints them; request schemas forbid
unknown properties, because the gateway rejects them.

The document is served at ``/openapi.json`` and committed as ``services/api/openapi.json``
(``scripts/gen_openapi.py`` writes it; a test fails while it is stale).
"""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from chat_api.transport.http_routes import HttpBinding, chat_service, http_bindings

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
                    exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    properties = {fd.name: _field_schema(fd, pending) for fd in desc.fields
                  if fd.name not in exclude}
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": False}
    if response:
        required = [fd.name for fd in desc.fields if not _has_presence(fd)]
        if required:
            schema["required"] = required
    return schema


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
                       "schema": _single_schema(fd, schemas_pending)})
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
        schema = _field_schema(fd, schemas_pending)
        param: dict[str, Any] = {"name": fd.name, "in": "query", "required": False,
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
        if binding.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": _body_schema(binding, pending, schemas)}}}
        if binding.method.input_type.fields_by_name.get("idempotency_key") is not None:
            op["parameters"].append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Used as idempotency_key when the body has none.",
                "schema": {"type": "string"}})
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
                                "JSON with proto field names."},
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
