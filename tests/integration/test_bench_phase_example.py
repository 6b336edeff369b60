"""docs/performance.md's example phase, run as written against the API over both transports.

"Adding a phase" promises that a module declaring a ``Phase`` is all a phase needs: this loads
the example from the document itself, runs it twice through ``run_phase`` as chat-bench does,
reduces the runs with ``medians`` and renders it with ``report`` (its target with a verdict and
an "each run" column, its details).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import re
from typing import Any

import pytest

from chat_bench import report
from chat_bench.medians import combine
from chat_bench.phase import Context, Phase, run_phase
from chat_bench.stack import Target

from tests.conftest import ROOT, TEST_SECRET


def example_phase(tmp_path: pathlib.Path) -> Phase:
    section = (ROOT / "docs" / "performance.md").read_text().split("## Adding a phase", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no ```python block under docs/performance.md's ## Adding a phase"
    path = tmp_path / "create_phase.py"
    path.write_text(found.group(1))
    spec = importlib.util.spec_from_file_location("create_phase", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    phase: Phase = module.PHASE
    return phase


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_the_documented_example_phase_runs_and_reports(
        api: Any, tmp_path: pathlib.Path, transport: str) -> None:
    phase = example_phase(tmp_path)
    assert phase.name == "create"
    settings = phase.settings(argparse.Namespace(quick=True))
    target = Target(grpc=f"127.0.0.1:{api.grpc_port}", http=f"http://127.0.0.1:{api.http_port}",
                    ws="", jwt_secret=TEST_SECRET)
    ctx = Context(target=target, settings=settings, transport=transport)
    runs: list[dict[str, Any]] = []
    for _ in range(2):
        run: dict[str, Any] = {}
        await run_phase(phase, ctx, run)
        runs.append(run)
    assert ctx.errors == {}
    data = {**combine(runs), "runs": runs}
    assert data["create"]["calls"] == 20 and data["create"]["latency"]["n"] == 20
    lines = report.render(data, (phase,))
    header = cells(next(x for x in lines if x.startswith("| figure")))
    row = cells(next(x for x in lines if x.startswith("| CreateConversation mean")))
    assert header[-1] == "each run"
    assert row[1].endswith(" ms") and row[2] == "<= 3 ms" and row[3] in ("met", "NOT met")
    assert len(row[4].split(" / ")) == 2
    assert any(x.startswith("CreateConversation: 20 sequential calls, p50 ") for x in lines)
