"""values.schema.json and the templates' own checks stop bad values at install time; the alert
switches and overrides in values reach the rendered PrometheusRule."""

from __future__ import annotations

import pytest
import yaml

from tests.k8s import support

REJECTED = {
    "bad pull policy": (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    "unknown top-level key": (["replicas=3"], "replicas"),
    "pdb that blocks drains": (["api.pdb.maxUnavailable=0"], "/api/pdb/maxUnavailable"),
    "relay hpa while the operator scales it": (
        ["operator.enabled=true", "outboxRelay.autoscaling.enabled=true"],
        "/outboxRelay/autoscaling/enabled"),
    "both service and pod monitors": (["metrics.podMonitor.enabled=true"], "not"),
    "no database at all": (["database.url="], "/database"),
    "short jwt secret": (["jwt.secret=short"], "/jwt/secret"),
    "enabled hpa without metrics": (
        ["api.autoscaling.targetCPUUtilizationPercentage=0"], "/api/autoscaling"),
    "bad alert override": (["metrics.prometheusRule.alerts.OutboxBacklogHigh.for=soon"],
                           "/metrics/prometheusRule/alerts/OutboxBacklogHigh/for"),
    "privileged escalation": (["securityContext.allowPrivilegeEscalation=true"],
                              "/securityContext/allowPrivilegeEscalation"),
    "bad redis address": (["redis.addr=redis"], "/redis/addr"),
    "bad redis cluster seed": (["redis.cluster=true", "redis.addr=a:6379\\,b"], "/redis/addr"),
    "negative rate limit": (["rateLimits.perUser.send.rate=-1"], "/rateLimits/perUser/send/rate"),
    "fractional burst": (["rateLimits.tenantCeiling.read.burst=1.5"],
                         "/rateLimits/tenantCeiling/read/burst"),
}

FAILED_BY_TEMPLATE = {
    "grace shorter than drain": (["api.terminationGracePeriodSeconds=12"],
                                 "must exceed preStopSleepSeconds + shutdownGraceSeconds"),
    "unknown alert name": (["metrics.prometheusRule.alerts.OutboxBacklogHihg.enabled=false"],
                           "no such alert"),
    "several redis nodes without cluster": (["redis.addr=a:6379\\,b:6379"],
                                            "set redis.cluster=true"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_schema_rejects_bad_values(case: str) -> None:
    sets, where = REJECTED[case]
    proc = support.template(sets=sets, check=False)
    assert proc.returncode != 0, case
    assert "schema" in proc.stderr and where in proc.stderr, proc.stderr


@pytest.mark.parametrize("case", sorted(FAILED_BY_TEMPLATE))
def test_templates_refuse_inconsistent_values(case: str) -> None:
    sets, message = FAILED_BY_TEMPLATE[case]
    proc = support.template(sets=sets, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def _rules(variant: str = "default", sets: tuple[str, ...] = (),
           release: str = "chat-service") -> dict[str, dict]:
    if release != "chat-service":
        out = support.template(sets=sets, release=release).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
    else:
        docs = list(support.render(variant, sets=sets))
    (rule,) = support.of_kind(docs, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_rendered_rules_are_the_rules_file() -> None:
    source = {r["alert"]: r for r in support.alert_rules()}
    assert _rules() == source


def test_per_alert_switch_and_overrides() -> None:
    rules = _rules("monitoring")
    assert "OutboxDLQIncreasing" not in rules
    assert len(rules) == len(support.alert_rules()) - 1
    latency = rules["ChatApiLatencyHigh"]
    assert latency["for"] == "15m" and latency["labels"]["severity"] == "critical"
    for name, r in rules.items():
        assert r["labels"]["team"] == "chat", name
        assert r["annotations"]["runbook_url"] == (
            f"https://runbooks.example.com/chat#{name.lower()}")
    untouched = rules["OutboxBacklogHigh"]
    assert untouched["labels"]["severity"] == "warning" and untouched["for"] == "5m"


def test_pod_pattern_follows_the_release_name() -> None:
    rules = _rules(release="prod")
    assert 'pod=~"prod-chat-service-.*"' in rules["ChatPodNotReady"]["expr"]
    assert 'pod=~"chat-service-.*"' in _rules()["ChatPodNotReady"]["expr"]


def test_an_external_redis_cluster_reaches_the_config_map_as_the_services_read_it() -> None:
    """redis.cluster and a list of seed nodes become REDIS_CLUSTER and REDIS_ADDR, which the
    services' settings accept as a cluster."""
    from chat_shared.config import RedisSettings

    seeds = "redis-cluster-0.redis-cluster-headless:6379,redis-cluster-1.redis-cluster-headless:6379"
    docs = support.render(sets=("redis.cluster=true", f"redis.addr={seeds.replace(',', chr(92) + ',')}"))
    data = support.by_name(docs, "ConfigMap")["chat-service"]["data"]
    assert data["REDIS_CLUSTER"] == "true" and data["REDIS_ADDR"] == seeds
    settings = RedisSettings(_env_file=None, redis_addr=data["REDIS_ADDR"],
                             redis_cluster=data["REDIS_CLUSTER"])
    assert settings.cluster_mode and len(settings.redis_nodes) == 2
    default = support.by_name(support.render(), "ConfigMap")["chat-service"]["data"]
    assert default["REDIS_CLUSTER"] == "false"
