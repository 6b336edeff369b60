"""The chart's data-tier values: a read replica endpoint, a pooler, and the optional
CloudNativePG Cluster + Pooler (validated against CloudNativePG 1.30.0's CRD schemas, strictly).
"""

from __future__ import annotations

import base64
import copy
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.k8s import support
from tests.k8s.support import CNPG_APIS, KUBE_VERSIONS, MONITORING_APIS


def render(*sets: str, apis: tuple[str, ...] = MONITORING_APIS + CNPG_APIS,
           kube: str = support.NEWEST_KUBE) -> list[dict[str, Any]]:
    args = ["--namespace", "chat", "--kube-version", kube]
    for api in apis:
        args += ["--api-versions", api]
    for s in sets:
        args += ["--set", s]
    out = support.run([support.tool("helm"), "template", "chat-service", str(support.CHART),
                       *args]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (found,) = [d for d in support.of_kind(docs, "Deployment")
                if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return found


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def credentials(dep: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """path in the credentials volume -> (Secret name, key)."""
    (volume,) = [v for v in dep["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "credentials"]
    return {item["path"]: (src["secret"]["name"], item["key"])
            for src in volume["projected"]["sources"] for item in src["secret"]["items"]}


def secret_value(docs: list[dict[str, Any]], name: str, key: str) -> str:
    secret = support.by_name(docs, "Secret")[name]
    return base64.b64decode(secret["data"][key]).decode()


CLUSTER = ("postgresql.cluster.enabled=true",)


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_the_cloudnativepg_variant_validates_strictly(kube: str) -> None:
    docs = render(*CLUSTER, kube=kube)
    assert {d["kind"] for d in docs} >= {"Cluster", "Pooler"}
    problems = [p for d in docs for p in support.schema_errors(d, kube)]
    assert problems == []


def test_strict_validation_catches_a_misspelt_cluster_field() -> None:
    (cluster,) = support.of_kind(render(*CLUSTER), "Cluster")
    broken = copy.deepcopy(cluster)
    broken["spec"]["instance"] = broken["spec"].pop("instances")
    assert any("instance" in p for p in support.schema_errors(broken, support.NEWEST_KUBE))
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["instances"] = "three"
    assert support.schema_errors(wrong_type, support.NEWEST_KUBE)
    (pooler,) = support.of_kind(render(*CLUSTER), "Pooler")
    bad_mode = copy.deepcopy(pooler)
    bad_mode["spec"]["pgbouncer"]["poolMode"] = "statementish"
    assert support.schema_errors(bad_mode, support.NEWEST_KUBE)


def test_the_cluster_wires_rw_ro_and_the_pooler_into_the_services() -> None:
    docs = render(*CLUSTER)
    api, gateway, relay = (deployment(docs, c) for c in ("api", "ws-gateway", "outbox-relay"))
    owner, pooled = "chat-service-pg-owner", "chat-service-pg-pooled"
    assert credentials(api) == {"db-source": (pooled, "DB_POOLED_SOURCE"),
                                "db-read-source": (owner, "DB_READ_SOURCE"),
                                "jwt-secret": ("chat-service", "JWT_SECRET")}
    assert env_of(api)["DB_TRANSACTION_POOLER"] == "true"
    assert env_of(api)["DB_READ_SOURCE_FILE"].endswith("/db-read-source")
    assert credentials(gateway)["db-source"] == (pooled, "DB_POOLED_SOURCE")
    assert env_of(gateway)["DB_TRANSACTION_POOLER"] == "true"
    assert "DB_READ_SOURCE_FILE" not in env_of(gateway)
    # The relay keeps a direct session: advisory locks and LISTEN (docs/pgbouncer.md).
    assert credentials(relay)["db-source"] == (owner, "DB_SOURCE")
    assert "DB_TRANSACTION_POOLER" not in env_of(relay)

    hosts = {key: urlsplit(secret_value(docs, name, key)).hostname
             for name, key in ((owner, "DB_SOURCE"), (owner, "DB_READ_SOURCE"),
                               (pooled, "DB_POOLED_SOURCE"))}
    assert hosts == {"DB_SOURCE": "chat-service-pg-rw.chat.svc",
                     "DB_READ_SOURCE": "chat-service-pg-ro.chat.svc",
                     "DB_POOLED_SOURCE": "chat-service-pg-pooler.chat.svc"}
    (cluster,) = support.of_kind(docs, "Cluster")
    (pooler,) = support.of_kind(docs, "Pooler")
    assert pooler["spec"]["cluster"]["name"] == cluster["metadata"]["name"] == "chat-service-pg"
    assert pooler["spec"]["pgbouncer"]["poolMode"] == "transaction"
    assert cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"] == owner
    sql = cluster["spec"]["bootstrap"]["initdb"]["postInitApplicationSQL"]
    assert "ALTER ROLE chat_app_pooled SET role = 'chat_app'" in sql
    # A pooled session takes no startup options: the API's planner cost comes with the role.
    assert "ALTER ROLE chat_app_pooled SET random_page_cost = 1.1" in sql
    # The password in the pooled URL is the one the operator gives the login.
    assert urlsplit(secret_value(docs, pooled, "DB_POOLED_SOURCE")).password == \
        secret_value(docs, pooled, "password")
    # Migrations run once the cluster exists, as its owner.
    (job,) = support.of_kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    volume = job["spec"]["template"]["spec"]["volumes"][-1]["secret"]
    assert (volume["secretName"], volume["items"][0]["key"]) == (owner, "DB_SOURCE")


def test_without_the_operator_the_cluster_is_refused_not_silently_dropped() -> None:
    proc = support.template(sets=CLUSTER, check=False)
    assert proc.returncode != 0
    assert "CloudNativePG operator" in proc.stderr


def test_external_replica_and_pooler_urls_reach_the_api_and_gateway_only() -> None:
    replica = "postgresql://chat:pw@pg-replica:5432/chat"
    pooler = "postgresql://chat_app_pooled:pw@pgbouncer:6432/chat"
    docs = render(f"database.readReplica.url={replica}", f"database.pooler.url={pooler}")
    api, gateway, relay = (deployment(docs, c) for c in ("api", "ws-gateway", "outbox-relay"))
    assert credentials(api)["db-source"] == ("chat-service", "DB_POOLED_SOURCE")
    assert credentials(api)["db-read-source"] == ("chat-service", "DB_READ_SOURCE")
    assert credentials(gateway)["db-source"] == ("chat-service", "DB_POOLED_SOURCE")
    assert credentials(relay)["db-source"] == ("chat-service", "DB_SOURCE")
    assert secret_value(docs, "chat-service", "DB_READ_SOURCE") == replica
    assert secret_value(docs, "chat-service", "DB_POOLED_SOURCE") == pooler
    assert not support.of_kind(docs, "Cluster")
    problems = [p for d in docs for p in support.schema_errors(d, support.NEWEST_KUBE)]
    assert problems == []


def test_defaults_have_no_replica_and_no_pooler() -> None:
    docs = render()
    api = deployment(docs, "api")
    assert set(credentials(api)) == {"db-source", "jwt-secret"}
    assert "DB_TRANSACTION_POOLER" not in env_of(api)
