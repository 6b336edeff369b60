"""Benchmark of the WebSocket gateway (not a test): send-to-socket latency, idle connections.

    uv run python scripts/bench_ws.py [--rate 500] [--seconds 20] [--idle 10000]

Starts throwaway PostgreSQL and Redis, then chat-api, chat-outbox-relay and one chat-ws-gateway
as real processes, and measures:

1. Latency: SendMessage over gRPC at a steady rate (default 500/s, spread over 50
   conversations and several concurrent senders), each message's time from just before the RPC
   to its frame arriving on a member's WebSocket; prints p50/p90/p99/max.
2. Idle connections: opens --idle sockets to the one gateway (in batches, from a separate
   client process so each side has its own file limit), then prints the gateway's resident
   memory growth per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chat_shared.auth import issue_token  # noqa: E402
from chat_shared.localstack import LocalPostgres, LocalRedis, free_port  # noqa: E402
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc  # noqa: E402
from tests.support.ws_stack import Api, Gateway, Relay, base_env  # noqa: E402

SECRET = "bench-secret-that-is-long-enough-for-hs256"


def token(user: str) -> str:
    return issue_token(user, secret=SECRET, ttl_seconds=7200)


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(hard, max(soft, want))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def latency(api: Api, gw: Gateway, rate: float, seconds: float) -> None:
    conversations = 50
    senders = 20
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as ch, \
            aiohttp.ClientSession() as http:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        meta = (("authorization", f"Bearer {token('sender')}"),)
        convs = []
        for i in range(conversations):
            r = await stub.CreateConversation(chat_pb2.CreateConversationRequest(
                member_ids=[f"reader{i}"], title=f"bench {i}"), metadata=meta)
            convs.append(r.conversation.id)
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        sockets = []
        for i in range(conversations):
            ws = await http.ws_connect(f"{gw.url}/v1/ws",
                                       headers={"Authorization": f"Bearer {token(f'reader{i}')}"})
            await ws.send_json({"type": "resume", "positions": {}})
            sockets.append(ws)
        total = int(rate * seconds)
        received = 0
        done = asyncio.Event()

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal received
            async for msg in ws:
                now = time.perf_counter()
                frame = msg.json()
                if frame.get("type") != "message.created":
                    continue
                started = sent_at.pop(frame["message"]["content"], None)
                if started is not None:
                    latencies.append(now - started)
                received += 1
                if received >= total:
                    done.set()

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        errors = 0

        async def sender() -> None:
            nonlocal errors
            while (item := await queue.get()) is not None:
                cid, content = item
                sent_at[content] = time.perf_counter()
                try:
                    await stub.SendMessage(chat_pb2.SendMessageRequest(
                        conversation_id=cid, content=content, idempotency_key=content),
                        metadata=meta, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    sent_at.pop(content, None)

        workers = [asyncio.create_task(sender()) for _ in range(senders)]
        start = time.perf_counter()
        for n in range(total):
            # Steady rate: message n is due at start + n / rate.
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((convs[n % conversations], uuid.uuid4().hex))
        offered = time.perf_counter() - start
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        try:
            await asyncio.wait_for(done.wait(), timeout=30)
        except TimeoutError:
            pass
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
    lat = sorted(latencies)
    if not lat:
        print("latency: nothing received")
        return

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000

    print(f"latency: {len(lat)}/{total} messages at {total / offered:.0f} msg/s offered "
          f"({errors} send errors) over {conversations} conversations")
    print(f"  send-to-socket p50 {pct(50):.1f} ms  p90 {pct(90):.1f} ms  p99 {pct(99):.1f} ms  "
          f"max {lat[-1] * 1000:.1f} ms  mean {statistics.mean(lat) * 1000:.1f} ms")


def stages(relay: Relay, gw: Gateway) -> None:
    """Where the time goes: the relay's and the gateway's own lag histograms (means)."""
    def mean(service: Relay | Gateway, port: int, name: str) -> str:
        total = service_metric(service, port, f"{name}_sum")
        count = service_metric(service, port, f"{name}_count")
        return f"{total / count * 1000:.1f} ms" if count else "n/a"

    relay_lag = mean(relay, relay.metrics_port, "outbox_publish_lag_seconds")
    gw_lag = mean(gw, gw.metrics_port, "ws_delivery_lag_seconds")
    print(f"  stages (means): outbox row -> XADD {relay_lag}; "
          f"event occurred_at -> frame written {gw_lag}")


def service_metric(service: Relay | Gateway, port: int, name: str) -> float:
    _, text = service.get(port, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


CLIENT = r'''
import asyncio, resource, sys, time
import aiohttp
url, tok, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def main():
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        socks = []
        async def one():
            ws = await s.ws_connect(url, headers={"Authorization": "Bearer " + tok},
                                    heartbeat=None, autoping=True)
            await ws.send_str('{"type":"resume","positions":{}}')
            socks.append(ws)
        failed = 0
        for i in range(0, count, 250):
            res = await asyncio.gather(*(one() for _ in range(min(250, count - i))),
                                       return_exceptions=True)
            failed += sum(isinstance(r, BaseException) for r in res)
            print(f"open {len(socks)} failed {failed}", flush=True)
        print("READY", len(socks), flush=True)
        sys.stdin.readline()
        for ws in socks:
            await ws.close()
asyncio.run(main())
'''


def idle(gw: Gateway, count: int) -> None:
    """Blocking on purpose: nothing else runs in this process meanwhile."""
    base = rss_kib(gw.proc.pid)
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, f"{gw.url}/v1/ws", token("idle"),
                             str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdin is not None
    opened = 0
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if line.startswith("READY"):
            opened = int(line.split()[1])
            break
        if time.monotonic() > deadline:
            break
    time.sleep(2)  # let the gateway settle (writer tasks, GC)
    held = gw.metric("ws_connections")
    rss = rss_kib(gw.proc.pid)
    print(f"idle: {opened}/{count} sockets opened, gateway reports ws_connections={held:.0f}")
    print(f"  gateway RSS {base / 1024:.1f} MiB -> {rss / 1024:.1f} MiB: "
          f"{(rss - base) / max(1, opened):.1f} KiB per connection")
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(60)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to open")
    args = parser.parse_args()
    raise_fd_limit(args.idle + 1000)
    pg, redis = LocalPostgres().start(), LocalRedis().start()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    services = []
    try:
        dsn = pg.create_database("bench")
        subprocess.run([str(Path(sys.executable).parent / "chat-migrate")],  # noqa: ASYNC221
                       env={**os.environ, "DB_SOURCE": dsn}, check=True,
                       stdout=subprocess.DEVNULL)
        env = base_env(dsn, redis.addr, JWT_SECRET=SECRET, LOG_LEVEL="WARNING",
                       DB_POOL_SIZE=20)
        api = Api(env, log_dir)
        relay = Relay(env, log_dir)
        gw = Gateway({**env, "WS_SEND_QUEUE_SIZE": "1024"}, log_dir, port=free_port())
        services = [gw, relay, api]
        await asyncio.gather(api.ready(), relay.ready(), gw.ready())
        print(f"bench: processes up (logs in {log_dir}); {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work shares the CPUs)")
        await latency(api, gw, args.rate, args.seconds)
        stages(relay, gw)
        if args.idle:
            idle(gw, args.idle)
    finally:
        for service in services:
            service.stop()
        redis.cleanup()
        pg.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
