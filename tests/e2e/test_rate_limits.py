"""Rate limits across replicas: two API worker processes (API_WORKERS=2) share one Redis, so a
user's budget is one budget whichever process serves the call (in-process tests of the
answers themselves: tests/integration/test_rate_limits.py)."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest

from chat_devtools.services import metric_sum
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth
from tests.e2e.test_api_workers import _log_lines, _start, _wait_all_started, _wait_ready

pytestmark = pytest.mark.redis_cluster

GRANTED = 400
"""The burst; the rate (0.01/s) adds well under one call over the test's run."""


async def _calls(port: int, count: int, user: str) -> list[grpc.StatusCode]:
    """``count`` reads over a new connection (the kernel spreads connections over workers)."""
    codes = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        for _ in range(count):
            try:
                await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                            metadata=auth(user), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
    return codes


async def test_two_workers_grant_one_budget(api_env, tmp_path):
    api = _start(api_env, tmp_path, RATE_LIMIT_ENABLED="true", RATE_LIMIT_READ_RATE="0.01",
                 RATE_LIMIT_READ_BURST=str(GRANTED)).wait_ready()
    try:
        await _wait_ready(api.grpc_port)  # as user "probe": its own budget
        await _wait_all_started(tmp_path)
        # 16 connections of 30 calls, 4 at a time: 480 calls for a budget of 400. The kernel
        # spreads connections over the two workers (SO_REUSEPORT) by a hash of their ports, so
        # once in a while every granted call lands on one worker, which proves nothing about
        # sharing: then the same is done again as another user (its own budget), at most 3 times.
        for attempt in range(3):
            user = f"alice{attempt}"
            codes: list[grpc.StatusCode] = []
            for _ in range(4):
                batches = await asyncio.gather(*(_calls(api.grpc_port, 30, user)
                                                 for _ in range(4)))
                codes += [c for batch in batches for c in batch]
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == len(
                codes) - codes.count(grpc.StatusCode.OK)
            # Refused after: once the budget is spent, further calls are refused. A process may
            # let one more through on an answer the other process made stale (the limiter
            # decides ahead of Redis when the last answer left room); then it knows.
            after = await _calls(api.grpc_port, 20, user)
            assert after.count(grpc.StatusCode.OK) <= 1, after
            assert set(after[1:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, after
            granted = codes.count(grpc.StatusCode.OK) + after.count(grpc.StatusCode.OK)
            assert abs(granted - GRANTED) <= GRANTED // 100, granted
            pids = {line["pid"] for line in _log_lines(tmp_path)
                    if line.get("msg") == "rpc" and line.get("user") == user}
            if len(pids) == 2:
                break
            print(f"{user}'s granted calls all reached one worker {pids}; again as another user")
        assert len(pids) == 2, f"the granted calls were served by {pids} in 3 attempts"
        url = f"http://127.0.0.1:{api.metrics_port}/metrics"
        body = (await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())).decode()
        limited = metric_sum(body, 'chat_ratelimit_requests_total{class="read",result="limited"}')
        assert limited >= len(codes) + len(after) - granted  # earlier attempts count too
        # The limited client is logged once a minute per process, not once per call.
        logged = [line for line in _log_lines(tmp_path) if line.get("msg") == "rate_limited"]
        assert 1 <= len(logged) <= 2 * (attempt + 1)  # per user and process
    finally:
        api.stop()
