"""chat-bench's targets table: the verdict on the median, and every run's own figure beside it."""

from __future__ import annotations

from chat_bench import report
from chat_bench.medians import combine


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
