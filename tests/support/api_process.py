"""``chat-api`` as a real process whose JSON log and /metrics the test reads back.

The hardening tests (largest inputs, the gRPC fuzzer, HTTP parser errors) judge the server by
what it says about itself, not by client wall time: the machine running the suite is shared
and noisy, while the server's own ``duration_ms`` and its event-loop lag histogram describe
what happened inside it. JSON logging is process-wide (``configure_logging`` in ``chat-api``'s
main), so only a real process has the log lines a deployment would write.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_devtools.process import http_get
from chat_devtools.services import Api

LAG_METRIC = "chat_event_loop_lag_seconds"


class ApiUnderTest:
    """A running ``chat-api`` process: ports, log records and metrics."""

    def __init__(self, process: Api) -> None:
        self.process = process
        self.grpc_port = process.grpc_port
        self.http_port = process.http_port
        self.metrics_port = process.metrics_port

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_text(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        """A position in the log: ``records(since=...)`` reads only what came after it."""
        return self.process.log_path.stat().st_size

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        """Every complete JSON log line written after ``since``; other lines are kept as
        ``{"raw": line}`` so a traceback printed outside the JSON logger is still seen."""
        with self.process.log_path.open("rb") as log:
            log.seek(since)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1].decode(errors="replace")
        out: list[dict[str, Any]] = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    async def wait_for_records(self, predicate: Callable[[dict[str, Any]], bool], count: int = 1,
                               since: int = 0, within: float = 15.0) -> list[dict[str, Any]]:
        """The first ``count`` records after ``since`` that match; fails after ``within`` s."""
        deadline = time.monotonic() + within
        while True:
            found = [r for r in self.records(since) if predicate(r)]
            if len(found) >= count:
                return found[:count]
            self.process.alive()
            assert time.monotonic() < deadline, (
                f"{len(found)} of {count} log records within {within}s:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.02)

    async def metrics(self) -> dict[str, float]:
        """Every sample on /metrics as ``name{label="v",...}`` -> value (labels sorted)."""
        status, body = await asyncio.to_thread(http_get, self.metrics_port, "/metrics")
        assert status == 200, (status, body[:500])
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out


def lag_over(metrics: dict[str, float], seconds: str = "0.05") -> float:
    """How many event-loop lag observations were over ``seconds`` (a bucket bound)."""
    return (metrics[f"{LAG_METRIC}_count"]
            - metrics[f'{LAG_METRIC}_bucket{{le="{seconds}"}}'])


def api_process_env(api_env: dict[str, str], **overrides: str) -> dict[str, str]:
    """``api_env`` for a subprocess: the kept parts of this environment, INFO logs."""
    kept = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") or k.startswith("COVERAGE_")}
    return {**kept, **api_env, "LOG_LEVEL": "INFO", "METRICS_ADDRESS": "127.0.0.1",
            **overrides}


@pytest.fixture(name="api_process")
async def api_process_fixture(api_env: dict[str, str],
                              tmp_path: pathlib.Path) -> AsyncIterator[ApiUnderTest]:
    """``chat-api`` started from ``api_env`` with INFO logs and /metrics, SERVING."""
    process = Api(api_process_env(api_env), tmp_path, metrics=True).start()
    try:
        await process.ready()
        yield ApiUnderTest(process)
    finally:
        process.stop()
