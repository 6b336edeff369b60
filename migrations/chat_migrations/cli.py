"""``chat-migrate``: applies (or reverts) the schema on DB_SOURCE.

    chat-migrate                 upgrade to the newest revision (what deployments run)
    chat-migrate downgrade base  revert everything
    chat-migrate current         show the applied revision
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.config import Config

from chat_shared.config import ConfigError, DatabaseSettings, load_settings
from chat_shared.db import redacted

HERE = Path(__file__).resolve().parent


def sqlalchemy_url(db_source: str) -> str:
    """``postgresql://...`` -> ``postgresql+psycopg://...``: SQLAlchemy (under alembic) names
    its driver in the scheme; psycopg 3 is the one every service uses."""
    parts = urlsplit(db_source)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def alembic_config(db_source: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    # ConfigParser interpolates '%': escape it so passwords with '%' survive.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(db_source).replace("%", "%%"))
    return cfg


def upgrade(db_source: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(db_source), revision)


def downgrade(db_source: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(db_source), revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-migrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", default="upgrade",
                        choices=["upgrade", "downgrade", "current", "history"])
    parser.add_argument("revision", nargs="?", default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(DatabaseSettings)
    except ConfigError as exc:
        print(f"chat-migrate: {exc}", file=sys.stderr)
        return 2
    if not settings.db_source:
        print("chat-migrate: DB_SOURCE is not set", file=sys.stderr)
        return 2
    cfg = alembic_config(settings.db_source)
    print(f"chat-migrate: {args.action} on {redacted(settings.db_source)}", file=sys.stderr)
    try:
        if args.action == "upgrade":
            command.upgrade(cfg, args.revision or "head")
        elif args.action == "downgrade":
            command.downgrade(cfg, args.revision or "base")
        elif args.action == "current":
            command.current(cfg, verbose=False)
        else:
            command.history(cfg)
    except Exception as exc:  # noqa: BLE001 - a command-line tool reports, it does not trace
        print(f"chat-migrate: {args.action} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"chat-migrate: {args.action} done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
