"""The scaling bench phase at a small size against a real database: it loads its data set,
runs every statement the API runs with the values the API's own functions build (acting as the
API's role, for a tenant), and reports every target with a figure. A statement that gains a
parameter the phase does not pass fails here, not minutes into a full-size run."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from chat_bench import report
from chat_bench.phase import Context, run_phase
from chat_bench.phases import scaling
from chat_bench.stack import Target
from tests.conftest import TEST_SECRET
from tests.helpers import db_rows

pytestmark = pytest.mark.timeout(180)


async def test_the_scaling_phase_runs_at_a_small_size(db_source: str) -> None:
    settings = scaling.PHASE.settings(argparse.Namespace(
        quick=True, scaling_size=0.001, scaling_calls=12))
    target = Target(grpc="", http="", ws="", jwt_secret=TEST_SECRET, db_source=db_source)
    ctx = Context(target=target, settings=settings)
    result: dict[str, Any] = {}
    await run_phase(scaling.PHASE, ctx, result)
    assert ctx.errors == {}
    figures = result["scaling"]
    assert len(figures["steps"]) == len(scaling.STEPS)
    for step in figures["steps"]:
        assert set(step["latency"]) == set(scaling.NAMES)
        assert all(s["n"] == 2 for s in step["latency"].values())  # 12 calls, past the first 10
    assert all(c.value is not None for c in scaling.targets(figures))
    # Every timed send committed a message (a refused send would time nothing): the fresh
    # connections' first calls and the warm calls, at every step.
    sends = len(scaling.STEPS) * (scaling.FRESH_CONNECTIONS + 12)
    assert await db_rows(db_source, "SELECT count(*) FROM messages"
                                    " WHERE idempotency_key LIKE 'scale-%%'") == [(sends,)]
    lines = report.render({"scaling": figures, "runs": [{"scaling": figures}]},
                          (scaling.PHASE,))
    assert any(line.startswith("Scaling, 0.001 of the full size") for line in lines)


def test_values_missing_for_a_statement_parameter_are_refused() -> None:
    statements = {"SendMessage": "SELECT %(tenant)s, %(attachment_ids)s"}
    with pytest.raises(RuntimeError, match=r"SendMessage: no values for \['attachment_ids'\]"):
        scaling.check_params(statements, {"SendMessage": {"tenant": "default"}})
    with pytest.raises(RuntimeError, match="MarkAsRead: no values"):
        scaling.check_params({"MarkAsRead": "SELECT 1"}, {})
    scaling.check_params(statements, {"SendMessage": {"tenant": "t", "attachment_ids": []}})
