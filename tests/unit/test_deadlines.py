"""chat_shared.deadlines: the caller's deadline as a context variable, and gRPC's timeout format.

Why: the HTTP gateway reads a caller's deadline from a ``Grpc-Timeout`` header as gRPC-Gateway
does, and every database call reads the deadline from here; a misparsed unit would make a
deadline a thousand times too long or too short.
"""

from __future__ import annotations

import asyncio

import pytest

from chat_shared import deadlines


@pytest.mark.parametrize(("value", "seconds"), [
    ("1H", 3600.0), ("2M", 120.0), ("3S", 3.0), ("500m", 0.5), ("250u", 250e-6),
    ("100n", 100e-9), ("99999999S", 99999999.0), ("0m", 0.0), (" 5S ", 5.0),
])
def test_grpc_timeouts_parse_in_seconds(value: str, seconds: float) -> None:
    assert deadlines.parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5", "S", "1s", "1.5S", "-1S", "123456789S", "1 S",
                                   "1SS", "１S"])
def test_anything_else_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="grpc-timeout"):
        deadlines.parse_grpc_timeout(value)


def test_no_deadline_outside_a_scope_and_the_scope_sets_and_restores_it() -> None:
    assert deadlines.remaining() is None
    with deadlines.deadline_after(2.0):
        left = deadlines.remaining()
        assert left is not None and 1.5 < left <= 2.0
        with deadlines.deadline_after(None):
            assert deadlines.remaining() is None
        assert deadlines.remaining() is not None
    assert deadlines.remaining() is None


async def test_each_task_has_its_own_deadline() -> None:
    async def seen(seconds: float | None) -> float | None:
        with deadlines.deadline_after(seconds):
            await asyncio.sleep(0)
            return deadlines.remaining()

    short, none, long = await asyncio.gather(seen(1.0), seen(None), seen(100.0))
    assert none is None
    assert short is not None and long is not None and short < 1.0 < 99.0 < long
