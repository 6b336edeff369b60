"""trace_id_from: the trace id of the caller's W3C traceparent, or a fresh one."""

from __future__ import annotations

import re

import pytest

from chat_shared.observability import tracing

GIVEN = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_valid_traceparent_gives_its_trace_id() -> None:
    assert tracing.trace_id_from(f"00-{GIVEN}-00f067aa0ba902b7-01") == GIVEN
    assert tracing.trace_id_from(f" 00-{GIVEN.upper()}-00F067AA0BA902B7-01 ") == GIVEN


@pytest.mark.parametrize("value", [
    None, "", "garbage", f"00-{GIVEN}-00f067aa0ba902b7", f"00-{GIVEN}x-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all zeros: invalid by spec
])
def test_anything_else_gives_a_new_random_trace_id(value: str | None) -> None:
    first, second = tracing.trace_id_from(value), tracing.trace_id_from(value)
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second

