"""Median latency of POST /v1/messages next to gRPC SendMessage (a script, not a test).

Starts throwaway PostgreSQL and Redis, migrates, runs `chat-api` as a subprocess (so client and
server do not share an event loop) and sends sequentially, alternating one gRPC call and one
HTTP call so that drift on a noisy machine hits both sides alike. HTTP uses one keep-alive
aiohttp session; gRPC one channel. Both go through the same Dispatcher and SendMessage
transaction, so the difference is the transport: HTTP/1.1 + JSON vs HTTP/2 + protobuf.

Usage: uv run python scripts/bench_http_vs_grpc.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import grpc

from chat_migrations.cli import upgrade
from chat_shared.auth import issue_token
from chat_shared.localstack import LocalPostgres, LocalRedis, free_port
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

SECRET = "benchmark-secret-that-is-long-enough"


def summarize(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return (f"{name:<24} n={len(ms):<5} median={statistics.median(ms):7.3f} ms  "
            f"mean={statistics.fmean(ms):7.3f}  p95={q[94]:7.3f}  p99={q[98]:7.3f}")


async def _wait_http(http: aiohttp.ClientSession) -> None:
    for _ in range(300):
        try:
            async with http.get("/v1/conversations") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("chat-api did not answer over HTTP")


async def bench(grpc_port: int, http_port: int, calls: int) -> None:
    token = issue_token("alice", secret=SECRET)
    meta = (("authorization", f"Bearer {token}"),)
    headers = {"Authorization": f"Bearer {token}"}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch, \
            aiohttp.ClientSession(f"http://127.0.0.1:{http_port}", headers=headers) as http:
        await _wait_http(http)
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        conv = (await stub.CreateConversation(
            chat_pb2.CreateConversationRequest(member_ids=["bob"], title="bench"),
            metadata=meta)).conversation

        async def grpc_send(i: int) -> None:
            await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conv.id, content=f"grpc {i}", idempotency_key=uuid.uuid4().hex),
                metadata=meta)

        async def http_send(i: int) -> None:
            async with http.post("/v1/messages", json={
                    "conversation_id": conv.id, "content": f"http {i}",
                    "idempotency_key": uuid.uuid4().hex}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body!r}")

        for i in range(50):  # warm-up: connections, pools, prepared statements
            await grpc_send(i)
            await http_send(i)
        samples: dict[str, list[float]] = {"grpc": [], "http": []}
        for i in range(calls):
            for name, fn in (("grpc", grpc_send), ("http", http_send)):
                t = time.perf_counter()
                await fn(i)
                samples[name].append(time.perf_counter() - t)
    print(summarize("gRPC SendMessage", samples["grpc"]))
    print(summarize("HTTP POST /v1/messages", samples["http"]))
    diff = statistics.median(samples["http"]) - statistics.median(samples["grpc"])
    print(f"HTTP - gRPC median: {diff * 1000:+.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    pg, redis = LocalPostgres().start(), LocalRedis().start()
    grpc_port, http_port = free_port(), free_port()
    proc = None
    try:
        dsn = pg.create_database("chat")
        upgrade(dsn)
        env = {**os.environ, "DB_SOURCE": dsn, "REDIS_ADDR": redis.addr, "JWT_SECRET": SECRET,
               "GRPC_SERVER_ADDRESS": f"127.0.0.1:{grpc_port}",
               "HTTP_SERVER_ADDRESS": f"127.0.0.1:{http_port}",
               "METRICS_PORT": "0", "LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "chat-api")], env=env,
                                stdout=subprocess.DEVNULL)
        print(f"bench: chat-api gRPC :{grpc_port} HTTP :{http_port}, {args.calls} sequential "
              "sends per transport, alternating", flush=True)
        asyncio.run(bench(grpc_port, http_port, args.calls))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        redis.cleanup()
        pg.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
