"""The search bench phase at a small size against a real API and database: it loads, times,
puts the index and trigger back, and reports every target with a figure."""

from __future__ import annotations

import argparse
from typing import Any

from chat_bench import report
from chat_bench.phase import Context, run_phase
from chat_bench.phases import search
from chat_bench.stack import Target
from tests.conftest import TEST_SECRET
from tests.helpers import db_rows


async def test_the_search_phase_runs_at_a_small_size(api: Any, db_source: str) -> None:
    settings = search.PHASE.settings(argparse.Namespace(
        quick=True, search_size=0.002, search_calls=12, search_sends=6))
    target = Target(grpc=f"127.0.0.1:{api.grpc_port}", http=f"http://127.0.0.1:{api.http_port}",
                    ws="", jwt_secret=TEST_SECRET, db_source=db_source)
    ctx = Context(target=target, settings=settings)
    result: dict[str, Any] = {}
    await run_phase(search.PHASE, ctx, result)
    assert ctx.errors == {}
    figures = result["search"]
    assert figures["messages"] == 2000 and figures["search_all"]["n"] == 12
    assert figures["hits_per_search_all"] > 0 and figures["hits_per_search_one"] > 0
    assert figures["send_with_index"]["n"] == 6 and figures["send_without_index"]["n"] == 6
    assert all(c.value is not None for c in search.targets(figures))
    # The index and the trigger are back, and every message has its vector.
    assert await db_rows(db_source, "SELECT count(*) FROM messages"
                                    " WHERE search_vector IS NULL") == [(0,)]
    assert await db_rows(db_source, "SELECT tgenabled FROM pg_trigger"
                                    " WHERE tgname = 'messages_search_vector'") == [("O",)]
    assert await db_rows(db_source, "SELECT count(*) FROM pg_indexes"
                                    " WHERE indexname = 'ix_messages_search'") == [(1,)]
    lines = report.render({"search": figures, "runs": [{"search": figures}]}, (search.PHASE,))
    assert any(line.startswith("Search over 2,000 messages") for line in lines)
