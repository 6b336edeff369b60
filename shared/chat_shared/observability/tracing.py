"""OpenTelemetry tracing, recorded only when someone receives the spans.

Spans are exported over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is set. Without it nobody
would ever see a span, and on the request path they are not free: an SDK span costs about
15 us of CPU and the gRPC server interceptor about 100 us per call on a small VM, several
percent of a SendMessage. So when spans are not recorded, ``Tracer.start_as_current_span`` is a
no-op, the API installs no tracing interceptor, and the trace id that every call's log line
carries comes from the caller's W3C ``traceparent`` (or is a new random one) instead of from a
span: logs stay correlated with the caller's trace either way.
"""

from __future__ import annotations

import contextlib
import random
import re
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False
_recording = False

# version "00", 32 hex trace id (not all zeros), 16 hex parent id, 2 hex flags.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)


def configure_tracing(service: str, otlp_endpoint: str = "") -> None:
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        set_recording(True)
    trace.set_tracer_provider(provider)
    _configured = True


def set_recording(on: bool) -> None:
    """Turns span recording on or off (on when spans are exported; tests that read spans)."""
    global _recording
    _recording = on


def recording() -> bool:
    return _recording


_RNG = random.Random()
"""Our own generator, not the module's shared one: a process's random state is not perturbed by
every call (property-based tests in the same process watch the shared one)."""


def trace_id_from(traceparent: str | None) -> str:
    """The trace id of a W3C ``traceparent`` value, or a new random one (32 hex digits)."""
    if traceparent:
        match = _TRACEPARENT.match(traceparent.strip().lower())
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    return f"{_RNG.getrandbits(128):032x}"


class Tracer:
    """An OpenTelemetry tracer whose spans cost nothing while spans are not recorded."""

    def __init__(self, name: str) -> None:
        self._name = name

    def start_as_current_span(self, name: str, **kwargs: Any) -> contextlib.AbstractContextManager[
            trace.Span]:
        if not _recording:
            return _NO_SPAN
        # Looked up per span, not cached: the provider is set after modules import their tracer.
        span: contextlib.AbstractContextManager[trace.Span] = trace.get_tracer(
            self._name).start_as_current_span(name, **kwargs)
        return span


def tracer(name: str) -> Tracer:
    return Tracer(name)
