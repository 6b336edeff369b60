"""The OpenAPI document: committed file fresh, served as-is, rendered at /docs, and fuzzed.

The fuzz test runs schemathesis against the document the server itself serves, with a valid
token, and requires that no generated request gets a 5xx and that every response (success or
error) matches the documented schema, status codes and content type.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from chat_api.transport.openapi import render_openapi
from tests.conftest import ROOT, make_token

COMMITTED = ROOT / "services" / "api" / "openapi.json"
EXAMPLES_PER_OPERATION = 40
"""Bounds the fuzz run (5 operations x 40 here runs in seconds, well under a minute)."""


def test_committed_openapi_is_fresh():
    assert COMMITTED.read_bytes() == render_openapi(), (
        "services/api/openapi.json is stale: run `uv run python scripts/gen_openapi.py`")


async def test_openapi_is_served_and_documents_every_route(api):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{api.http_port}/openapi.json") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            served = await resp.read()
        async with http.get(f"http://127.0.0.1:{api.http_port}/docs") as resp:
            assert resp.status == 200
            page = await resp.text()
    assert served == COMMITTED.read_bytes()
    doc = schemathesis.openapi.from_dict(__import__("json").loads(served))
    ops = {op.ok().label for op in doc.get_all_operations()}
    assert ops == {"POST /v1/conversations", "POST /v1/messages", "GET /v1/conversations",
                   "GET /v1/conversations/{conversation_id}/messages",
                   "GET /v1/conversations/{conversation_id}/threads/{root_id}",
                   "POST /v1/conversations/{conversation_id}/read",
                   "POST /v1/conversations/{conversation_id}/members",
                   "DELETE /v1/conversations/{conversation_id}/members/{user_id}",
                   "PUT /v1/conversations/{conversation_id}/members/{user_id}/role",
                   "PATCH /v1/conversations/{conversation_id}",
                   "GET /v1/conversations/{conversation_id}",
                   "PATCH /v1/conversations/{conversation_id}/messages/{message_id}",
                   "DELETE /v1/conversations/{conversation_id}/messages/{message_id}",
                   "POST /v1/conversations/{conversation_id}/messages/{message_id}/reactions",
                   "DELETE /v1/conversations/{conversation_id}/messages/{message_id}/reactions",
                   "GET /v1/messages:search",
                   "POST /v1/conversations/{conversation_id}/uploads",
                   "GET /v1/attachments/{attachment_id}/url",
                   "POST /v1/devices", "POST /v1/devices/{device_id}/keys",
                   "POST /v1/conversations/{conversation_id}/keys:claim",
                   "GET /v1/conversations/{conversation_id}/devices",
                   "DELETE /v1/devices/{device_id}",
                   "POST /v1/conversations/{conversation_id}/to_device",
                   "GET /v1/devices/{device_id}/inbox",
                   "POST /v1/devices/{device_id}/inbox:ack"}
    for op_id in ("CreateConversation", "SendMessage", "GetMessages", "GetThread",
                  "GetConversations", "MarkAsRead"):
        assert f"id='{op_id}'" in page
    # Works offline: nothing is loaded from another host.
    assert not re.search(r"""(src|href)=['"]https?://""", page)


def _fuzz(doc: dict[str, Any], base_url: str, token: str,
          conversation_id: str) -> Counter[int]:
    """Runs every operation's cases (blocking; the server runs on the test's event loop).

    Returns how many responses had each status code.
    """
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"Authorization": f"Bearer {token}"}
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance,
              content_type_conformance]
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        strategy = op.as_strategy()
        if any(p.name == "conversation_id" for p in op.iter_parameters()):
            # Half the cases hit a real conversation, so they get past id validation.
            strategy = st.one_of(strategy, op.as_strategy(
                path_parameters={"conversation_id": conversation_id}))

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  derandomize=True, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=checks)

        run()
    return statuses


# The API under test runs in this process, in another thread than the fuzzer, and one of its
# libraries (psycopg_pool's reconnect jitter) uses the shared `random` module: Hypothesis sees
# the shared state move during a draw and warns as if a strategy had used it. No strategy does.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_schemathesis_finds_no_server_error_or_schema_violation(api, capsys):
    base = f"http://127.0.0.1:{api.http_port}"
    token = make_token("alice")
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get("/openapi.json") as resp:
            doc = await resp.json()
        async with http.post("/v1/conversations", json={"member_ids": ["bob"]}) as resp:
            conv = (await resp.json())["conversation"]
        async with http.post("/v1/messages", json={"conversation_id": conv["id"], "content": "x",
                                                   "idempotency_key": uuid.uuid4().hex}) as resp:
            assert resp.status == 200
    statuses = await asyncio.to_thread(_fuzz, doc, base, token, conv["id"])
    cases = sum(statuses.values())
    with capsys.disabled():
        print(f"\nschemathesis: {cases} cases, statuses {dict(sorted(statuses.items()))}")
    assert cases >= 5 * EXAMPLES_PER_OPERATION // 2
    assert statuses[200] > 0 and statuses[400] > 0  # it reached both the service and the checks


def test_committed_path_is_where_the_script_writes():
    script = (ROOT / "scripts" / "gen_openapi.py").read_text()
    assert '"services" / "api" / "openapi.json"' in script
    assert pathlib.Path(COMMITTED).is_file()
