"""``chat-outbox``: manage the outbox's dead letters; refill streams from the outbox.

    chat-outbox dlq list [--limit N]        the dead letters, oldest first
    chat-outbox dlq show ID                 one dead letter in full (exit 1 if there is none)
    chat-outbox dlq replay ID               move it back into the outbox (same event_id)
    chat-outbox dlq replay --all            move every dead letter back
    chat-outbox dlq purge --older-than 7d   delete dead letters that failed before then
    chat-outbox republish --since TIME      append events published since TIME to their streams
    chat-outbox republish --from-id ID      ... those from outbox id ID on

TIME is RFC 3339 (2026-11-30T10:00:00Z) or a duration back from now (90m, 2h, 1d). Republished
entries carry their original event_id; the outbox keeps published rows for OUTBOX_RETENTION.

Reads DB_SOURCE and DB_STATEMENT_TIMEOUT from the environment (or app.env); republish also the
relay's REDIS_ADDR, STREAM_SHARDS, STREAM_PREFIX and STREAM_MAXLEN. Exit codes: 0 done,
1 no such dead letter, 2 bad usage or configuration, 3 database unreachable (or a statement
timed out), 4 Redis refused or could not take an entry (the message says the id to go on from).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from chat_outbox_relay.dead_letters import DeadLetter, DeadLetters
from chat_outbox_relay.publishing import StreamPublisher
from chat_outbox_relay.republishing import Progress, RepublishFailed, republish, start_id
from chat_outbox_relay.settings import RelayDatabaseSettings, RelaySettings
from chat_shared import db
from chat_shared.config import ConfigError, load_settings, parse_duration
from chat_shared.db import (
    CLI_EXIT_UNREACHABLE,
    CLI_EXIT_USAGE,
    CliSessionFailed,
    connect_cli,
    unavailable_on_connection_errors,
)
from chat_shared.errors import Unavailable
from chat_shared.events import format_time
from chat_shared.redis_client import create_redis

EXIT_OK, EXIT_NOT_FOUND, EXIT_REDIS = 0, 1, 4
EXIT_USAGE, EXIT_UNREACHABLE = CLI_EXIT_USAGE, CLI_EXIT_UNREACHABLE
PROGRESS_EVERY = 2.0
"""Seconds between progress lines of a long republish."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _since(text: str) -> datetime:
    """RFC 3339 time, or a duration back from now."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use 2026-11-30T10:00:00Z or a duration such as 2h)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-outbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    top = parser.add_subparsers(dest="area", required=True)
    dlq = top.add_parser("dlq", help="dead-lettered events")
    cmd = dlq.add_subparsers(dest="command", required=True)
    ls = cmd.add_parser("list", help="list dead letters, oldest first")
    ls.add_argument("--limit", type=int, default=100)
    show = cmd.add_parser("show", help="show one dead letter in full")
    show.add_argument("id", type=int)
    replay = cmd.add_parser("replay", help="move dead letters back into the outbox")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    purge = cmd.add_parser("purge", help="delete old dead letters")
    purge.add_argument("--older-than", type=_duration, required=True,
                       help="e.g. 7d, 12h, 30m")
    again = top.add_parser("republish", help="append published events to their streams again")
    start = again.add_mutually_exclusive_group(required=True)
    start.add_argument("--since", type=_since, help="published at or after this time")
    start.add_argument("--from-id", type=int, help="from this outbox id on")
    again.add_argument("--batch-size", type=int, default=1000, choices=range(1, 100_001),
                       metavar="N", help="rows per page (default 1000)")
    return parser


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_list(items: list[DeadLetter], total: int) -> None:
    if not items:
        print("no dead letters")
        return
    header = f"{'ID':>6}  {'EVENT_ID':36}  {'TYPE':18}  {'CONVERSATION':36}  {'SEQ':>6}  " \
             f"{'TRIES':>5}  {'FAILED_AT':27}  ERROR"
    print(header)
    for d in items:
        print(f"{d.id:>6}  {d.event_id:36}  {_short(d.event_type, 18):18}  "
              f"{d.conversation_id:36}  {d.seq:>6}  {d.attempts:>5}  "
              f"{format_time(d.failed_at):27}  {_short(d.last_error, 60)}")
    more = f" (showing {len(items)})" if total > len(items) else ""
    print(f"{total} dead letter(s){more}")


def _print_one(d: DeadLetter) -> None:
    fields: list[tuple[str, Any]] = [
        ("id", d.id), ("event_id", d.event_id), ("type", d.event_type),
        ("conversation_id", d.conversation_id), ("seq", d.seq),
        ("recipients", ", ".join(d.recipients)), ("created_at", format_time(d.created_at)),
        ("failed_at", format_time(d.failed_at)), ("attempts", d.attempts),
        ("last_error", d.last_error),
    ]
    for name, value in fields:
        print(f"{name + ':':17}{value}")
    print("payload:")
    print(json.dumps(d.payload, indent=2, ensure_ascii=False, sort_keys=True))


def run(args: argparse.Namespace, store: DeadLetters) -> int:
    if args.command == "list":
        _print_list(store.oldest(args.limit), store.count())
        return EXIT_OK
    if args.command == "show":
        item = store.get(args.id)
        if item is None:
            print(f"chat-outbox: no dead letter with id {args.id}", file=sys.stderr)
            return EXIT_NOT_FOUND
        _print_one(item)
        return EXIT_OK
    if args.command == "replay":
        if args.all:
            replayed = store.replay_all()
            for dl_id, event_id in replayed:
                print(f"replayed dead letter {dl_id} (event {event_id})")
            print(f"{len(replayed)} dead letter(s) moved back to the outbox")
            return EXIT_OK
        replayed_id = store.replay(args.id)
        if replayed_id is None:
            print(f"chat-outbox: no dead letter with id {args.id}", file=sys.stderr)
            return EXIT_NOT_FOUND
        print(f"replayed dead letter {args.id} (event {replayed_id}): back in the outbox")
        return EXIT_OK
    if args.command == "purge":
        removed = store.purge(args.older_than)
        print(f"purged {removed} dead letter(s) that failed more than "
              f"{args.older_than:g}s ago")
        return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")


def _republish(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(RelaySettings)
    except ConfigError as exc:
        print(f"chat-outbox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = [n for n, v in (("DB_SOURCE", settings.db_source),
                              ("REDIS_ADDR", settings.redis_addr)) if not v]
    if missing:
        print(f"chat-outbox: {' and '.join(missing)} not set", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_republish_async(args, settings))


async def _republish_async(args: argparse.Namespace, settings: RelaySettings) -> int:
    redis = create_redis(settings, max_connections=max(4, settings.outbox_workers + 2))
    publisher = StreamPublisher(redis, shards=settings.stream_shards,
                                maxlen=settings.stream_maxlen, prefix=settings.stream_prefix,
                                workers=settings.outbox_workers)
    last_line = [time.monotonic()]

    def progress(p: Progress) -> None:
        if time.monotonic() - last_line[0] >= PROGRESS_EVERY:
            last_line[0] = time.monotonic()
            print(f"republished {p.published} event(s); at outbox id {p.last_id} of "
                  f"{p.end_id}", flush=True)

    conn = None
    try:
        conn = await db.connect(settings.db_source, application_name="chat-outbox",
                                statement_timeout=settings.db_statement_timeout,
                                role=settings.database_role)
        if args.since is not None:
            first = await start_id(conn, args.since)
            if first is None:
                print(f"no event published since {format_time(args.since)} in the outbox")
                return EXIT_OK
        else:
            first = args.from_id
        print(f"republishing from outbox id {first}", flush=True)
        count = await republish(conn, publisher, from_id=first, batch_size=args.batch_size,
                                progress=progress)
    except Unavailable as exc:
        print(f"chat-outbox: the database did not answer: {exc.__cause__ or exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except RepublishFailed as exc:
        print(f"chat-outbox: Redis did not take an entry ({exc}); {exc.published} event(s) "
              f"republished; go on with --from-id {exc.resume_from}", file=sys.stderr)
        return EXIT_REDIS
    finally:
        if conn is not None:
            await conn.close()
        await redis.aclose()
    print(f"{count} event(s) republished")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.area == "republish":
        return _republish(args)
    try:
        conn = connect_cli("chat-outbox", RelayDatabaseSettings)
    except CliSessionFailed as exc:
        print(f"chat-outbox: {exc}", file=sys.stderr)
        return exc.exit_code
    with conn:
        try:
            with unavailable_on_connection_errors():
                return run(args, DeadLetters(conn))
        except Unavailable as exc:
            print(f"chat-outbox: the database did not answer: {exc.__cause__}", file=sys.stderr)
            return EXIT_UNREACHABLE


if __name__ == "__main__":
    raise SystemExit(main())
