"""chat_bench.database.analyze: the statistics a phase's fresh rows get before its timing."""

from __future__ import annotations

import psycopg

from chat_bench.database import analyze


def _last_analyzed(db_source: str) -> dict[str, bool]:
    with psycopg.connect(db_source, autocommit=True) as conn:
        rows = conn.execute("SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables "
                            "WHERE relname IN ('messages', 'conversations')").fetchall()
    return {str(name): bool(done) for name, done in rows}


def test_analyze_gives_every_table_statistics(db_source: str) -> None:
    assert _last_analyzed(db_source) == {"messages": False, "conversations": False}
    assert analyze(db_source) is True
    assert _last_analyzed(db_source) == {"messages": True, "conversations": True}


def test_without_a_database_address_nothing_is_analysed() -> None:
    assert analyze("") is False
