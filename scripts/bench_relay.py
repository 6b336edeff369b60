"""Outbox relay figures (a script, not a test: these machines are noisy).

Starts throwaway PostgreSQL and Redis, migrates, runs one `chat-outbox-relay` subprocess and
measures:

1. commit-to-stream latency at a sustained insert rate: single-row transactions (as the API
   commits a message) paced at --rate events/s for --duration s; latency is the time from the
   INSERT's commit returning to a stream reader (XREAD BLOCK) receiving the entry, so it
   includes the reader's own delay;
2. sustained throughput: --events rows preloaded while the relay is stopped, then drained by
   one relay; events/s from the first to the last entry's stream id (Redis ms clock).

PostgreSQL runs on durable commits (its defaults) unless --unsafe-fast-db; the settings it ran
with are read back from the server and printed first.

Usage: uv run python scripts/bench_relay.py [--rate 1000] [--duration 10] [--events 50000]
                                            [--unsafe-fast-db]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

import psycopg
import redis.asyncio as aioredis

from chat_bench import database
from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis
from chat_devtools.services import Relay
from chat_migrations.cli import upgrade

STREAM = "chat:events:0"
_ONE = """
    INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload)
    VALUES (%s, 'message.created', %s, %s, ARRAY['alice', 'bob'],
            jsonb_build_object('message', jsonb_build_object('content', 'bench', 'seq', %s)))
"""
_PRELOAD = """
    INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload)
    SELECT gen_random_uuid(), 'message.created', c.id, s, ARRAY['alice', 'bob'],
           jsonb_build_object('message', jsonb_build_object(
               'id', gen_random_uuid(), 'conversation_id', c.id, 'sender_id', 'alice',
               'content', 'benchmark message ' || s, 'seq', s, 'created_at', clock_timestamp()))
    FROM generate_series(1, %s) s,
         LATERAL (SELECT gen_random_uuid() AS id FROM generate_series(1, %s)) c
"""


def start_relay(dsn: str, redis_addr: str, batch: int, log_dir: Path) -> Relay:
    env = {**os.environ, "ENVIRONMENT": "development", "DB_SOURCE": dsn,
           "REDIS_ADDR": redis_addr, "METRICS_ADDRESS": "127.0.0.1",
           "OUTBOX_BATCH_SIZE": str(batch), "LOG_LEVEL": "WARNING"}
    return Relay(env, log_dir, quick_intervals=False).start().wait_ready()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def latency(dsn: str, redis_addr: str, rate: int, duration: float) -> list[float]:
    host, port = redis_addr.rsplit(":", 1)
    r = aioredis.Redis(host=host, port=int(port), decode_responses=True)
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    total = int(rate * duration)
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(8)]
    free: asyncio.Queue[psycopg.AsyncConnection[object]] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    convs = [str(uuid.uuid4()) for _ in range(100)]
    seqs = dict.fromkeys(convs, 0)
    last_id = (await r.xinfo_stream(STREAM))["last-generated-id"] if await r.exists(STREAM) \
        else "0-0"

    async def reader() -> None:
        nonlocal last_id
        while len(arrived) < total:
            reply = await r.xread({STREAM: last_id}, block=1000, count=1000)
            now = time.perf_counter()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    arrived.setdefault(fields["event_id"], now)

    async def one(conn: psycopg.AsyncConnection[object], conv: str, seq: int) -> None:
        event_id = str(uuid.uuid4())
        try:
            await conn.execute(_ONE, (event_id, conv, seq, seq))  # autocommit: committed here
            committed[event_id] = time.perf_counter()
        finally:
            free.put_nowait(conn)

    read_task = asyncio.create_task(reader())
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await free.get()
        conv = convs[i % len(convs)]
        # One connection at a time per conversation is not needed for the outbox; seqs only
        # need to be unique and increasing per conversation for a realistic payload.
        seqs[conv] += 1
        tasks.append(asyncio.create_task(one(conn, conv, seqs[conv])))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - start)
    try:
        await asyncio.wait_for(read_task, 30)
    except TimeoutError:
        print(f"  warning: {total - len(arrived)} events not seen within 30 s")
    for c in conns:
        await c.close()
    await r.aclose()
    print(f"  insert rate achieved: {achieved:,.0f} events/s")
    return [arrived[e] - committed[e] for e in committed if e in arrived]


def summarize(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return (f"n={len(ms)}  mean={statistics.fmean(ms):.2f} ms  p50={statistics.median(ms):.2f} ms"
            f"  p95={q[94]:.2f} ms  p99={q[98]:.2f} ms  max={ms[-1]:.2f} ms")


def throughput(dsn: str, redis_addr: str, events: int, batch: int, log_dir: Path) -> None:
    host, port = redis_addr.rsplit(":", 1)
    import redis as redis_sync

    r = redis_sync.Redis(host=host, port=int(port), decode_responses=True)
    r.delete(STREAM)
    per_conv = 50
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM outbox")
        conn.execute(_PRELOAD, (per_conv, max(1, events // per_conv)))
        total = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]  # type: ignore[index]
    relay = start_relay(dsn, redis_addr, batch, log_dir)
    try:
        deadline = time.monotonic() + 300
        while r.xlen(STREAM) < total and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        relay.stop(30)
    first = r.xrange(STREAM, count=1)[0][0]
    last = r.xrevrange(STREAM, count=1)[0][0]
    span = (int(last.split("-")[0]) - int(first.split("-")[0])) / 1000
    n = r.xlen(STREAM)
    print(f"  batch size {batch}: {n:,} events in {span:.2f} s  ->  {n / span:,.0f} events/s")
    r.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="events/s for the latency run")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of latency run")
    parser.add_argument("--events", type=int, default=50_000, help="preloaded for throughput")
    parser.add_argument("--batch-sizes", default="100,500", help="throughput runs, comma list")
    parser.add_argument("--unsafe-fast-db", action="store_true",
                        help="PostgreSQL with fsync, synchronous_commit, full_page_writes off")
    args = parser.parse_args()
    pg = LocalPostgres(durable=not args.unsafe_fast_db).start()
    rd = LocalRedis().start()
    log_dir = Path(pg.base)  # relay.log beside the cluster's files
    try:
        dsn = pg.create_database("bench")
        upgrade(dsn)
        settings = {"settings": asyncio.run(database.read_settings(dsn))}
        print(database.settings_line(settings))
        if database.unsafe(settings):
            print(f"({database.label(settings)}: every figure below is for comparison only)")
        print(f"latency: single-row commits at {args.rate} events/s for {args.duration:g} s, "
              "one relay (defaults: batch 100, 10 workers, LISTEN/NOTIFY + 100 ms poll)")
        relay = start_relay(dsn, rd.addr, 100, log_dir)
        try:
            time.sleep(2.0)  # let it take its partitions
            cpu_before = cpu_seconds(relay.pid)
            samples = asyncio.run(latency(dsn, rd.addr, args.rate, args.duration))
            relay_cpu = cpu_seconds(relay.pid) - cpu_before
        finally:
            relay.stop(30)
        print(f"  commit -> stream: {summarize(samples)}")
        # CPU per event is what the relay costs a shared node at a steady rate (small batches).
        print(f"  relay CPU: {relay_cpu:.2f} s for {len(samples):,} events"
              f"  ->  {relay_cpu / max(1, len(samples)) * 1e6:.0f} us per event")
        print(f"throughput: {args.events:,} preloaded events drained by one relay")
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            throughput(dsn, rd.addr, args.events, batch, log_dir)
    finally:
        rd.cleanup()
        pg.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
