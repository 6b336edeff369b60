"""``chat-tenant``: the tenant registry, for operators.

    chat-tenant create ID                 register a tenant (active, the settings' limits)
    chat-tenant list                      every tenant, its status and limits
    chat-tenant show ID                   one tenant
    chat-tenant disable ID                its calls answer PERMISSION_DENIED and its
                                          WebSockets close (4403) within a few seconds
    chat-tenant enable ID                 active again
    chat-tenant set-limit ID NAME VALUE   a limit of its own (max_members, max_message_length,
                                          rate_limit.send.rate ...: docs/rate-limits.md);
                                          VALUE "default" removes it

It writes the registry as the user of DB_SOURCE, the tables' owner that runs chat-migrate (the
services' role may only read it). Exit codes: 0 done, 1 no such tenant (or it exists, for
create), 2 bad usage or configuration, 3 the database cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import psycopg

from chat_api.service.tenants import LIMIT_NAMES
from chat_shared.db import CLI_EXIT_UNREACHABLE, CLI_EXIT_USAGE, CliSessionFailed, connect_cli
from chat_shared.tenancy import TENANT_ID

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, CLI_EXIT_USAGE, CLI_EXIT_UNREACHABLE

_COLUMNS = "id, status, limits, created_at"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chat-tenant", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("create", "show", "disable", "enable"):
        sub.add_parser(name).add_argument("id")
    sub.add_parser("list")
    limit = sub.add_parser("set-limit")
    limit.add_argument("id")
    limit.add_argument("name", choices=LIMIT_NAMES)
    limit.add_argument("value", help="a positive integer, or 'default'")
    return p


def _line(row: tuple[Any, ...]) -> str:
    limits = json.dumps(row[2], sort_keys=True, separators=(",", ":"))
    return f"{row[0]}\t{row[1]}\tlimits={limits}\tcreated={row[3].isoformat()}"


def _run(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    if args.command == "list":
        for row in conn.execute(f"SELECT {_COLUMNS} FROM tenants ORDER BY id").fetchall():
            print(_line(row))
        return EXIT_OK
    tenant = args.id
    if args.command == "create":
        row = conn.execute(f"INSERT INTO tenants (id) VALUES (%s) ON CONFLICT (id) DO NOTHING"
                           f" RETURNING {_COLUMNS}", (tenant,)).fetchone()
        if row is None:
            print(f"chat-tenant: tenant {tenant!r} exists already", file=sys.stderr)
            return EXIT_MISSING
    elif args.command == "show":
        row = conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE id = %s", (tenant,)).fetchone()
    elif args.command in ("disable", "enable"):
        status = "disabled" if args.command == "disable" else "active"
        row = conn.execute(f"UPDATE tenants SET status = %s WHERE id = %s RETURNING {_COLUMNS}",
                           (status, tenant)).fetchone()
    else:
        if args.value == "default":
            row = conn.execute(f"UPDATE tenants SET limits = limits - %s WHERE id = %s"
                               f" RETURNING {_COLUMNS}", (args.name, tenant)).fetchone()
        else:
            row = conn.execute(
                f"UPDATE tenants SET limits = limits || jsonb_build_object(%s::text, %s::int)"
                f" WHERE id = %s RETURNING {_COLUMNS}",
                (args.name, int(args.value), tenant)).fetchone()
    if row is None:
        print(f"chat-tenant: no tenant {tenant!r}", file=sys.stderr)
        return EXIT_MISSING
    print(_line(row))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "id", None) is not None and not TENANT_ID.fullmatch(args.id):
        print("chat-tenant: a tenant id is 1..63 of a-z 0-9 - _ (starting with a letter or "
              "digit)", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "set-limit" and args.value != "default" and not (
            args.value.isdigit() and 0 < int(args.value) < 2**31):
        print("chat-tenant: VALUE must be a positive integer or 'default'", file=sys.stderr)
        return EXIT_USAGE
    try:
        conn = connect_cli("chat-tenant")
    except CliSessionFailed as exc:
        print(f"chat-tenant: {exc}", file=sys.stderr)
        return exc.exit_code
    with conn:
        try:
            return _run(conn, args)
        except psycopg.OperationalError as exc:
            print(f"chat-tenant: the database failed: {type(exc).__name__}", file=sys.stderr)
            return EXIT_UNREACHABLE


if __name__ == "__main__":
    raise SystemExit(main())
