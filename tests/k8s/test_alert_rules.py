"""The alert rules: promtool accepts them (file and chart output alike), promtool unit tests
cover every alert firing and staying quiet, and each alert carries what on-call needs."""

from __future__ import annotations

import pathlib
import re
import shutil

import yaml

from tests.k8s import support

# The seed service's five outbox alerts: (threshold in expr, for, severity).
SEED_ALERTS = {
    "OutboxBacklogHigh": ("> 1000", "5m", "warning"),
    "OutboxBacklogCritical": ("> 5000", "2m", "critical"),
    "OutboxPublishErrorsHigh": ("> 10", None, "warning"),
    "OutboxDLQIncreasing": ("> 0", None, "warning"),
    "OutboxProcessorStuck": ("== 0", None, "critical"),
}
REQUIRED_TOPICS = {  # alert name fragments the issue asks for beyond the seed's five
    "api error ratio": "ChatApiErrorRatioHigh", "api latency": "ChatApiLatencyHigh",
    "relay lag": "OutboxPublishLagHigh", "ws disconnect storm": "WsGatewayDisconnectStorm",
    "pods not ready": "ChatPodNotReady",
}


def promtool(*args: str, cwd: pathlib.Path | None = None, check: bool = True) -> str:
    proc = support.run([support.tool("promtool"), *args], cwd=cwd, check=check)
    return proc.stdout + proc.stderr


def runbook_anchors() -> set[str]:
    """GitHub's anchors of docs/runbooks.md's headings."""
    heads = re.findall(r"^#+\s+(.+?)\s*$", support.RUNBOOKS.read_text(), flags=re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in heads}


def test_promtool_check_rules_with_all_lints() -> None:
    out = promtool("check", "rules", "--lint=all", "--lint-fatal", str(support.RULES_FILE))
    assert f"SUCCESS: {len(support.alert_rules())} rules found" in out


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", support.RULES_TEST_FILE.name,
                   cwd=support.RULES_TEST_FILE.parent)
    assert "SUCCESS" in out


def minutes(duration: str) -> float:
    value, unit = float(duration[:-1]), duration[-1]
    return value * {"s": 1 / 60, "m": 1, "h": 60}[unit]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = support.load_yaml(support.RULES_TEST_FILE)["tests"]
    for rule in support.alert_rules():
        groups = [[c for c in t.get("alert_rule_test", []) if c["alertname"] == rule["alert"]]
                  for t in tests]
        mine = [c for g in groups for c in g]
        firing = [c for c in mine if c["exp_alerts"]]
        assert firing, f"{rule['alert']} never fires in a test"
        # Fires only once its `for` has passed, and the same input is quiet earlier on.
        for c in firing:
            assert minutes(c["eval_time"]) >= minutes(rule["for"]), rule["alert"]
            for exp in c["exp_alerts"]:
                assert exp["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert exp["exp_annotations"]["runbook_url"] == \
                    rule["annotations"]["runbook_url"]
        assert any(not c["exp_alerts"] and minutes(c["eval_time"]) < minutes(f["eval_time"])
                   for g in groups for c in g for f in g if f["exp_alerts"]), \
            f"{rule['alert']} has no quiet case before it fires"


def test_unit_tests_fail_when_a_threshold_changes(tmp_path: pathlib.Path) -> None:
    """The unit tests pin the thresholds: a rules file with another threshold fails them."""
    old = "(max_over_time(outbox_pending_count[1m])) > 1000"
    text = support.RULES_FILE.read_text().replace(old, old.replace("1000", "2000"))
    assert text != support.RULES_FILE.read_text()
    (tmp_path / "alerts.rules.yaml").write_text(text)
    shutil.copy(support.RULES_TEST_FILE, tmp_path)
    out = promtool("test", "rules", support.RULES_TEST_FILE.name, cwd=tmp_path, check=False)
    assert "FAILED" in out and "OutboxBacklogHigh" in out


def test_chart_output_passes_the_same_checks_and_unit_tests(tmp_path: pathlib.Path) -> None:
    """The PrometheusRule the chart renders is what promtool checked and unit-tested."""
    for variant in ("default", "monitoring"):
        docs = support.render(variant)
        groups = [g for d in support.of_kind(docs, "PrometheusRule") for g in d["spec"]["groups"]]
        path = tmp_path / variant / "alerts.rules.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump({"groups": groups}))
        promtool("check", "rules", "--lint=all", "--lint-fatal", str(path))
    shutil.copy(support.RULES_TEST_FILE, tmp_path / "default")
    out = promtool("test", "rules", support.RULES_TEST_FILE.name, cwd=tmp_path / "default")
    assert "SUCCESS" in out


def test_every_alert_has_severity_for_annotations_and_a_runbook() -> None:
    anchors = runbook_anchors()
    rules = support.alert_rules()
    assert len(rules) == len({r["alert"] for r in rules})
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        ann = r["annotations"]
        assert ann["summary"] and ann["description"], r["alert"]
        url, _, anchor = ann["runbook_url"].partition("#")
        assert url.endswith("/docs/runbooks.md"), r["alert"]
        assert anchor == r["alert"].lower() and anchor in anchors, r["alert"]


def test_runbooks_cover_meaning_confirm_fix_and_dlq_replay() -> None:
    text = support.RUNBOOKS.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    by_alert = {s.split("\n", 1)[0].strip(): s for s in sections}
    for r in support.alert_rules():
        body = by_alert[r["alert"]]
        for part in ("**Meaning.**", "**Confirm.**", "**Fix.**"):
            assert part in body, (r["alert"], part)
    assert "chat-outbox dlq replay" in by_alert["OutboxDLQIncreasing"]


def test_seed_alerts_keep_their_thresholds() -> None:
    rules = {r["alert"]: r for r in support.alert_rules()}
    for name, (threshold, for_, severity) in SEED_ALERTS.items():
        r = rules[name]
        assert threshold in r["expr"], name
        assert r["labels"]["severity"] == severity
        if for_:
            assert r["for"] == for_
    assert "outbox_pending_count" in rules["OutboxProcessorStuck"]["expr"]
    for alert in REQUIRED_TOPICS.values():
        assert alert in rules


def test_alerts_never_read_a_bare_instant_sample() -> None:
    """Counters go through rate(), histograms through rate() of buckets, gauges through
    *_over_time: no alert flips on a single scrape (or a single missed one)."""
    for r in support.alert_rules():
        for name, ranged in support.selectors(r["expr"]):
            assert ranged, f"{r['alert']}: {name} read as an instant sample"
        gauges = re.findall(r"(\w+_over_time)\((\w+)", r["expr"])
        for fn, _ in gauges:
            assert fn in ("max_over_time", "min_over_time"), r["alert"]
