"""What row-level security and the per-statement tenant setting cost, statement by statement.

Runs the API's own hot statements (SendMessage, GetMessages(50), GetConversations(50)) against a
throwaway PostgreSQL (as the test fixtures run it: fsync off, so that a commit's flush does not
drown the difference) on one connection per variant, alternating the variants' order every
round so that the machine's noise falls on all alike:

- ``bypass``: a superuser session (row-level security does not apply to it), the statement
  alone: what a statement cost before tenancy, apart from its tenant conditions;
- ``policy``: the services' role (``chat_app``) with ``app.tenant_id`` set once for the session,
  the statement alone: the policy's own cost;
- ``tenant``: the services' role through ``chat_shared.db.tenant_execute``, as the services
  run every statement, the same tenant each time: the session names it already, so the
  statement runs alone (the usual case: one tenant, or a connection serving a tenant again);
- ``switching``: the services' role, ``set_config`` and the statement in one pipeline, what
  ``tenant_execute`` sends when the connection served another tenant last (the worst case).

Prints, per statement and variant, the median over rounds of each round's median latency
(client side, one connection, sequential) and each round's median difference from ``bypass``.

Usage: uv run python scripts/measure_tenant_cost.py [--rounds 10] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from chat_api.storage.conversations import _LIST_FIRST
from chat_api.storage.messages import _PAGE, send_params, send_statement
from chat_devtools.local_postgres import LocalPostgres
from chat_migrations.cli import upgrade
from chat_shared.db import SET_TENANT, conninfo, tenant_execute

USER = "bench-user"
TENANT = "default"
_DATA = """
    INSERT INTO conversations (id, title, created_by, member_ids, last_seq, last_root_seq,
                               last_message_at, last_activity_at)
    SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 'c' || i, %(u)s,
           ARRAY[%(u)s] || ARRAY(SELECT 'member-' || i || '-' || j FROM generate_series(1, 24) j),
           60, 60, now(), now() - i * interval '1 s'
    FROM generate_series(1, 200) i;
    INSERT INTO conversation_members (conversation_id, user_id, last_activity_at)
    SELECT c.id, m, c.last_activity_at FROM conversations c, unnest(c.member_ids) m;
    INSERT INTO messages (id, conversation_id, seq, root_seq, sender_id, content,
                          idempotency_key, created_at)
    SELECT gen_random_uuid(), c.id, s, s, %(u)s, 'message ' || s, c.id::text || '-' || s,
           now() - (61 - s) * interval '1 ms'
    FROM conversations c, generate_series(1, 60) s;
    ANALYZE;
"""
VARIANTS = ("bypass", "policy", "tenant", "switching")


async def session(dsn: str, variant: str) -> psycopg.AsyncConnection[Any]:
    options = "-c plan_cache_mode=force_generic_plan"
    if variant != "bypass":
        options += " -c role=chat_app"
    conn = await psycopg.AsyncConnection.connect(conninfo(dsn), autocommit=True, options=options)
    if variant == "policy":
        await conn.execute("SELECT set_config('app.tenant_id', %s, false)", (TENANT,))
    return conn


def statements() -> dict[str, Callable[[int], tuple[str, dict[str, Any]]]]:
    conv = "00000000-0000-0000-0000-000000000001"
    return {
        "SendMessage": lambda i: (send_statement(None, None), send_params(
            TENANT, f"00000000-0000-0000-0000-{2 + i % 150:012x}", USER, "hello",
            uuid.uuid4().hex)),
        "GetMessages(50)": lambda i: (_PAGE["newest"], {
            "tenant": TENANT, "conversation_id": conv, "user_id": USER, "limit": 51}),
        "GetConversations(50)": lambda i: (_LIST_FIRST, {
            "tenant": TENANT, "user_id": USER, "limit": 51}),
    }


async def run_one(conn: psycopg.AsyncConnection[Any], variant: str, sql: str,
                  params: dict[str, Any]) -> float:
    start = time.perf_counter()
    if variant == "tenant":
        await (await tenant_execute(conn, TENANT, sql, params)).fetchall()
    elif variant == "switching":
        async with conn.pipeline():
            await conn.execute(SET_TENANT, (TENANT,), prepare=True)
            cursor = await conn.execute(sql, params)
        await cursor.fetchall()
    else:
        await (await conn.execute(sql, params, prepare=True)).fetchall()
    return time.perf_counter() - start


async def measure(dsn: str, rounds: int, calls: int) -> None:
    conns = {v: await session(dsn, v) for v in VARIANTS}
    stmts = statements()
    medians: dict[tuple[str, str], list[float]] = {}
    for make in stmts.values():  # warm every plan on every connection
        for variant, conn in conns.items():
            for i in range(10):
                await run_one(conn, variant, *make(i))
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for name, make in stmts.items():
            for variant in order:
                times = [await run_one(conns[variant], variant, *make(r * calls + i))
                         for i in range(calls)]
                medians.setdefault((name, variant), []).append(statistics.median(times))
        print(f"round {r + 1}/{rounds} done", flush=True)
    for conn in conns.values():
        await conn.close()
    print("\n| statement | variant | median (µs) | vs bypass (µs, median of rounds) |")
    print("|---|---|---|---|")
    for name in stmts:
        base = medians[(name, "bypass")]
        for variant in VARIANTS:
            own = medians[(name, variant)]
            diff = statistics.median(a - b for a, b in zip(own, base, strict=True))
            print(f"| {name} | {variant} | {statistics.median(own) * 1e6:.0f} | "
                  f"{diff * 1e6:+.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    pg = LocalPostgres().start()
    try:
        dsn = pg.create_database("tenant_cost")
        upgrade(dsn)
        with psycopg.connect(conninfo(dsn), autocommit=True) as conn:
            for statement in _DATA.split(";"):
                if statement.strip():
                    conn.execute(statement, {"u": USER} if "%(u)s" in statement else None)
        asyncio.run(measure(dsn, args.rounds, args.calls))
    finally:
        pg.stop()
        pg.cleanup()


if __name__ == "__main__":
    main()
