"""docker-compose.yml is valid against the compose specification and wires the whole local
stack: migrations before the services, Prometheus scraping every service with the chart's
rules file, Alertmanager with the example routing, Grafana with the chart's dashboards."""

from __future__ import annotations

import pathlib
import re
import sys
from typing import Any

import pytest
import yaml

from tests.k8s import support

COMPOSE = support.ROOT / "docker-compose.yml"
PROMETHEUS = support.ROOT / "deploy" / "prometheus.yml"
CHECK_JSONSCHEMA = pathlib.Path(sys.executable).parent / "check-jsonschema"


def compose() -> dict[str, Any]:
    return support.load_yaml(COMPOSE)


def mounts(service: str) -> dict[str, pathlib.Path]:
    """Container path -> host path of a service's bind mounts."""
    out = {}
    for v in compose()["services"][service].get("volumes", []):
        host, container = v.split(":")[:2]
        if host.startswith("."):
            out[container] = (support.ROOT / host).resolve()
    return out


def check_schema(path: pathlib.Path) -> tuple[int, str]:
    proc = support.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec",
                        str(path)], check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_compose_file_matches_the_compose_spec(tmp_path: pathlib.Path) -> None:
    rc, out = check_schema(COMPOSE)
    assert rc == 0 and "ok -- validation done" in out, out
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("interval: 2s", "intervall: 2s", 1))
    rc, out = check_schema(broken)
    assert rc != 0 and "intervall" in out


def test_stack_has_every_part_and_pins_images() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "s3", "s3-bucket", "migrate", "api",
                             "outbox-relay", "ws-gateway", "prometheus", "alertmanager",
                             "grafana"}
    assert services["postgres"]["image"].startswith("postgres:15.")
    assert services["redis"]["image"].startswith("redis:7.")
    for name, svc in services.items():
        if "build" in svc:
            assert (support.ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        else:
            # MinIO pins by release date (RELEASE.2024-11-07T00-52-20Z).
            assert re.search(r":(v?\d+\.\d+|RELEASE\.\d{4}-\d\d-\d\dT)", svc["image"]), \
                f"{name}: unpinned image"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert services["migrate"]["command"] == ["chat-migrate", "upgrade"]
    assert services["api"]["depends_on"]["s3-bucket"]["condition"] == \
        "service_completed_successfully"
    for name in ("api", "outbox-relay", "ws-gateway"):
        dep = services[name]["depends_on"]["migrate"]["condition"]
        assert dep == "service_completed_successfully", name
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]
    ports = services["api"]["ports"] + services["ws-gateway"]["ports"]
    published = {p.split(":")[-1] for p in ports}
    assert published == {"9090", "8080", "8081"}


def test_prometheus_scrapes_every_service_with_the_charts_rules(tmp_path: pathlib.Path) -> None:
    config = support.load_yaml(PROMETHEUS)
    prom_mounts = mounts("prometheus")
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    (rules_path,) = config["rule_files"]
    assert prom_mounts[rules_path] == support.RULES_FILE, "compose must load the chart's file"
    services = compose()["services"]
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    for name in ("api", "outbox-relay", "ws-gateway"):
        assert f"{name}:{services[name]['environment']['METRICS_PORT']}" in targets, name
    (am,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am.split(":")[0] == "alertmanager"
    # promtool checks the config with the rules file at its host path.
    local = dict(config, rule_files=[str(support.RULES_FILE)])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(local))
    out = support.run([support.tool("promtool"), "check", "config", str(path)]).stdout
    assert "SUCCESS" in out


def test_alertmanager_and_grafana_use_the_shared_files() -> None:
    assert mounts("alertmanager")["/etc/alertmanager/alertmanager.yml"] == \
        support.ROOT / "k8s" / "monitoring" / "alertmanager.yml"
    grafana = mounts("grafana")
    provisioning = grafana["/etc/grafana/provisioning"]
    providers = support.load_yaml(provisioning / "dashboards" / "chat-service.yaml")["providers"]
    (provider,) = providers
    assert grafana[provider["options"]["path"]] == support.DASHBOARDS
    (ds,) = support.load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("pattern", ["*.rules.yaml", "*.rules.yml", "*.json"])
def test_no_copies_of_chart_files_outside_the_chart(pattern: str) -> None:
    copies = [p for d in ("deploy", "k8s") for p in (support.ROOT / d).rglob(pattern)]
    assert copies == []


def _redis_persistence(args: list[str]) -> dict[str, str]:
    return {flag: args[args.index(flag) + 1] for flag in ("--appendonly", "--appendfsync")
            if flag in args}


def test_redis_keeps_an_append_only_file_like_chat_devs() -> None:
    """The streams survive a Redis restart: AOF fsynced every second, in compose (on a named
    volume), in skaffold's k8s/dev Redis and in chat-dev's local one (the same arguments)."""
    from chat_devtools.local_redis import APPEND_ONLY_ARGS

    want = _redis_persistence(list(APPEND_ONLY_ARGS))
    assert want == {"--appendonly": "yes", "--appendfsync": "everysec"}
    redis = compose()["services"]["redis"]
    assert _redis_persistence(redis["command"]) == want
    (volume,) = [v for v in redis["volumes"] if v.endswith(":/data")]
    assert volume.split(":")[0] in compose()["volumes"], "a named volume, kept across restarts"
    manifests = yaml.safe_load_all((support.ROOT / "k8s/dev/redis.yaml").read_text())
    (deployment,) = [d for d in manifests if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert _redis_persistence(container["args"]) == want
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
