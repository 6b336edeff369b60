"""Every metric an alert or dashboard reads is one the services really export: the three
services run as subprocesses against the test PostgreSQL/Redis and their /metrics is scraped.
Also: every environment variable the chart or compose sets is a setting the service reads."""

from __future__ import annotations

import json
import os
import pathlib
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis
from chat_devtools.process import ServiceProcess, http_ok
from chat_devtools.pytest_plugin import TEMPLATE_DB
from chat_devtools.services import Api, Gateway, Relay, base_env
from tests.conftest import TEST_SECRET
from tests.k8s import support

# Read by rules but exported by kube-state-metrics, not by chat-service.
EXTERNAL = {"kube_pod_status_ready"}
SUFFIXES = {"counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "gauge": ("",), "unknown": ("",)}


def exported_names(body: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(body):
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture(scope="module")
def live_services(postgres: LocalPostgres, redis_server: LocalRedis,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """The three services started once for this module: name -> metrics port (ready)."""
    tmp_path = tmp_path_factory.mktemp("services")
    db_source = postgres.create_database(f"k8s_metrics_{os.getpid()}", template=TEMPLATE_DB)
    if not redis_server.running:
        redis_server.start()
    env = base_env(db_source, redis_server.addr, TEST_SECRET, LOG_LEVEL="WARNING",
                   RATE_LIMIT_ENABLED="true")  # its metrics are read by rules and panels
    services = {"api": Api(env, tmp_path, metrics=True),
                "outbox-relay": Relay(env, tmp_path, quick_intervals=False),
                "ws-gateway": Gateway(env, tmp_path)}
    try:
        for service in services.values():
            service.start()
        yield {name: service.wait_ready().metrics_port for name, service in services.items()}
    finally:
        for service in services.values():
            service.stop()


@pytest.fixture(scope="module")
def live_metrics(live_services: dict[str, int]) -> dict[str, set[str]]:
    out = {}
    for name, port in live_services.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            out[name] = exported_names(r.read().decode())
    return out


def used_by_rules() -> set[str]:
    return {n for r in support.alert_rules() for n, _ in support.selectors(r["expr"])}


def used_by_dashboards() -> set[str]:
    from tests.k8s.test_dashboards import panels, substitute

    names = set()
    for path in support.DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text())
        for p in panels(board["panels"]):
            for t in p.get("targets", []):
                names |= {n for n, _ in support.selectors(substitute(t["expr"]))}
    return names


def test_rules_and_dashboards_read_only_exported_metrics(
        live_metrics: dict[str, set[str]]) -> None:
    exported = set().union(*live_metrics.values())
    # Sanity: each service really answered with its own metrics.
    assert "chat_rpc_requests_total" in live_metrics["api"]
    assert "outbox_pending_count" in live_metrics["outbox-relay"]
    assert "ws_connections" in live_metrics["ws-gateway"]
    rules, dashboards = used_by_rules(), used_by_dashboards()
    assert len(rules) >= 10 and len(dashboards) >= 10
    assert sorted(rules - exported - EXTERNAL) == []
    assert sorted(dashboards - exported) == []
    assert EXTERNAL <= rules and not EXTERNAL & exported


def test_interface_metrics_are_exported(live_metrics: dict[str, set[str]]) -> None:
    """The metric names the services promise (and the chart's autoscaling/alerts rely on)."""
    promised = {
        "api": ["chat_rpc_requests_total", "chat_rpc_duration_seconds_bucket",
                "chat_rpc_in_flight", "chat_db_pool_connections", "chat_dependency_up",
                "idempotency_hits_total", "chat_event_loop_lag_seconds_bucket"],
        "outbox-relay": ["outbox_pending_count", "outbox_processed_total",
                         "outbox_publish_errors_total", "outbox_dlq_total",
                         "outbox_publish_lag_seconds_bucket", "outbox_oldest_pending_age_seconds",
                         "outbox_batch_duration_seconds_bucket",
                         "outbox_relay_event_loop_lag_seconds_bucket",
                         "outbox_relay_dependency_up"],
        "ws-gateway": ["ws_connections", "ws_frames_sent_total",
                       "ws_slow_client_disconnects_total", "ws_delivery_lag_seconds_bucket",
                       "ws_event_loop_lag_seconds_bucket", "ws_dependency_up"],
    }
    for service, names in promised.items():
        assert sorted(set(names) - live_metrics[service]) == [], service


def test_every_service_reports_its_dependencies_under_one_name_pattern(
        live_metrics: dict[str, set[str]]) -> None:
    for service in ("api", "outbox-relay", "ws-gateway"):
        probes = sorted(n for n in live_metrics[service] if n.endswith("_dependency_up"))
        assert len(probes) == 1, (service, probes)


def prometheus_port(line: str) -> dict[str, int]:
    """Prometheus's web port, from its `msg="Listening on" address=127.0.0.1:43877` line."""
    found = re.search(r'msg="Listening on" address=[\d.]+:(\d+)', line)
    return {"web_port": int(found.group(1))} if found else {}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_prometheus_evaluates_every_rule_against_the_live_services(
        live_services: dict[str, int], tmp_path: pathlib.Path) -> None:
    """A real Prometheus scrapes the three services and evaluates the rules file: every target
    is up and every rule evaluates without error (label matching, types) on real series."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(support.RULES_FILE)],
        "scrape_configs": [{"job_name": f"chat-{name}",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                           for name, port in live_services.items()],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    prometheus = ServiceProcess(
        "prometheus",
        [support.tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         "--web.listen-address=127.0.0.1:0", f"--storage.tsdb.path={tmp_path / 'db'}"],
        ports_from=prometheus_port, ready=http_ok("/-/ready", port_key="web_port"),
        log_path=tmp_path / "prometheus.log")
    with prometheus:
        api = f"http://127.0.0.1:{prometheus.wait_ready().port('web_port')}/api/v1"
        deadline = time.monotonic() + 60
        while True:
            prometheus.alive()
            try:
                targets = get_json(f"{api}/targets")["data"]["activeTargets"]
                rules = [r for g in get_json(f"{api}/rules")["data"]["groups"]
                         for r in g["rules"]]
            except OSError:
                targets, rules = [], []
            evaluated = [r for r in rules if not r["lastEvaluation"].startswith("0001")]
            up = [t for t in targets if t["health"] == "up"]
            if len(up) == 3 and rules and len(evaluated) == len(rules):
                break
            assert time.monotonic() < deadline, (targets, rules)
            time.sleep(0.5)
        assert {r["name"] for r in rules} == {r["alert"] for r in support.alert_rules()}
        assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
        # A healthy idle stack fires nothing (the pod alert has no kube-state-metrics here).
        assert [r["name"] for r in rules if r["state"] == "firing"] == []


# --- settings the packaging sets --------------------------------------------------------------

def settings_fields() -> dict[str, set[str]]:
    from chat_api.settings import ApiSettings
    from chat_outbox_relay.settings import RelaySettings
    from chat_relay_operator.settings import OperatorConfig
    from chat_shared.config import DatabaseSettings
    from chat_ws_gateway.settings import GatewaySettings

    from chat_shared.config import is_secret

    def names(cls: Any) -> set[str]:
        # A secret setting is also read from a file named by <NAME>_FILE.
        return {n.upper() for n in cls.model_fields} | {
            f"{n.upper()}_FILE" for n, f in cls.model_fields.items() if is_secret(f)}

    return {"api": names(ApiSettings), "outbox-relay": names(RelaySettings),
            "ws-gateway": names(GatewaySettings), "migrations": names(DatabaseSettings),
            "relay-operator": names(OperatorConfig)}


def test_chart_sets_only_settings_the_services_read() -> None:
    fields = settings_fields()
    docs = support.render()
    (config,) = [c for c in support.of_kind(docs, "ConfigMap")
                 if c["metadata"]["name"] == "chat-service"]
    assert set(config["data"]) <= set().union(*fields.values())
    for name, spec in support.pod_specs(docs):
        component = "migrations" if name.startswith("Job/") else name.split("chat-service-")[1]
        for c in spec["containers"]:
            unknown = {e["name"] for e in c.get("env", [])} - fields[component] - {"LOG_LEVEL"}
            assert unknown == set(), (name, unknown)


def test_chart_ports_are_the_services_defaults() -> None:
    from chat_api.settings import ApiSettings
    from chat_outbox_relay.settings import RelaySettings
    from chat_ws_gateway.settings import GatewaySettings

    values = support.load_yaml(support.CHART / "values.yaml")
    dev = {"_env_file": None, "environment": "development"}  # the defaults, without a secret
    api, relay, ws = ApiSettings(**dev), RelaySettings(**dev), GatewaySettings(**dev)
    assert values["api"]["containerPorts"] == {
        "grpc": int(api.grpc_server_address.rsplit(":", 1)[1]),
        "http": int(api.http_server_address.rsplit(":", 1)[1]), "metrics": api.metrics_port}
    assert values["outboxRelay"]["containerPorts"] == {"metrics": relay.metrics_port}
    assert values["wsGateway"]["containerPorts"] == {
        "ws": int(ws.ws_server_address.rsplit(":", 1)[1]), "metrics": ws.metrics_port}
    for key, settings in (("api", api), ("outboxRelay", relay), ("wsGateway", ws)):
        assert values[key]["shutdownGraceSeconds"] == settings.shutdown_grace


def test_compose_sets_only_settings_the_services_read() -> None:
    fields = settings_fields()
    compose = support.load_yaml(support.ROOT / "docker-compose.yml")
    mapping = {"api": "api", "outbox-relay": "outbox-relay", "ws-gateway": "ws-gateway",
               "migrate": "migrations"}
    for service, component in mapping.items():
        env = set(compose["services"][service]["environment"])
        assert env - fields[component] == set(), (service, env - fields[component])
