"""HTTP routes read from the proto's ``google.api.http`` annotations, never listed by hand.

Each annotated RPC of chat.v1.ChatService (including ``additional_bindings``) becomes one
HttpBinding: the HTTP verb, the path template with its variables bound to request fields, and
where the body goes. The gateway routes with these and the OpenAPI generator documents them, so
adding an annotated RPC to the proto is all it takes to serve and document it.

Template grammar (google/api/http.proto): ``/literal/{field.path}/{field=segs/*}/**:verb``.
A variable becomes an aiohttp placeholder with a regex; ``*`` matches one segment and ``**``
any number of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from chat_shared.protos.chat.v1 import chat_pb2

_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([A-Za-z_][\w.]*)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP route of one RPC."""

    method: MethodDescriptor
    http_method: str
    template: str
    """The annotation's path template, e.g. ``/v1/conversations/{conversation_id}/messages``."""
    route_path: str
    """The same path in aiohttp's router syntax (placeholders named ``p0``, ``p1``, ...)."""
    path_fields: dict[str, str] = field(default_factory=dict)
    """aiohttp placeholder -> request field path (``conversation_id``, ``message.id``)."""
    body: str = ""
    """``*`` (the whole request), a request field name, or empty (no body)."""
    response_body: str = ""

    @property
    def openapi_path(self) -> str:
        """The template with each variable reduced to ``{field.path}``, as OpenAPI wants it."""
        return _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", self.template)


def chat_service() -> ServiceDescriptor:
    return chat_pb2.DESCRIPTOR.services_by_name["ChatService"]


def http_bindings(service: ServiceDescriptor | None = None) -> list[HttpBinding]:
    """Every HTTP binding of every annotated method, in proto order."""
    service = service or chat_service()
    out: list[HttpBinding] = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        for r in (rule, *rule.additional_bindings):
            out.append(_binding(method, r))
    return out


def _binding(method: MethodDescriptor, rule: http_pb2.HttpRule) -> HttpBinding:
    kind = rule.WhichOneof("pattern")
    if kind in _VERBS:
        verb, template = kind.upper(), getattr(rule, kind)
    elif kind == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        raise ValueError(f"{method.full_name}: google.api.http rule without a pattern")
    route, fields = _route_path(template)
    for path in fields.values():
        _check_field_path(method, path)
    if rule.body not in ("", "*"):
        _check_field_path(method, rule.body)
    return HttpBinding(method=method, http_method=verb, template=template, route_path=route,
                       path_fields=fields, body=rule.body, response_body=rule.response_body)


def _segments_regex(segments: str) -> str:
    parts = []
    for seg in segments.split("/"):
        if seg == "**":
            parts.append(".+")
        elif seg == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.escape(seg))
    return "/".join(parts)


def _route_path(template: str) -> tuple[str, dict[str, str]]:
    """The aiohttp route for a template and its placeholder -> field path map."""
    fields: dict[str, str] = {}
    out: list[str] = []
    pos = 0
    for match in _VARIABLE.finditer(template):
        out.append(_literal(template[pos:match.start()]))
        name = f"p{len(fields)}"
        fields[name] = match.group(1)
        out.append("{" + name + ":" + _segments_regex(match.group(2) or "*") + "}")
        pos = match.end()
    out.append(_literal(template[pos:]))
    return "".join(out), fields


def _literal(text: str) -> str:
    # Bare "*" / "**" segments outside a variable match but bind nothing.
    if "*" not in text:
        return text
    return "/".join(
        f"{{_w{i}:{_segments_regex(s)}}}" if s in ("*", "**") else s
        for i, s in enumerate(text.split("/"))
    )


def _check_field_path(method: MethodDescriptor, path: str) -> None:
    """Fails at start-up, not on the first request, when an annotation names no field."""
    desc = method.input_type
    for name in path.split("."):
        fd = desc.fields_by_name.get(name) if desc is not None else None
        if fd is None:
            raise ValueError(f"{method.full_name}: google.api.http names unknown field {path!r}")
        desc = fd.message_type
