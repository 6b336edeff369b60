"""First latency figures of the gRPC API (a script, not a test: these machines are noisy).

Starts throwaway PostgreSQL and Redis, migrates, runs `chat-api` as a subprocess and measures
sequential SendMessage and GetMessages(limit 50) calls over one channel.

Usage: uv run python scripts/bench_api.py [--calls 500]
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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chat_migrations.cli import upgrade
from chat_shared.auth import issue_token
from chat_shared.localstack import LocalPostgres, LocalRedis, free_port
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

SECRET = "benchmark-secret-that-is-long-enough"


def summarize(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return (f"{name:<28} n={len(ms):<5} mean={statistics.fmean(ms):7.3f} ms  "
            f"p50={statistics.median(ms):7.3f}  p95={q[94]:7.3f}  p99={q[98]:7.3f}")


async def bench(port: int, calls: int) -> None:
    meta = (("authorization", f"Bearer {issue_token('alice', secret=SECRET)}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for _ in range(300):
            try:
                if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        conv = (await stub.CreateConversation(
            chat_pb2.CreateConversationRequest(member_ids=["bob", "carol"], title="bench"),
            metadata=meta)).conversation
        for _ in range(50):  # warm-up: connections, prepared statements
            await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conv.id, content="warm", idempotency_key=uuid.uuid4().hex),
                metadata=meta)
        send: list[float] = []
        for i in range(calls):
            req = chat_pb2.SendMessageRequest(conversation_id=conv.id, content=f"message {i}",
                                              idempotency_key=uuid.uuid4().hex)
            t = time.perf_counter()
            await stub.SendMessage(req, metadata=meta)
            send.append(time.perf_counter() - t)
        get: list[float] = []
        req = chat_pb2.GetMessagesRequest(conversation_id=conv.id, limit=50)
        for _ in range(calls):
            t = time.perf_counter()
            resp = await stub.GetMessages(req, metadata=meta)
            get.append(time.perf_counter() - t)
        assert len(resp.messages) == 50
    print(summarize("SendMessage", send))
    print(summarize("GetMessages (limit 50)", get))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    pg, redis = LocalPostgres().start(), LocalRedis().start()
    port = free_port()
    proc = None
    try:
        dsn = pg.create_database("chat")
        upgrade(dsn)
        env = {**os.environ, "DB_SOURCE": dsn, "REDIS_ADDR": redis.addr, "JWT_SECRET": SECRET,
               "GRPC_SERVER_ADDRESS": f"127.0.0.1:{port}", "HTTP_SERVER_ADDRESS": "127.0.0.1:0",
               "METRICS_PORT": "0", "LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "chat-api")], env=env)
        print(f"bench: chat-api on :{port}, {args.calls} sequential calls per RPC", flush=True)
        asyncio.run(bench(port, args.calls))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        redis.cleanup()
        pg.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
