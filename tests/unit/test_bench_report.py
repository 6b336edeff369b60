"""chat-bench's targets table: the verdict on the median, and every run's own figure beside it."""

from __future__ import annotations

import json

from chat_bench import report
from chat_bench.medians import combine
from chat_bench.phases import rpc as rpc_phase

from tests.conftest import ROOT

RPC_ONLY = (rpc_phase.PHASE,)  # render()'s details need a phase's full figures; _run has rpc's


def _run(send_ms: float, p99: float) -> dict[str, object]:
    rpc = {"calls": 500,
           "grpc": {"SendMessage": {"mean_ms": send_ms}},
           "http": {"SendMessage": {"mean_ms": send_ms * 2}}}
    return {"rpc": rpc, "delivery": {"latency": {"p99_ms": p99}, "lost": 0, "rate_target": 500}}


def _row(lines: list[str], figure: str) -> list[str]:
    line = next(x for x in lines if x.startswith(f"| {figure} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_run_column_lists_every_runs_figure_in_order_next_to_the_median() -> None:
    runs = [_run(1.5, 40.0), _run(2.5, 180.0), _run(1.9, 60.5)]
    data = {**combine(runs), "runs": runs}
    lines = report.targets_table(data)
    assert [c.strip() for c in lines[0].strip("|").split("|")][-1] == "each run"
    assert _row(lines, "SendMessage mean, gRPC") == [
        "SendMessage mean, gRPC", "1.90 ms", "<= 2 ms", "met", "1.50 / 2.50 / 1.90"]
    assert _row(lines, "SendMessage mean, HTTP / gRPC")[4] == "2.00x / 2.00x / 2.00x"
    assert _row(lines, "send-to-socket p99 at 500 msg/s")[1:] == [
        "60.50 ms", "<= 50 ms", "NOT met", "40 / 180 / 60.50"]
    # A figure no run measured gets an empty cell, not "- / - / -".
    assert _row(lines, "idle WebSockets held by one gateway")[4] == ""


def test_a_single_run_has_no_each_run_column() -> None:
    lines = report.targets_table(_run(1.5, 40.0))
    assert "each run" not in lines[0]
    assert _row(lines, "SendMessage mean, gRPC")[1:] == ["1.50 ms", "<= 2 ms", "met"]


DURABLE = {"server_version": "15.20", "fsync": "on", "synchronous_commit": "on",
           "full_page_writes": "on", "wal_sync_method": "fdatasync", "commit_delay": "0",
           "commit_siblings": "5", "shared_buffers": "128MB"}
FAST = {**DURABLE, "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def test_a_run_on_an_unsafe_database_says_so_in_the_heading_and_beside_every_verdict() -> None:
    data = {**_run(1.5, 40.0), "database": {"settings": FAST, "unsafe_fast_db": True}}
    lines = report.render(data, RPC_ONLY)
    assert lines[0].startswith("PostgreSQL 15.20 settings: fsync=off, synchronous_commit=off")
    assert "NOT durable" in lines[0]
    heading = next(x for x in lines if x.startswith("Against the targets"))
    assert "unsafe: fsync off" in heading
    measured = [x for x in report.targets_table(data)[2:] if "not measured" not in x]
    assert len(measured) == 4  # SendMessage: mean and ratio; delivery: p99 and lost
    assert all("(unsafe: fsync off)" in row for row in measured)
    # The phases' own details too.
    assert any(x.startswith("(unsafe: fsync off) Per-RPC latency") for x in lines)


def test_a_durable_run_prints_its_settings_and_no_unsafe_label() -> None:
    data = {**_run(1.5, 40.0),
            "database": {"settings": DURABLE, "set": {"commit_delay": "0"}}}
    lines = report.render(data, RPC_ONLY)
    assert lines[0] == (
        "PostgreSQL 15.20 settings: fsync=on, synchronous_commit=on, full_page_writes=on, "
        "wal_sync_method=fdatasync, commit_delay=0, commit_siblings=5, shared_buffers=128MB "
        "(set for this run: commit_delay=0); durable: each commit returns once its WAL is "
        "flushed to disk.")
    assert not any("unsafe" in x for x in lines)


def test_results_from_before_the_settings_were_recorded_are_labelled_fsync_off() -> None:
    # chat-bench's own PostgreSQL always ran with fsync off before it recorded its settings.
    old = {**_run(1.5, 40.0), "target": {"started_here": True}}
    assert "unsafe: fsync off" in report.heading(old)
    assert "not recorded by this run" in report.render(old, RPC_ONLY)[0]
    given = {**_run(1.5, 40.0), "target": {"started_here": False}}
    assert "unsafe" not in report.heading(given)
    assert report.render(given, RPC_ONLY)[0] == "PostgreSQL settings: not recorded by this run."


def test_an_http_run_judges_the_http_means_and_has_no_ratio_rows() -> None:
    rpc = {"calls": 10, "transports": ["http"], "client": "a keep-alive http.client connection",
           "http": {"SendMessage": {"mean_ms": 1.25}}}
    data = {"rpc": rpc, "transport": "http"}
    lines = report.targets_table(data)
    assert _row(lines, "SendMessage mean, HTTP")[1:] == ["1.25 ms", "<= 2 ms", "met"]
    assert not any("HTTP / gRPC" in x or ", gRPC " in x for x in lines)
    assert "over HTTP/JSON" in report.heading(data)
    assert "transport HTTP/JSON" in report.machine_line(data)


def test_the_committed_docs_show_the_committed_result() -> None:
    # docs/performance.md's figures are bench/results/latest.json's as `chat-bench readme`
    # renders them: whoever changes one regenerates the other.
    doc = (ROOT / "docs" / "performance.md").read_text()
    data = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    assert report.section(data) in doc
