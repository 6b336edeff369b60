"""The scaling phase: does each read and write stay flat as the data grows?

Loading millions of messages through the API would take most of an hour, so this phase COPYs
a data set straight into the schema (every invariant kept: gapless seqs, member rows with their
conversation's last activity, ``member_ids``, created_at non-decreasing with seq) in steps:
one member ("scale-heavy") in ``conversations`` conversations of two members, one
conversation ("the big one") that grows to ``big_messages`` messages, and one ("threaded") of
half that size where three messages in four are replies in the thread of its first; at the full size
(``--scaling-size 1``) 20,000 conversations and 2,000,000 messages, 1,000,000 of them in the
big conversation. After each step (and ANALYZE) it times the API's own statements with the
values the API's own functions build, as the API runs them (psycopg, prepared; sessions with
generic plans, acting as the API's role under row-level security, for the tenant
``chat_shared.db.tenant_execute`` names), one call at a time over loopback: the
figures are the database's part of each RPC, which is the part that could grow with the data
(the rest of an RPC does not read the data). For each statement the table shows the p50 at each
step and the ratio of the largest step to the smallest; "first call" rows time a statement's
first call on a fresh connection, warmed as the API's pool warms each new connection
(``chat_api.storage.warmup``): the median over ``FRESH_CONNECTIONS`` connections, against
warm calls.

Opt-in (``--only scaling``): it loads for minutes at full size. It needs the database
(``--db-source`` for a running stack) and writes into it: run it on a throwaway stack.
It also reports the bytes each message costs on disk (table, TOAST and each index).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_shared.db import conninfo, tenant_execute

HEAVY = "scale-heavy"
STEPS = (0.0025, 0.025, 0.25, 1.0)  # of the full size: 50 / 500 / 5,000 / 20,000 memberships
BIG_STEPS = (0.001, 0.01, 0.1, 1.0)  # 1,000 / 10,000 / 100,000 / 1,000,000 messages
FULL_CONVERSATIONS = 20_000
FULL_BIG_MESSAGES = 1_000_000
FULL_MESSAGES = 2_000_000
CONTENT = "x" * 76  # the benchmark's usual message size
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
MIN_MEMBERSHIPS = 60  # a full first page (51 rows) at every step
FLAT = 1.5
FRESH_FACTOR = 2.0
FRESH_CONNECTIONS = 7  # first calls timed per statement and step (their median)
TENANT = "default"  # the loaded rows' tenant (the column's default)
API_ROLE = "chat_app"  # what the API's sessions act as (ApiSettings.database_role)


async def _one(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None
               ) -> tuple[Any, ...]:
    row = await (await conn.execute(sql, params)).fetchone()
    if row is None:
        raise RuntimeError(f"no row: {sql}")
    return tuple(row)


def _cid(i: int) -> str:
    return str(uuid.UUID(int=(0x5CA1E << 96) + i))


BIG = _cid(10**9)
THREADED = _cid(10**9 + 1)
"""A conversation half the big one's size where three messages in four answer its first."""
THREAD_ROOT = _cid(2 * 10**9)


class _Loader:
    """COPYs the data set in steps; remembers how far it got."""

    def __init__(self) -> None:
        self.conversations = 0
        self.big = 0
        self.threaded = 0
        self.messages = 0

    async def create_big(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO conversations (id, title, created_by, created_at, last_activity_at,"
                " member_ids) VALUES (%s, 'big', %s, %s, %s, %s)",
                (BIG, HEAVY, EPOCH, EPOCH, [HEAVY, "scale-other"]))
            await cur.execute(
                "INSERT INTO conversation_members (conversation_id, user_id, last_activity_at)"
                " VALUES (%s, %s, %s), (%s, 'scale-other', %s)", (BIG, HEAVY, EPOCH, BIG, EPOCH))
            await cur.execute(
                "INSERT INTO conversations (id, title, created_by, created_at, last_activity_at,"
                " member_ids) VALUES (%s, 'threaded', %s, %s, %s, %s)",
                (THREADED, HEAVY, EPOCH, EPOCH, [HEAVY, "scale-other"]))
            await cur.execute(
                "INSERT INTO conversation_members (conversation_id, user_id, last_activity_at)"
                " VALUES (%s, %s, %s), (%s, 'scale-other', %s)",
                (THREADED, HEAVY, EPOCH, THREADED, EPOCH))

    async def grow(self, conn: psycopg.AsyncConnection[Any], conversations: int,
                   per_conversation: int, big: int) -> None:
        """Conversations up to ``conversations`` (each with ``per_conversation`` messages) and
        the big conversation up to ``big`` messages, one millisecond apart."""
        new = range(self.conversations, conversations)
        async with conn.cursor() as cur:
            async with cur.copy("COPY conversations (id, title, created_by, created_at,"
                               " last_message_at, last_activity_at, last_seq, last_pos,"
                               " last_root_seq, member_ids) FROM STDIN") as copy:
                for i in new:
                    created = EPOCH + timedelta(seconds=i)
                    last = created + timedelta(milliseconds=per_conversation)
                    await copy.write_row((_cid(i), f"c{i}", HEAVY, created, last, last,
                                          per_conversation, per_conversation,
                                          per_conversation, [HEAVY, f"scale-{i}"]))
            async with cur.copy("COPY conversation_members (conversation_id, user_id,"
                                " last_activity_at, last_read_seq) FROM STDIN") as copy:
                for i in new:
                    last = EPOCH + timedelta(seconds=i, milliseconds=per_conversation)
                    await copy.write_row((_cid(i), HEAVY, last, per_conversation))
                    await copy.write_row((_cid(i), f"scale-{i}", last, 0))
            async with cur.copy("COPY messages (id, conversation_id, seq, root_seq, sender_id,"
                                " content, idempotency_key, created_at) FROM STDIN") as copy:
                for i in new:
                    created = EPOCH + timedelta(seconds=i)
                    cid = _cid(i)
                    for seq in range(1, per_conversation + 1):
                        await copy.write_row((uuid.uuid4(), cid, seq, seq, HEAVY, CONTENT,
                                              f"{cid}:{seq}",
                                              created + timedelta(milliseconds=seq)))
                for seq in range(self.big + 1, big + 1):
                    await copy.write_row((uuid.uuid4(), BIG, seq, seq, HEAVY, CONTENT, f"big:{seq}",
                                          EPOCH + timedelta(milliseconds=seq)))
            threaded = max(200, big // 2)
            async with cur.copy("COPY messages (id, conversation_id, seq, root_seq,"
                                " thread_root_id, thread_seq, sender_id, content,"
                                " idempotency_key, created_at) FROM STDIN") as copy:
                # seq s is root-level when s % 4 == 1; (s + 3) // 4 roots are at or before it.
                for seq in range(self.threaded + 1, threaded + 1):
                    roots = (seq + 3) // 4
                    root = seq % 4 == 1
                    await copy.write_row((THREAD_ROOT if seq == 1 else uuid.uuid4(), THREADED,
                                          seq, roots, None if root else THREAD_ROOT,
                                          None if root else seq - roots, HEAVY, CONTENT,
                                          f"threaded:{seq}",
                                          EPOCH + timedelta(milliseconds=seq)))
            if threaded > self.threaded:
                last = EPOCH + timedelta(milliseconds=threaded)
                roots = (threaded + 3) // 4
                await cur.execute(
                    "UPDATE conversations SET last_seq = %s, last_root_seq = %s,"
                    " last_message_at = %s, last_activity_at = %s WHERE id = %s",
                    (threaded, roots, last, last, THREADED))
                await cur.execute("UPDATE messages SET reply_count = %s, last_reply_at = %s"
                                  " WHERE id = %s", (threaded - roots, last, THREAD_ROOT))
                self.messages += threaded - self.threaded
                self.threaded = threaded
            if big > self.big:
                last = EPOCH + timedelta(milliseconds=big)
                await cur.execute(
                    "UPDATE conversations SET last_seq = %s, last_pos = %s, last_root_seq = %s,"
                    " last_message_at = %s, last_activity_at = %s WHERE id = %s",
                    (big, big, big, last, last, BIG))
                await cur.execute(
                    "UPDATE conversation_members SET last_activity_at = %s"
                    " WHERE conversation_id = %s", (last, BIG))
        self.messages += len(new) * per_conversation + max(0, big - self.big)
        self.conversations, self.big = max(self.conversations, conversations), max(self.big, big)


def _statements() -> dict[str, str]:
    # The API's own SQL (imported here, not at module level: only this phase needs the API's
    # package, which the benchmark's workspace has installed).
    from chat_api.storage.conversations import _LIST_AFTER, _LIST_FIRST
    from chat_api.storage.messages import _PAGE, _ROOT_PAGE, _THREAD_PAGE, send_statement
    from chat_api.storage.reads import _MARK

    return {"GetConversations(50)": _LIST_FIRST, "GetConversations(50), deep page": _LIST_AFTER,
            "GetMessages(50) newest": _ROOT_PAGE["newest"],
            "GetMessages(50) 100 pages back": _ROOT_PAGE["before_seq"],
            "GetMessages(50) after_seq": _ROOT_PAGE["after_seq"],
            "GetMessages(50) before_timestamp": _ROOT_PAGE["before_time"],
            "GetMessages(50) with replies, 100 pages back": _PAGE["before_seq"],
            "threads: GetMessages(50) 100 pages back": _ROOT_PAGE["before_seq"],
            "threads: GetThread(50) newest": _THREAD_PAGE["newest"],
            "threads: GetThread(50) after_seq": _THREAD_PAGE["after_seq"],
            # The statement MessageRepository.send picks for a root-level message without
            # attachments (the values below).
            "SendMessage": send_statement(None, None), "MarkAsRead": _MARK}


async def _params(conn: psycopg.AsyncConnection[Any], loader: _Loader) -> dict[str, Any]:
    """Each statement's values at this step: the deepest pages the data set has."""
    oldest = await _one(
        conn, "SELECT last_activity_at, conversation_id::text FROM conversation_members"
        " WHERE user_id = %s ORDER BY last_activity_at, conversation_id LIMIT 1", (HEAVY,))
    before = (await _one(conn, "SELECT created_at FROM messages WHERE conversation_id = %s"
                               " AND seq = 51", (BIG,)))[0]
    from chat_api.storage.messages import send_params  # the API's package: see _statements
    from chat_api.storage.reads import mark_params

    page = {"tenant": TENANT, "user_id": HEAVY, "limit": 51, "conversation_id": BIG}
    thread = {**page, "conversation_id": THREADED, "root_id": THREAD_ROOT}
    params: dict[str, Any] = {
        "GetConversations(50)": page,
        # The last page: the keyset ends just above the member's oldest conversation.
        "GetConversations(50), deep page": {**page, "after_time": oldest[0] + timedelta(
            microseconds=1), "after_id": oldest[1]},
        "GetMessages(50) newest": page,
        "GetMessages(50) 100 pages back": {**page, "cursor": max(52, loader.big - 100 * 50)},
        "GetMessages(50) after_seq": {**page, "cursor": loader.big // 2},
        # Every message but the oldest 50 is newer than this time.
        "GetMessages(50) before_timestamp": {**page, "before": before},
        "GetMessages(50) with replies, 100 pages back": {
            **page, "cursor": max(52, loader.big - 100 * 50)},
        # 100 pages of roots back: 20,000 messages, three in four of them replies.
        "threads: GetMessages(50) 100 pages back": {
            **thread, "cursor": max(4 * 52, loader.threaded - 4 * 100 * 50)},
        "threads: GetThread(50) newest": thread,
        "threads: GetThread(50) after_seq": {**thread, "after": loader.threaded // 2},
        # As MessageRepository.send and ReadRepository.mark build them (_time sets each
        # send's idempotency key).
        "SendMessage": send_params(TENANT, _cid(0), HEAVY, CONTENT, ""),
        "MarkAsRead": mark_params(TENANT, _cid(0), HEAVY, 0),
    }
    return {name: {"tenant": TENANT, **values} for name, values in params.items()}


def placeholders(sql: str) -> set[str]:
    """The names of a statement's ``%(name)s`` parameters."""
    return set(re.findall(r"%\((\w+)\)s", sql))


def check_params(statements: Mapping[str, str], params: Mapping[str, Mapping[str, Any]]
                 ) -> None:
    """Refuses to time a statement with values it does not take, before any is timed.

    Raises:
        RuntimeError: a statement names a parameter its values lack (the API's statement
            changed and this phase's values did not follow), or has no values at all.
    """
    problems = [f"{name}: no values for {sorted(placeholders(sql) - set(params[name]))}"
                if name in params else f"{name}: no values"
                for name, sql in statements.items()
                if name not in params or placeholders(sql) - set(params[name])]
    if problems:
        raise RuntimeError("the scaling phase's values do not match the API's statements: "
                           + "; ".join(problems))


async def _time(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any],
                name: str, calls: int, tag: str) -> list[float]:
    """``calls`` executions, one at a time, as the API makes them (for the tenant, through
    ``tenant_execute``); each must answer with a row, or the figure would time a no-op (a
    send refused, a page for no member)."""
    samples = []
    for i in range(calls):
        if name == "SendMessage":
            params = {**params, "idempotency_key": f"scale-{tag}-{i}"}
        start = time.perf_counter()
        rows = await (await tenant_execute(conn, TENANT, sql, params)).fetchall()
        samples.append(time.perf_counter() - start)
        if not rows or rows[0][0] is None:
            raise RuntimeError(f"scaling: {name} answered no row: it timed nothing")
    return samples


async def run(ctx: Context) -> dict[str, Any]:
    dsn = ctx.target.db_source
    if not dsn:
        raise RuntimeError("the scaling phase loads its data set into the database: "
                           "give --db-source for a running stack")
    size = ctx.settings["scaling_size"]
    calls = ctx.settings["scaling_calls"]
    statements = _statements()
    from chat_api.storage.warmup import warm_connection  # the API's package: see _statements
    conversations = max(2, round(FULL_CONVERSATIONS * size))
    big_total = max(200, round(FULL_BIG_MESSAGES * size))
    per_conversation = max(1, round((FULL_MESSAGES - FULL_BIG_MESSAGES) / FULL_CONVERSATIONS))
    loader = _Loader()
    steps: list[dict[str, Any]] = []
    session: dict[str, Any] = {"autocommit": True, "options": "-c TimeZone=UTC"}
    # The API's own sessions: generic plans (chat_shared.db.Database(generic_plans=True)), as
    # the role row-level security holds (so the plans include the tenant policy).
    api_session = {**session, "options": "-c TimeZone=UTC -c plan_cache_mode=force_generic_plan"
                                         f" -c role={API_ROLE}"}
    async with await psycopg.AsyncConnection.connect(conninfo(dsn), **session) as conn:
        await loader.create_big(conn)
        for share, big_share in zip(STEPS, BIG_STEPS, strict=True):
            started = time.monotonic()
            await loader.grow(conn, max(MIN_MEMBERSHIPS, round(conversations * share)),
                              per_conversation,
                              max(200, round(big_total * big_share)))
            await conn.execute("ANALYZE")
            loaded = time.monotonic() - started
            ctx.progress(f"scaling: {loader.conversations:,} memberships, {loader.big:,} "
                         f"messages in the big conversation, {loader.messages:,} in all "
                         f"(loaded in {loaded:.1f} s); timing ...")
            params = await _params(conn, loader)
            check_params(statements, params)
            step: dict[str, Any] = {"memberships": loader.conversations,
                                    "big_messages": loader.big, "messages": loader.messages,
                                    "load_s": round(loaded, 1), "latency": {}, "first_call": {}}
            for name, sql in statements.items():
                # Fresh connections per statement: each one's first call (one sample each is
                # mostly noise: the median of FRESH_CONNECTIONS), then warm calls on the last.
                firsts: list[float] = []
                for attempt in range(FRESH_CONNECTIONS):
                    async with await psycopg.AsyncConnection.connect(conninfo(dsn),
                                                                     **api_session) as fresh:
                        # What the API's pool does to every new connection before handing
                        # it out (its configure hook): each hot statement prepared once.
                        await warm_connection(fresh)
                        firsts += await _time(fresh, sql, params[name], name, 1,
                                              f"{len(steps)}-first-{attempt}")
                        if attempt == FRESH_CONNECTIONS - 1:
                            samples = await _time(fresh, sql, params[name], name, calls,
                                                  f"{len(steps)}-warm")
                step["latency"][name] = summarize(samples[10:])  # past psycopg's prepare
                step["first_call"][name] = round(statistics.median(firsts) * 1000, 3)
            steps.append(step)
        bytes_per_message = await _bytes_per_message(conn)
    return {"size": size, "calls": calls, "steps": steps, "bytes_per_message": bytes_per_message}


async def _bytes_per_message(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """``messages``' table, TOAST and each index, in bytes per message."""
    await conn.execute("VACUUM ANALYZE messages")
    count, heap, toast, total = await _one(
        conn, "SELECT (SELECT count(*) FROM messages),"
        " pg_relation_size('messages'), pg_total_relation_size('messages')"
        "   - pg_relation_size('messages') - pg_indexes_size('messages'),"
        " pg_total_relation_size('messages')")
    cur = await conn.execute(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index"
        " WHERE indrelid = 'messages'::regclass ORDER BY 1")
    indexes = {name: round(size / count, 1) for name, size in await cur.fetchall()}
    return {"messages": count, "total": round(total / count, 1), "rows": round(heap / count, 1),
            "toast": round(toast / count, 1), "indexes": indexes, "content_bytes": len(CONTENT)}


def _p50(step: Mapping[str, Any], name: str) -> float | None:
    value = ((step.get("latency") or {}).get(name) or {}).get("p50_ms")
    return float(value) if value is not None else None


def _ratio(figures: Mapping[str, Any], name: str) -> float | None:
    steps = figures.get("steps") or []
    if len(steps) < 2:
        return None
    first, last = _p50(steps[0], name), _p50(steps[-1], name)
    return last / first if first and last is not None else None


def _fresh_ratio(figures: Mapping[str, Any], name: str) -> float | None:
    steps = figures.get("steps") or []
    if not steps:
        return None
    first = (steps[-1].get("first_call") or {}).get(name)
    warm = _p50(steps[-1], name)
    return first / warm if first is not None and warm else None


NAMES = ("GetConversations(50)", "GetConversations(50), deep page", "GetMessages(50) newest",
         "GetMessages(50) 100 pages back", "GetMessages(50) after_seq",
         "GetMessages(50) before_timestamp", "GetMessages(50) with replies, 100 pages back",
         "threads: GetMessages(50) 100 pages back", "threads: GetThread(50) newest",
         "threads: GetThread(50) after_seq", "SendMessage", "MarkAsRead")


def targets(figures: Mapping[str, Any]) -> list[Check]:
    steps = figures.get("steps") or []
    last = steps[-1] if steps else {}
    full = figures.get("size") == 1.0
    where = "" if full or not steps else f" (at {figures.get('size'):g} of the full size)"
    out = [check(f"scaling: {name}, largest / smallest p50{where}", _ratio(figures, name),
                 f"<= {FLAT:g}x", at_most(FLAT), "x") for name in NAMES]
    out.append(check(f"scaling: GetConversations(50) p50 at {last.get('memberships', 20_000):,}"
                     " memberships", _p50(last, "GetConversations(50)"), "<= 2 ms",
                     at_most(2.0), "ms"))
    newer = max(0, last.get("big_messages", 1_000_051) - 51)
    out.append(check(f"scaling: before_timestamp p50 with {newer:,} newer messages",
                     _p50(last, "GetMessages(50) before_timestamp"), "<= 2 ms",
                     at_most(2.0), "ms"))
    out += [check(f"scaling: {name}, first call on a fresh connection / warm p50",
                  _fresh_ratio(figures, name), f"<= {FRESH_FACTOR:g}x", at_most(FRESH_FACTOR),
                  "x") for name in ("GetConversations(50)", "GetMessages(50) before_timestamp")]
    return out


def details(figures: Mapping[str, Any]) -> list[str]:
    steps = figures["steps"]
    header = ["statement", *(f"{s['memberships']:,} conv. / {s['big_messages']:,} msg."
                             for s in steps), "largest / smallest"]
    rows = [[name, *(fmt(_p50(s, name)) for s in steps), fmt(_ratio(figures, name), "x")]
            for name in NAMES]
    rows += [[f"{name}: first call on a fresh connection",
              *(fmt((s.get("first_call") or {}).get(name)) for s in steps), ""]
             for name in ("GetConversations(50)", "GetMessages(50) before_timestamp")]
    b = figures["bytes_per_message"]
    size = figures["size"]
    scope = ("the full size" if size == 1.0
             else f"{size:g} of the full size (a reduced run: the ratios span less growth)")
    return [f"Scaling, {scope}: statement p50 in ms ({figures['calls']} warm calls each, "
            "one at a time) as the data grows; columns: the member's conversations / "
            "messages in the big conversation; loaded with COPY "
            f"({', '.join(str(s['load_s']) + ' s' for s in steps)} per step):", "",
            *table(header, rows), "",
            f"Bytes per message on disk ({b['messages']:,} messages of {b['content_bytes']} "
            f"bytes of content): {fmt(b['total'])} in all; rows {fmt(b['rows'])}, TOAST "
            f"{fmt(b['toast'])}, " + ", ".join(f"{k} {fmt(v)}" for k, v in
                                                 b["indexes"].items()) + "."]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--scaling-size", type=float,
                       help="share of the full data set (1: 20,000 conversations, 2,000,000 "
                            "messages; --quick: 0.01)")
    group.add_argument("--scaling-calls", type=int,
                       help="warm calls per statement and step (200; --quick: 30)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    size = args.scaling_size if args.scaling_size is not None else (
        0.01 if args.quick else 1.0)
    calls = args.scaling_calls if args.scaling_calls is not None else (
        30 if args.quick else 200)
    return {"scaling_size": size, "scaling_calls": calls}


PHASE = Phase(
    name="scaling", about="each read and write as the data grows (COPY-loaded; opt-in: "
                          "--only scaling)",
    run=run, targets=targets, details=details, options=_options, settings=_settings,
    repeated=False, default=False)

