"""The replica bench phase at a small size against a real API, database and standby: it makes
the standby and a second API, times every call, tells which server answered, and cleans up."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from chat_bench import report
from chat_bench.phase import Context, run_phase
from chat_bench.phases import replica
from chat_bench.stack import Target
from tests.conftest import TEST_SECRET


async def test_the_replica_phase_runs_at_a_small_size(
        api: Any, db_source: str, redis_addr: str, tmp_path: pathlib.Path) -> None:
    settings = replica.PHASE.settings(argparse.Namespace(
        quick=True, replica_calls=8, replica_messages=60))
    target = Target(grpc=f"127.0.0.1:{api.grpc_port}", http=f"http://127.0.0.1:{api.http_port}",
                    ws="", jwt_secret=TEST_SECRET, db_source=db_source, redis_addr=redis_addr,
                    log_dir=str(tmp_path), started_here=True)
    ctx = Context(target=target, settings=settings)
    result: dict[str, Any] = {}
    await run_phase(replica.PHASE, ctx, result)
    assert ctx.errors == {}
    figures = result["replica"]
    assert all(figures[name]["n"] == 8 for name in replica.CALLS)
    served = figures["reads_by_source"]
    # Reads without a position went to the standby (two per round at least).
    assert served["replica/caught_up"] >= 16
    assert served["primary/replica_failed"] == 0
    assert all(c.value is not None for c in replica.targets(figures))
    lines = report.render({"replica": figures, "runs": [{"replica": figures}]}, (replica.PHASE,))
    assert any(line.startswith("Replica: a hot standby") for line in lines)


async def test_the_replica_phase_refuses_a_stack_it_did_not_start(api: Any) -> None:
    target = Target(grpc=f"127.0.0.1:{api.grpc_port}", http="", ws="", jwt_secret=TEST_SECRET)
    ctx = Context(target=target, settings={"replica_calls": 1, "replica_messages": 1})
    await run_phase(replica.PHASE, ctx, {})
    assert "stack started here" in ctx.errors["replica"]
