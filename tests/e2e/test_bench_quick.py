"""``chat-bench --quick`` as a real process: each phase produces every figure, with sane values.

No timing thresholds (the benchmark is where speed is judged): only that every figure is
there, positive, counted consistently, and that nothing was lost or failed. Two runs of two
phases each keep each test well inside the per-test timeout on a busy machine.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

from chat_bench import report

from tests.conftest import ROOT

BIN = pathlib.Path(sys.executable).parent
LATENCY_KEYS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")


def run_bench(tmp_path: pathlib.Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    proc = subprocess.run([str(BIN / "chat-bench"), "--quick", "--output", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Against the targets of issue 8" in proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["errors"] == {}
    assert data["mode"] == "quick"
    for key in ("cpu_model", "cores", "memory_gib", "kernel", "python", "postgresql", "redis",
                "date"):
        assert data["machine"][key] not in ("", 0, None, "unknown"), key
    assert len(data["load_before"]) == 3 and len(data["load_after"]) == 3
    return data


def assert_latency(summary: dict[str, Any], n: int | None = None) -> None:
    for key in LATENCY_KEYS:
        assert summary[key] > 0, (key, summary)
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    if n is not None:
        assert summary["n"] == n


def test_rpc_and_delivery_phases(tmp_path: pathlib.Path) -> None:
    data = run_bench(tmp_path, "--only", "rpc,delivery", "--calls", "20")
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


def test_throughput_and_idle_phases(tmp_path: pathlib.Path) -> None:
    data = run_bench(tmp_path, "--only", "throughput,idle", "--concurrency", "4,8",
                     "--duration", "1", "--idle", "100")
    for name, concurrency in (("c4", 4), ("c8", 8)):
        run = data["throughput"][name]
        assert run["concurrency"] == concurrency and run["client_processes"] == 2
        assert run["errors"] == 0
        assert run["messages"] > 0 and run["messages_per_s"] > 0
        assert_latency(run["latency"], n=run["messages"])
        assert all(0 < share for share in run["client_cpu_share"])
    idle = data["idle"]
    assert idle["opened"] == idle["still_open"] == idle["connections"] == 100
    assert idle["gateway_ws_connections"] == 100 and idle["failed"] == 0
    assert idle["gateway_rss_after_mib"] > 0 and idle["kib_per_connection"] != 0
    assert "rpc" not in data and "delivery" not in data


def test_readme_section_is_generated_from_the_json(tmp_path: pathlib.Path) -> None:
    data = {"mode": "full", "machine": {"cpu_model": "Test CPU", "cores": 2, "date": "2026"},
            "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 2.0, 2.0],
            "rpc": {"calls": 3, "grpc": {"SendMessage": {"mean_ms": 1.25}},
                    "http": {"SendMessage": {"mean_ms": 2.5}}},
            "idle": {"connections": 10_000, "target": 10_000, "open_seconds": 5.0,
                     "failed": 0}}
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Layout\n\ntext\n\n## Configuration\n\nmore\n")
    report.update_readme(readme, data)
    first = readme.read_text()
    assert first.index("## Performance") < first.index("## Configuration")
    assert "Test CPU" in first and "| SendMessage mean, gRPC" in first
    assert "2.00x" in first  # HTTP / gRPC computed from the JSON
    assert "| idle WebSockets held by one gateway | 10,000" in first
    data["machine"]["cpu_model"] = "Other CPU"
    report.update_readme(readme, data)
    second = readme.read_text()
    assert second.count("## Performance") == 1 and second.count(report.END) == 1
    assert "Other CPU" in second and "Test CPU" not in second
    assert second.endswith("## Configuration\n\nmore\n")


def test_repeated_runs_report_each_figure_as_its_median(tmp_path: pathlib.Path) -> None:
    data = run_bench(tmp_path, "--only", "rpc", "--calls", "10", "--repeat", "2")
    assert data["repeat"] == 2 and len(data["runs"]) == 2
    for transport in ("grpc", "http"):
        for rpc in ("SendMessage", "GetMessages", "GetConversations", "MarkAsRead"):
            means = [r["rpc"][transport][rpc]["mean_ms"] for r in data["runs"]]
            assert data["rpc"][transport][rpc]["mean_ms"] == round(sum(means) / 2, 3)
            assert data["rpc"][transport][rpc]["n"] == 10
    assert "median of 2 runs" in report.machine_line(data)
