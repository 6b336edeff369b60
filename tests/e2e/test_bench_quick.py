"""``chat-bench --quick`` as a real process: each phase produces every figure, with sane values.

No timing thresholds (the benchmark is where speed is judged): only that every figure is
there, positive, counted consistently, and that nothing was lost or failed; that the database
is durable unless the run says otherwise, and every table says which it was; and that
``--transport http`` sends every call over HTTP (the API's own call log says so). Two runs of
two phases each keep each test well inside the per-test timeout on a busy machine.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from chat_bench import report
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # minutes of load and process starts: `-m 'not slow'` skips

BIN = pathlib.Path(sys.executable).parent
LATENCY_KEYS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")


def run_bench(tmp_path: pathlib.Path, *args: str) -> tuple[dict[str, Any], str]:
    """The result JSON and the printed tables of a ``chat-bench --quick`` run."""
    out = tmp_path / "result.json"
    proc = subprocess.run([str(BIN / "chat-bench"), "--quick", "--output", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Against the targets (" in proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["errors"] == {}
    assert data["mode"] == "quick"
    for key in ("cpu_model", "cores", "memory_gib", "kernel", "python", "postgresql", "redis",
                "date"):
        assert data["machine"][key] not in ("", 0, None, "unknown"), key
    assert len(data["load_before"]) == 3 and len(data["load_after"]) == 3
    settings = data["database"]["settings"]
    assert settings["server_version"] == data["machine"]["postgresql"]
    for name in ("wal_sync_method", "commit_delay", "commit_siblings", "shared_buffers"):
        assert settings[name], name
    # The settings, as the server reports them, are printed with the tables.
    assert f"fsync={settings['fsync']}, synchronous_commit=" in proc.stdout
    return data, proc.stdout


def verdict_rows(stdout: str) -> list[str]:
    """The targets table's rows that carry a verdict (the figure was measured)."""
    return [line for line in stdout.splitlines()
            if line.startswith("| ") and ("| met" in line or "| NOT met" in line)]


def assert_latency(summary: dict[str, Any], n: int | None = None) -> None:
    for key in LATENCY_KEYS:
        assert summary[key] > 0, (key, summary)
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    if n is not None:
        assert summary["n"] == n


def test_rpc_and_delivery_phases(tmp_path: pathlib.Path) -> None:
    data, stdout = run_bench(tmp_path, "--only", "rpc,delivery", "--calls", "20")
    # Durable by default: PostgreSQL's own defaults, read back from the server.
    database = data["database"]
    assert database["unsafe_fast_db"] is False and database["started_here"] is True
    assert {k: database["settings"][k] for k in ("fsync", "synchronous_commit",
                                                 "full_page_writes")} == {
        "fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    assert "durable: each commit returns once its WAL is flushed" in stdout
    assert "unsafe" not in stdout
    assert data["transport"] == "grpc" and data["rpc"]["transports"] == ["grpc", "http"]
    assert data["dataset"]["messages"] > 100 and data["dataset"]["conversations"] >= 50
    for transport in ("grpc", "http"):
        for rpc in ("SendMessage", "GetMessages", "GetConversations", "MarkAsRead"):
            assert_latency(data["rpc"][transport][rpc], n=20)
    d = data["delivery"]
    assert d["messages_sent"] == int(d["rate_target"] * d["duration_s"]) > 0
    assert d["send_errors"] == 0
    assert d["deliveries_expected"] == d["messages_sent"] * d["receivers_per_conversation"]
    assert d["deliveries"] == d["deliveries_expected"]
    assert d["lost"] == 0 and d["duplicates"] == 0
    assert_latency(d["latency"], n=d["deliveries"])
    assert d["relay_lag"]["n"] == d["messages_sent"] + 5  # + the sender's warm-up messages
    assert d["relay_lag"]["p99_ms"] >= 0
    assert "throughput" not in data and "idle" not in data
    measured = {c["figure"] for c in data["targets"] if c["met"] is not None}
    assert "relay commit-to-stream lag p99" in measured
    assert "SendMessage mean, HTTP / gRPC" in measured


def test_throughput_and_idle_phases_on_the_unsafe_fast_database(tmp_path: pathlib.Path) -> None:
    data, stdout = run_bench(tmp_path, "--only", "throughput,idle", "--concurrency", "8,64",
                             "--duration", "1", "--idle", "100", "--unsafe-fast-db",
                             "--pg-setting", "commit_delay=10", "--pg-setting",
                             "commit_siblings=2")
    database = data["database"]
    assert database["unsafe_fast_db"] is True
    assert database["set"] == {"commit_delay": "10", "commit_siblings": "2"}
    assert {k: database["settings"][k] for k in ("fsync", "synchronous_commit",
                                                 "full_page_writes", "commit_delay",
                                                 "commit_siblings")} == {
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "commit_delay": "10", "commit_siblings": "2"}
    # Labelled in every table: the heading, each verdict, each phase's details.
    heading = next(line for line in stdout.splitlines()
                   if line.startswith("Against the targets"))
    assert "unsafe: fsync off" in heading
    rows = verdict_rows(stdout)
    assert len(rows) == 4  # concurrency 64's three, idle's one
    assert all("(unsafe: fsync off)" in row for row in rows)
    assert "(unsafe: fsync off) Send throughput" in stdout
    assert "(unsafe: fsync off) Idle WebSockets" in stdout
    for name, concurrency in (("c8", 8), ("c64", 64)):
        run = data["throughput"][name]
        assert run["concurrency"] == concurrency and run["client_processes"] == 2
        assert run["transport"] == "grpc"
        assert run["errors"] == 0
        assert run["messages"] > 0 and run["messages_per_s"] > 0
        assert_latency(run["latency"], n=run["messages"])
        assert all(0 < share for share in run["client_cpu_share"])
        # Where each message's CPU went: every part of the stack handled the sends.
        cpu = run["cpu_ms_per_message"]
        assert set(cpu) == {"API", "PostgreSQL", "relay", "gateway", "Redis",
                            "load generator", "all"}
        assert cpu["API"] > 0 and cpu["PostgreSQL"] > 0 and cpu["load generator"] > 0
        assert cpu["all"] == pytest.approx(sum(v for k, v in cpu.items() if k != "all"),
                                           abs=0.01)
    assert "CPU per message, ms" in stdout
    idle = data["idle"]
    assert idle["opened"] == idle["still_open"] == idle["connections"] == 100
    assert idle["gateway_ws_connections"] == 100 and idle["failed"] == 0
    assert idle["gateway_rss_after_mib"] > 0 and idle["kib_per_connection"] != 0
    assert "rpc" not in data and "delivery" not in data


def test_docs_section_is_generated_from_the_json(tmp_path: pathlib.Path) -> None:
    data: dict[str, Any] = {
        "mode": "full", "machine": {"cpu_model": "Test CPU", "cores": 2, "date": "2026"},
        "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 2.0, 2.0],
        "database": {"settings": {"server_version": "15.20", "fsync": "on",
                                  "synchronous_commit": "on", "full_page_writes": "on"}},
        "rpc": {"calls": 3, "grpc": {"SendMessage": {"mean_ms": 1.25}},
                "http": {"SendMessage": {"mean_ms": 2.5}}},
        "idle": {"connections": 10_000, "target": 10_000, "open_seconds": 5.0, "failed": 0}}
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nprose\n")
    report.update_section(doc, data)
    first = doc.read_text()
    assert first.startswith("# Performance\n\nprose\n\n## Latest figures\n\n" + report.START)
    assert "Test CPU" in first and "| SendMessage mean, gRPC" in first
    assert "2.00x" in first  # HTTP / gRPC computed from the JSON
    assert re.search(r"\| idle WebSockets held by one gateway +\| 10,000 ", first)
    assert "PostgreSQL 15.20 settings: fsync=on, synchronous_commit=on" in first
    doc.write_text(first + "\n## Where the time goes\n\nmore\n")
    data["machine"]["cpu_model"] = "Other CPU"
    data["database"]["settings"]["fsync"] = "off"
    report.update_section(doc, data)
    second = doc.read_text()
    assert second.count("## Latest figures") == 1 and second.count(report.END) == 1
    assert "Other CPU" in second and "Test CPU" not in second
    assert "met (unsafe: fsync off)" in second
    assert second.endswith("## Where the time goes\n\nmore\n")



def test_repeated_runs_report_each_figure_as_its_median(tmp_path: pathlib.Path) -> None:
    data, _ = run_bench(tmp_path, "--only", "rpc", "--calls", "10", "--repeat", "2")
    assert data["repeat"] == 2 and len(data["runs"]) == 2
    for transport in ("grpc", "http"):
        for rpc in ("SendMessage", "GetMessages", "GetConversations", "MarkAsRead"):
            means = [r["rpc"][transport][rpc]["mean_ms"] for r in data["runs"]]
            assert data["rpc"][transport][rpc]["mean_ms"] == round(sum(means) / 2, 3)
            assert data["rpc"][transport][rpc]["n"] == 10
    assert "median of 2 runs" in report.machine_line(data)


def test_http_transport_sends_and_reads_over_http_only(tmp_path: pathlib.Path) -> None:
    data, stdout = run_bench(tmp_path, "--transport", "http", "--only", "rpc,throughput,delivery",
                             "--calls", "10", "--concurrency", "4", "--duration", "1",
                             "--log-level", "INFO")
    logs = pathlib.Path(data["target"]["logs"])
    try:
        lines = [json.loads(line) for line in (logs / "api.log").read_text().splitlines()
                 if line.startswith("{")]
        calls = [entry for entry in lines if entry.get("msg") == "rpc"]
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    # The API's own log of every ChatService call: the data set, the sequential calls, the
    # throughput senders and the delivery sender all came over HTTP.
    assert {c["transport"] for c in calls} == {"http"}
    assert {c["code"] for c in calls} == {"OK"}
    methods = {c["method"].rsplit("/", 1)[-1] for c in calls}
    assert {"CreateConversation", "SendMessage", "GetMessages", "GetConversations",
            "MarkAsRead"} <= methods
    assert data["transport"] == "http" and data["rpc"]["transports"] == ["http"]
    assert "grpc" not in data["rpc"]
    for rpc in ("SendMessage", "GetMessages", "GetConversations", "MarkAsRead"):
        assert_latency(data["rpc"]["http"][rpc], n=10)
    c4 = data["throughput"]["c4"]
    assert c4["transport"] == "http" and c4["errors"] == 0 and c4["messages"] > 0
    d = data["delivery"]
    assert d["transport"] == "http" and d["send_errors"] == 0 and d["lost"] == 0
    assert d["deliveries"] == d["deliveries_expected"] > 0
    assert "over HTTP/JSON" in stdout and "| SendMessage mean, HTTP " in stdout
    assert "HTTP / gRPC" not in stdout


def test_isolation_phase(tmp_path: pathlib.Path) -> None:
    data, stdout = run_bench(tmp_path, "--only", "isolation", "--isolation-seconds", "2",
                             "--cost-calls", "20")
    iso = data["isolation"]
    assert_latency(iso["alone"], 40)  # 20 sends/s for 2 s, every one answered
    assert iso["with_abuser"]["n"] >= 1
    abuser = iso["abuser"]
    assert abuser["refused"] > 0 and abuser["allowed"] >= 30  # at least its burst passed
    assert abuser["attempted"] + abuser["outcomes"].get("skipped", 0) == abuser["started"]
    for transport in ("grpc", "http"):
        assert_latency(iso["cost"][transport]["on"], 20)
        assert_latency(iso["cost"][transport]["off"], 20)
    assert "limiter cost per call (mean, gRPC)" in "\n".join(verdict_rows(stdout))


def test_attachments_phase(tmp_path: pathlib.Path) -> None:
    data, stdout = run_bench(tmp_path, "--only", "attachments", "--attachment-calls", "10",
                             "--thumbnails", "2", "--repeat", "1")
    a = data["attachments"]
    for name in ("CreateUpload", "GetAttachmentUrl", "SendMessage + 1 attachment"):
        assert_latency(a[name], n=10)
    assert_latency(a["thumbnail_ready"], n=2)
    assert a["photo_bytes"] > 500_000  # a photo's entropy, not a flat image
    measured = {c["figure"] for c in data["targets"] if c["met"] is not None}
    assert measured == {"CreateUpload mean", "GetAttachmentUrl mean",
                        "SendMessage + 1 attachment mean", "thumbnail ready p99 (4 MP JPEG)"}
    assert "Attachments, 10 sequential gRPC calls each" in stdout


def test_changes_and_threads_phases(tmp_path: pathlib.Path) -> None:
    data, stdout = run_bench(tmp_path, "--only", "changes,threads", "--change-calls", "10",
                             "--thread-calls", "10", "--repeat", "1")
    for name in ("EditMessage", "AddReaction", "GetMessages(50)",
                 "GetMessages(50) with reactions"):
        assert_latency(data["changes"][name], n=10)
    threads = data["threads"]
    for name in ("GetThread", "GetMessages root-level", "GetMessages with replies",
                 "GetMessages no threads", "SendMessage reply"):
        assert_latency(threads[name], n=10)
    assert threads["roots"] + threads["thread_replies"] <= threads["messages"]
    assert threads["thread_replies"] >= 50  # the busy thread fills a page
    measured = {c["figure"] for c in data["targets"] if c["met"] is not None}
    assert {"threads: GetThread(50) mean", "EditMessage mean (gRPC always)",
            "AddReaction mean (gRPC always)"} <= measured, measured


def test_graphql_phase(tmp_path: pathlib.Path) -> None:
    data, stdout = run_bench(tmp_path, "--only", "graphql", "--graphql-calls", "10",
                             "--graphql-rate", "20", "--graphql-duration", "1")
    inbox, d = data["graphql"]["inbox"], data["graphql"]["delivery"]
    assert inbox["calls"] == 10
    assert_latency(inbox["GraphQL viewer.conversations(first: 50)"], n=10)
    assert_latency(inbox["HTTP/JSON GetConversations(50)"], n=10)
    assert d["messages_sent"] == 20 and d["send_errors"] == 0
    assert d["lost"] == {"native": 0, "graphql": 0}
    for kind in ("native", "graphql"):  # every message reached both sockets of its receiver
        assert_latency(d[kind], n=20)
    measured = {c["figure"] for c in data["targets"] if c["met"] is not None}
    assert "graphql: subscription send-to-client p99 - native /v1/ws p99" in measured
    assert "Send-to-client over the two WebSocket protocols at once" in stdout
