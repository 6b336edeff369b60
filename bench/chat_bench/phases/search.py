"""The search phase: SearchMessages over a million messages, and what indexing costs a send.

The loader COPYs the data set straight into the schema (gapless seqs, created_at rising with
seq, member rows and ``member_ids`` as the API writes them; not the change log, which search
does not read): at the full size (``--search-size 1``) 1,000,000 messages over 10,000
conversations of two members, 100 each; the searcher ("search-user") is a member of 200 of
them. Each message is 4 to 20 words drawn from ``words.txt`` (common chat words, most frequent
first, a few accented ones) with Zipf-like frequencies (the word of rank r weighs 1/r), so
common words are in a large share of the messages and the rarer ones in a few hundred, as in
real text. The ``search_vector`` trigger runs for every row, as it does for a send; the GIN
index is dropped for the load and built after it (what a bulk load does), and the load time
counts both.

Then, over gRPC, one call at a time, the searcher's SearchMessages across all conversations
and within one (a mix of frequent, middling and rare words, two-word queries, a phrase, OR,
an exclusion and search-as-you-type prefixes), and SendMessage with the indexing (trigger and
GIN index) and without it (trigger disabled, index dropped), in the same sitting: with, then
without, then with again after the index is rebuilt, so a drift of the machine hits both.

Opt-in (``--only search``): at full size it loads for minutes and writes a million messages
into the database; give ``--db-source`` of a throwaway stack.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import psycopg

from chat_bench.clients import grpc_channel
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_shared.db import conninfo
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

SEARCHER = "search-user"
FULL_MESSAGES = 1_000_000
FULL_CONVERSATIONS = 10_000
SEARCHER_CONVERSATIONS = 200
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
INDEX_SQL = "CREATE INDEX {name} ix_messages_search ON messages USING gin (search_vector)"
TRIGGER = "messages_search_vector"


def words() -> list[str]:
    """The shipped word list, most frequent first."""
    text = resources.files("chat_bench").joinpath("words.txt").read_text(encoding="utf-8")
    return [w for w in text.split() if w]


def _cid(i: int) -> str:
    return str(uuid.UUID(int=(0x5EA4C << 96) + i))


def queries(vocabulary: list[str]) -> list[str]:
    """The search mix: single words of every frequency, two words, a phrase, OR, an
    exclusion and prefixes (a trailing space ends a word; without one it is a prefix)."""
    w = vocabulary
    return [f"{w[3]} ", f"{w[40]} ", f"{w[150]} ", f"{w[300]} ", f"{w[-20]} ",
            f"{w[60]} {w[120]} ", f'"{w[1]} {w[2]}"', f"{w[200]} OR {w[250]} ",
            f"{w[80]} -{w[0]} ", w[110][:3], f"{w[20]} {w[230][:4]}", "cafe "]


async def load(conn: psycopg.AsyncConnection[Any], conversations: int, per_conversation: int,
               seed: int = 21) -> int:
    """COPYs the data set; answers how many messages it wrote."""
    vocabulary = words()
    weights = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(vocabulary))))
    rng = random.Random(seed)
    searcher_in = min(SEARCHER_CONVERSATIONS, conversations)
    async with conn.cursor() as cur:
        async with cur.copy("COPY conversations (id, title, created_by, created_at,"
                            " last_message_at, last_activity_at, last_seq, last_pos,"
                            " last_root_seq, member_ids) FROM STDIN") as copy:
            for i in range(conversations):
                a, b = _members(i, searcher_in)
                last = _created(i, per_conversation)
                await copy.write_row((_cid(i), f"s{i}", a, _created(i, 0), last, last,
                                      per_conversation, per_conversation, per_conversation,
                                      [a, b]))
        async with cur.copy("COPY conversation_members (conversation_id, user_id,"
                            " last_activity_at, last_read_seq, role) FROM STDIN") as copy:
            for i in range(conversations):
                a, b = _members(i, searcher_in)
                last = _created(i, per_conversation)
                await copy.write_row((_cid(i), a, last, per_conversation, "owner"))
                await copy.write_row((_cid(i), b, last, per_conversation, "member"))
        # Every message root-level: root_seq = seq.
        async with cur.copy("COPY messages (id, conversation_id, seq, root_seq, sender_id,"
                            " content, idempotency_key, created_at) FROM STDIN") as copy:
            for i in range(conversations):
                cid = _cid(i)
                pair = _members(i, searcher_in)
                lengths = rng.choices(range(4, 21), k=per_conversation)
                drawn = iter(rng.choices(vocabulary, cum_weights=weights, k=sum(lengths)))
                for seq in range(1, per_conversation + 1):
                    content = " ".join(itertools.islice(drawn, lengths[seq - 1]))
                    await copy.write_row((uuid.uuid4(), cid, seq, seq, pair[seq % 2],
                                          content, f"{cid}:{seq}", _created(i, seq)))
    return conversations * per_conversation


def _members(i: int, searcher_in: int) -> tuple[str, str]:
    return (f"search-{i}", SEARCHER if i < searcher_in else f"search-{i}b")


def _created(i: int, seq: int) -> datetime:
    # A message an hour, conversations a second apart: created_at rises with seq.
    return EPOCH + timedelta(hours=seq, seconds=i)


async def _time_searches(stub: Any, md: Any, mix: list[str], calls: int,
                         conversation_id: str | None) -> tuple[list[float], int]:
    samples: list[float] = []
    hits = 0
    for i in range(calls):
        req = chat_pb2.SearchMessagesRequest(query=mix[i % len(mix)], limit=20)
        if conversation_id is not None:
            req.conversation_id = conversation_id
        start = time.perf_counter()
        resp = await stub.SearchMessages(req, metadata=md, timeout=30)
        samples.append(time.perf_counter() - start)
        hits += len(resp.hits)
    return samples, hits


async def _time_sends(stub: Any, md: Any, conversation_id: str, calls: int, tag: str
                      ) -> list[float]:
    samples = []
    vocabulary = words()
    rng = random.Random(tag)
    for i in range(calls):
        req = chat_pb2.SendMessageRequest(
            conversation_id=conversation_id, idempotency_key=f"search-{tag}-{i}",
            content=" ".join(rng.choices(vocabulary[:300], k=12)))
        start = time.perf_counter()
        await stub.SendMessage(req, metadata=md, timeout=30)
        samples.append(time.perf_counter() - start)
    return samples


async def run(ctx: Context) -> dict[str, Any]:
    dsn = ctx.target.db_source
    if not dsn:
        raise RuntimeError("the search phase loads its data set into the database: "
                           "give --db-source for a running stack")
    size, calls, sends = (ctx.settings["search_size"], ctx.settings["search_calls"],
                          ctx.settings["search_sends"])
    conversations = max(SEARCHER_CONVERSATIONS // 10, round(FULL_CONVERSATIONS * size))
    per_conversation = FULL_MESSAGES // FULL_CONVERSATIONS
    session: dict[str, Any] = {"autocommit": True, "options": "-c TimeZone=UTC"}
    async with await psycopg.AsyncConnection.connect(conninfo(dsn), **session) as conn:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        started = time.monotonic()
        await conn.execute("DROP INDEX IF EXISTS ix_messages_search")
        loaded = await load(conn, conversations, per_conversation)
        copied = time.monotonic() - started
        await conn.execute(INDEX_SQL.format(name=""))
        await conn.execute("ANALYZE")
        load_s = time.monotonic() - started
        ctx.progress(f"search: {loaded:,} messages over {conversations:,} conversations "
                     f"loaded in {load_s:.1f} s (COPY {copied:.1f} s); timing ...")
        md = ctx.user(SEARCHER).meta
        mix = queries(words())
        async with grpc_channel(ctx.target.grpc, own_connection=True) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)  # type: ignore[no-untyped-call]
            await _time_searches(stub, md, mix, len(mix), None)  # warm-up
            across, hits_all = await _time_searches(stub, md, mix, calls, None)
            within, hits_one = await _time_searches(stub, md, mix, calls, _cid(0))
            target = _cid(1)
            await _time_sends(stub, md, target, 10, "warm")
            with_index = await _time_sends(stub, md, target, sends // 2, "with-1")
            await conn.execute(f"ALTER TABLE messages DISABLE TRIGGER {TRIGGER}")
            await conn.execute("DROP INDEX ix_messages_search")
            await _time_sends(stub, md, target, 10, "warm-without")
            without = await _time_sends(stub, md, target, sends, "without")
            await conn.execute(f"ALTER TABLE messages ENABLE TRIGGER {TRIGGER}")
            await conn.execute("UPDATE messages SET search_vector ="
                               " to_tsvector('chat_search', content)"
                               " WHERE search_vector IS NULL")
            rebuilt = time.monotonic()
            await conn.execute(INDEX_SQL.format(name=""))
            rebuild_s = time.monotonic() - rebuilt
            await _time_sends(stub, md, target, 10, "warm-again")
            with_index += await _time_sends(stub, md, target, sends - sends // 2, "with-2")
    return {"size": size, "messages": loaded, "conversations": conversations,
            "searcher_conversations": min(SEARCHER_CONVERSATIONS, conversations),
            "load_s": round(load_s, 1), "copy_s": round(copied, 1),
            "index_build_s": round(rebuild_s, 1), "queries": mix,
            "search_all": summarize(across), "search_one": summarize(within),
            "hits_per_search_all": round(hits_all / max(1, calls), 1),
            "hits_per_search_one": round(hits_one / max(1, calls), 1),
            "send_with_index": summarize(with_index), "send_without_index": summarize(without)}


def _ms(figures: Mapping[str, Any], key: str, stat: str) -> float | None:
    value = (figures.get(key) or {}).get(stat)
    return float(value) if value is not None else None


def _overhead(figures: Mapping[str, Any]) -> float | None:
    w, wo = _ms(figures, "send_with_index", "mean_ms"), _ms(figures, "send_without_index",
                                                             "mean_ms")
    return (w / wo - 1) * 100 if w is not None and wo else None


def targets(figures: Mapping[str, Any]) -> list[Check]:
    size = figures.get("size", 1.0)
    where = "" if size == 1.0 or not figures else f" (at {size:g} of the full size)"
    messages = figures.get("messages", FULL_MESSAGES)
    return [
        check(f"search: SearchMessages p50, all conversations, {messages:,} msgs{where}",
              _ms(figures, "search_all", "p50_ms"), "<= 20 ms", at_most(20.0), "ms"),
        check(f"search: SearchMessages p99, all conversations{where}",
              _ms(figures, "search_all", "p99_ms"), "<= 100 ms", at_most(100.0), "ms"),
        check(f"search: SearchMessages p50, one conversation{where}",
              _ms(figures, "search_one", "p50_ms"), "<= 5 ms", at_most(5.0), "ms"),
        check(f"search: SendMessage mean, with indexing over without{where}",
              _overhead(figures), "<= 15 %", at_most(15.0), "%"),
        check(f"search: loader (COPY and index build){where}", figures.get("load_s"),
              "<= 180 s", at_most(180.0), "s"),
    ]


def details(figures: Mapping[str, Any]) -> list[str]:
    rows = [[name, *(fmt(_ms(figures, key, s)) for s in ("mean_ms", "p50_ms", "p99_ms")),
             str((figures.get(key) or {}).get("n", ""))]
            for name, key in (("SearchMessages, all 200 conversations", "search_all"),
                              ("SearchMessages, one conversation", "search_one"),
                              ("SendMessage with indexing", "send_with_index"),
                              ("SendMessage without indexing", "send_without_index"))]
    return [f"Search over {figures['messages']:,} messages in {figures['conversations']:,} "
            f"conversations (the searcher in {figures['searcher_conversations']}), over gRPC "
            f"one call at a time; loaded in {figures['load_s']} s (COPY with the vector "
            f"trigger {figures['copy_s']} s, then the GIN index); the index rebuilt in "
            f"{figures['index_build_s']} s. Hits per search: "
            f"{figures['hits_per_search_all']} (all), {figures['hits_per_search_one']} (one). "
            "Queries: " + ", ".join(f"`{q}`" for q in figures["queries"]) + ".", "",
            *table(["call", "mean ms", "p50 ms", "p99 ms", "n"], rows), "",
            f"SendMessage overhead of indexing: {fmt(_overhead(figures))} %."]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--search-size", type=float,
                       help="share of the full data set (1: 1,000,000 messages over 10,000 "
                            "conversations; --quick: 0.01)")
    group.add_argument("--search-calls", type=int,
                       help="SearchMessages calls per kind (300; --quick: 24)")
    group.add_argument("--search-sends", type=int,
                       help="SendMessage calls with and without indexing each (400; "
                            "--quick: 20)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))

    def pick(name: str, full: float, small: float) -> float:
        value = getattr(args, name, None)
        return value if value is not None else (small if quick else full)
    return {"search_size": pick("search_size", 1.0, 0.01),
            "search_calls": int(pick("search_calls", 300, 24)),
            "search_sends": int(pick("search_sends", 400, 20))}


PHASE = Phase(
    name="search", about="SearchMessages over a million COPY-loaded messages, and the "
                         "SendMessage cost of indexing (opt-in: --only search)",
    run=run, targets=targets, details=details, options=_options, settings=_settings,
    repeated=False, default=False)

__all__ = ["PHASE", "queries", "words"]
