"""Grafana dashboards (helm/chat-service/files/dashboards, shipped by the chart and mounted by
compose) pass a lint: identity, unique panel ids, layout, no hard-coded datasource, PromQL that
parses, and together they show what operators need."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.k8s import support

MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
DASHBOARD_FILES = sorted(support.DASHBOARDS.glob("*.json"))

# What the issue asks the dashboards to show, as metrics they must read.
REQUIRED_METRICS = {
    "request rate/errors per RPC": "chat_rpc_requests_total",
    "latency per RPC": "chat_rpc_duration_seconds_bucket",
    "outbox backlog": "outbox_pending_count",
    "outbox lag": "outbox_publish_lag_seconds_bucket",
    "outbox DLQ": "outbox_dlq_total",
    "ws connections": "ws_connections",
    "ws delivery lag": "ws_delivery_lag_seconds_bucket",
    "DB pool": "chat_db_pool_connections",
}


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in items:
        out.append(p)
        out.extend(panels(p.get("panels", [])))  # collapsed rows nest their panels
    return out


def substitute(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


def lint(d: dict[str, Any], name: str) -> list[str]:
    problems = [f"{name}: missing {k}" for k in ("uid", "title", "schemaVersion") if not d.get(k)]
    all_panels = panels(d.get("panels", []))
    ids = [p.get("id") for p in all_panels]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        problems.append(f"{name}: duplicate panel ids {dupes}")
    cells: set[tuple[int, int]] = set()
    for p in all_panels:
        pid = p.get("id")
        g = p.get("gridPos")
        if not g or not all(k in g for k in ("x", "y", "w", "h")):
            problems.append(f"{name}: panel {pid} has no gridPos")
            continue
        if g["x"] + g["w"] > 24:
            problems.append(f"{name}: panel {pid} wider than the grid")
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        if mine & cells:
            problems.append(f"{name}: panel {pid} overlaps another")
        cells |= mine
        for holder in [p, *p.get("targets", [])]:
            ds = holder.get("datasource")
            uid = ds.get("uid") if isinstance(ds, dict) else ds
            if uid and not str(uid).startswith("$"):
                problems.append(f"{name}: panel {pid}: hard-coded datasource uid {uid!r}")
        for t in p.get("targets", []):
            try:
                support.selectors(substitute(t.get("expr", "")))
            except ValueError as exc:
                problems.append(f"{name}: panel {pid} ref {t.get('refId')}: bad PromQL: {exc}")
    variables = {v["name"] for v in d.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problems.append(f"{name}: no $datasource variable")
    return problems


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_lints_clean(path: Any) -> None:
    assert lint(json.loads(path.read_text()), path.name) == []


def test_dashboard_uids_are_unique_and_cover_the_required_views() -> None:
    boards = [json.loads(p.read_text()) for p in DASHBOARD_FILES]
    assert len({b["uid"] for b in boards}) == len(boards)
    used = {name for b in boards for p in panels(b["panels"]) for t in p.get("targets", [])
            for name, _ in support.selectors(substitute(t["expr"]))}
    missing = {view: m for view, m in REQUIRED_METRICS.items() if m not in used}
    assert not missing


def test_lint_catches_broken_dashboards() -> None:
    board = json.loads(DASHBOARD_FILES[0].read_text())
    first = board["panels"][1]
    first["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    first["targets"][0]["expr"] = "sum(rate(foo[5m]"
    board["panels"][2]["id"] = first["id"]
    board["panels"][2]["gridPos"] = dict(first["gridPos"])
    problems = " | ".join(lint(board, "bad.json"))
    assert "hard-coded datasource uid 'P1809F7CD0C75ACF3'" in problems
    assert "bad PromQL" in problems
    assert "duplicate panel ids" in problems
    assert "overlaps" in problems
