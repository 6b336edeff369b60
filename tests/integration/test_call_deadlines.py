"""The caller's deadline through the call pipeline (chat_api.transport.dispatch).

Why: a deadline is what lets the API stop working for a caller who has given up, and answer
DEADLINE_EXCEEDED while the caller can still use the answer. gRPC carries it in the call;
HTTP clients send ``Grpc-Timeout`` as gRPC-Gateway reads it. What a deadline does to the
database calls is tested in test_db.py and, with PostgreSQL frozen, test_postgres_freeze.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from google.rpc import code_pb2

from tests.conftest import make_token


@pytest.fixture
async def http(api: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
            f"http://127.0.0.1:{api.http_port}",
            headers={"Authorization": f"Bearer {make_token('alice')}"}) as session:
        yield session


async def _list(http: aiohttp.ClientSession, grpc_timeout: str) -> tuple[int, Any]:
    async with http.get("/v1/conversations", headers={"Grpc-Timeout": grpc_timeout}) as resp:
        return resp.status, await resp.json()


async def test_a_grpc_timeout_header_with_time_left_changes_nothing(http) -> None:
    assert (await _list(http, "30S"))[0] == 200


async def test_a_deadline_too_short_to_start_is_504_deadline_exceeded(http) -> None:
    status, body = await _list(http, "1m")
    assert status == 504
    assert body["code"] == code_pb2.DEADLINE_EXCEEDED


@pytest.mark.parametrize("value", ["5", "1.5S", "-1S", "123456789S", "soon"])
async def test_a_malformed_grpc_timeout_is_400_naming_the_header(http, value: str) -> None:
    status, body = await _list(http, value)
    assert status == 400
    assert body["code"] == code_pb2.INVALID_ARGUMENT
    assert body["message"].startswith("Grpc-Timeout:")
