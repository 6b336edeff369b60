"""The HTTP API keeps the contract its OpenAPI document publishes, in both directions.

Schemathesis (its CLI, as a subprocess, against the live server and the document it serves)
runs every check it has (``--checks all``: no server error, response schema, status codes,
content type, headers, positive data accepted, negative data rejected, ...) with positive and
negative generation, over every phase (explicit examples, coverage, fuzzing, and stateful
sequences following the document's links), with a valid bearer token.

One built-in check is swapped for a narrower copy: ``positive_data_acceptance`` becomes
``positive_data_acceptance_but_server_state`` (tests/support/schemathesis_hooks.py), which
excuses a 400 only for the rules OpenAPI 3.0 cannot state (a page token the server did not
issue, two query parameters that exclude each other, a key that may come from a header).

Two short runs follow without a usable token (none, and an expired one): every answer is 401.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys
from collections import Counter
from typing import Any

import pytest

from tests.conftest import ROOT, make_token
from tests.integration.test_http_contract import IMPLEMENTATION_TEXT

MAX_EXAMPLES = 60
"""Per operation and phase; with 5 operations and both modes, well over 1,000 cases."""
MIN_CASES = 1000
SCHEMATHESIS = pathlib.Path(sys.executable).parent / "schemathesis"


async def _run(base: str, tmp: pathlib.Path, name: str, *args: str) -> dict[str, Any]:
    """Runs schemathesis; returns its exit code, output and JUnit-free summary."""
    report = tmp / f"{name}.ndjson"
    exemptions = tmp / f"{name}.exemptions"
    messages = tmp / f"{name}.messages"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
           "PYTHONPATH": str(ROOT), "CONTRACT_FUZZ_EXEMPTIONS": str(exemptions),
           "CONTRACT_FUZZ_MESSAGES": str(messages), "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--url", base,
        "--seed", "1", "--generation-deterministic",
        "--report", "ndjson", "--report-ndjson-path", str(report),
        "--request-timeout", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    return {"code": proc.returncode, "output": out.decode(errors="replace"),
            "events": [json.loads(line) for line in report.read_text().splitlines() if line],
            "exemptions": Counter(exemptions.read_text().split("\n")[:-1])
            if exemptions.exists() else Counter(),
            "messages": [json.loads(line) for line in messages.read_text().splitlines()]
            if messages.exists() else []}


def _cases(events: list[dict[str, Any]]) -> Counter[str]:
    """Cases by generation mode, from the ndjson report's scenario events."""
    modes: Counter[str] = Counter()
    for event in events:
        for value in event.values():
            if not isinstance(value, dict):
                continue
            recorder = value.get("recorder")
            if not isinstance(recorder, dict):
                continue
            for case in recorder.get("cases", {}).values():
                meta = (case.get("value") or {}).get("meta") or {}
                mode = (meta.get("generation") or {}).get("mode", "unknown")
                modes[mode] += 1
    return modes


async def test_the_api_keeps_its_published_contract(api, tmp_path, capsys):
    base = f"http://127.0.0.1:{api.http_port}"
    token = make_token("alice")
    result = await _run(base, tmp_path, "valid", "--checks", "all",
                        "--exclude-checks", "positive_data_acceptance",
                        "--mode", "all", "--max-examples", str(MAX_EXAMPLES),
                        "-H", f"Authorization: Bearer {token}")
    cases = _cases(result["events"])
    with capsys.disabled():
        print(f"\nschemathesis: {sum(cases.values())} cases by mode {dict(cases)}, "
              f"400s excused {dict(result['exemptions'])}")
    assert result["code"] == 0, result["output"][-6000:]
    assert sum(cases.values()) >= MIN_CASES, result["output"][-3000:]
    assert cases["positive"] > 0 and cases["negative"] > 0
    messages = result["messages"]
    assert len(messages) > 100
    assert sorted({m for m in messages if IMPLEMENTATION_TEXT.search(str(m))}) == []


@pytest.mark.parametrize("credentials", ["none", "expired"])
async def test_without_a_usable_token_every_answer_is_401(api, tmp_path, credentials, capsys):
    base = f"http://127.0.0.1:{api.http_port}"
    header = [] if credentials == "none" else [
        "-H", f"Authorization: Bearer {make_token('alice', ttl=-60)}"]
    result = await _run(base, tmp_path, credentials, "--checks", "not_a_server_error",
                        "--mode", "all", "--max-examples", "10", "--phases", "fuzzing", *header)
    statuses = Counter(_statuses(result["events"]))
    with capsys.disabled():
        print(f"\nschemathesis without a token ({credentials}): statuses {dict(statuses)}")
    assert result["code"] == 0, result["output"][-3000:]
    assert sum(statuses.values()) >= 50
    assert set(statuses) == {401}


def _statuses(events: list[dict[str, Any]]) -> list[int]:
    found: list[int] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            status = value.get("status_code")
            if isinstance(status, int) and "elapsed" in value:
                found.append(status)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(events)
    return found
