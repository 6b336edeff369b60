"""The operator's part of the chart: CRDs, RBAC, peering object and the RelayAutoscaler instance
render and validate (built-ins against Kubernetes' schemas, the CRDs as CRDs, the instances
against the CRDs' own openAPIV3Schema)."""

from __future__ import annotations

import pathlib
import tomllib
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s import support

ROOT = support.ROOT
CHART_CRDS = support.CHART / "crds"
K8S_CRDS = ROOT / "k8s" / "crds"
CRD_FILES = ("relayautoscaler.yaml", "kopfpeering.yaml")
OPERATOR = "chat-service-relay-operator"
RELAY = "chat-service-outbox-relay"


def crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART_CRDS / name).read_text())


def crd_schema(name: str) -> dict[str, Any]:
    return crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def instance_errors(doc: dict[str, Any], crd_file: str = "relayautoscaler.yaml") -> list[str]:
    validator = jsonschema.Draft7Validator(crd_schema(crd_file))
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def render(*sets: str) -> tuple[dict[str, Any], ...]:
    return support.render("default", sets=tuple(sets))


def operator_objects(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [d for d in docs
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
            == "relay-operator" or d["kind"] == "RelayAutoscaler"]


@pytest.mark.parametrize("name", CRD_FILES)
def test_plain_manifest_crds_are_the_charts(name: str) -> None:
    assert (K8S_CRDS / name).read_text() == (CHART_CRDS / name).read_text()


@pytest.mark.parametrize("kube", support.KUBE_VERSIONS)
@pytest.mark.parametrize("name", CRD_FILES)
def test_crds_validate_as_custom_resource_definitions(name: str, kube: str) -> None:
    kubernetes_validate.validate(crd(name), kube, strict=True)


def test_relayautoscaler_crd_shape() -> None:
    spec = crd("relayautoscaler.yaml")["spec"]
    version = spec["versions"][0]
    assert spec["group"] == "chat.example.dev" and spec["scope"] == "Namespaced"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Backlog"] == ".status.backlog"
    assert columns["Desired"] == ".status.desiredReplicas"
    assert columns["Current"] == ".status.currentReplicas"
    assert columns["Age"] == ".metadata.creationTimestamp"
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["tolerance"]["default"] == 0.1
    for field in ("minReplicas", "maxReplicas", "targetBacklogPerReplica",
                  "oldestAgeThresholdSeconds", "pollingIntervalSeconds", "fallbackReplicas",
                  "failureThreshold", "scaleUp", "scaleDown", "scaleTargetRef", "source"):
        assert field in props, field


@pytest.mark.parametrize("kube", support.KUBE_VERSIONS)
def test_chart_renders_operator_objects_that_validate(kube: str) -> None:
    docs = support.render("default", kube=kube)
    objs = operator_objects(docs)
    kinds = sorted(d["kind"] for d in objs)
    assert kinds == ["Deployment", "KopfPeering", "NetworkPolicy", "PodDisruptionBudget",
                     "RelayAutoscaler", "Role", "RoleBinding", "ServiceAccount"]
    for doc in objs:
        if doc["kind"] == "RelayAutoscaler":
            assert instance_errors(doc) == []
        elif doc["kind"] == "KopfPeering":
            assert instance_errors(doc, "kopfpeering.yaml") == []
        else:
            assert support.schema_errors(doc, kube) == []


def test_instance_schema_rejects_bad_instances() -> None:
    [ra] = support.of_kind(render(), "RelayAutoscaler")
    both = {**ra, "spec": {**ra["spec"], "source": {
        "postgres": {"secretRef": {"name": "x"}}, "prometheus": {"url": "http://p:9090"}}}}
    assert any("valid under each of" in e for e in instance_errors(both))
    neither = {**ra, "spec": {**ra["spec"], "source": {}}}
    assert instance_errors(neither)
    no_max = {**ra, "spec": {k: v for k, v in ra["spec"].items() if k != "maxReplicas"}}
    assert any("maxReplicas" in e for e in instance_errors(no_max))
    zero = {**ra, "spec": {**ra["spec"], "minReplicas": 0}}
    assert instance_errors(zero)


def test_instance_targets_the_relay_and_reads_the_db_secret() -> None:
    docs = render()
    [ra] = support.of_kind(docs, "RelayAutoscaler")
    assert ra["spec"]["scaleTargetRef"] == {"kind": "Deployment", "name": RELAY}
    assert RELAY in support.by_name(docs, "Deployment")
    secret = ra["spec"]["source"]["postgres"]["secretRef"]
    spec = support.by_name(docs, "Deployment")[RELAY]["spec"]["template"]["spec"]
    assert secret == support.secret_files(spec, spec["containers"][0])["DB_SOURCE"]


def test_relay_has_no_hpa_and_no_replicas_while_the_operator_manages_it() -> None:
    docs = render()
    hpas = support.of_kind(docs, "HorizontalPodAutoscaler")
    assert all(h["spec"]["scaleTargetRef"]["name"] != RELAY for h in hpas)
    assert "replicas" not in support.by_name(docs, "Deployment")[RELAY]["spec"]
    proc = support.template(sets=["outboxRelay.autoscaling.enabled=true"], check=False)
    assert proc.returncode != 0  # the schema refuses an HPA next to the operator


def test_role_is_least_privilege() -> None:
    docs = render()
    role = support.by_name(docs, "Role")[OPERATOR]
    rules = role["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
    by_resource = {r: rule for rule in rules for r in rule["resources"]}
    assert set(by_resource) == {"relayautoscalers", "relayautoscalers/status",
                                "deployments/scale", "horizontalpodautoscalers", "secrets",
                                "events", "kopfpeerings"}
    assert by_resource["deployments/scale"]["resourceNames"] == [RELAY]
    assert sorted(by_resource["deployments/scale"]["verbs"]) == ["get", "patch"]
    assert by_resource["secrets"]["verbs"] == ["get"]
    assert len(by_resource["secrets"]["resourceNames"]) == 1
    assert by_resource["horizontalpodautoscalers"]["verbs"] == ["list"]
    assert by_resource["events"]["verbs"] == ["create"]
    assert not support.of_kind(operator_objects(docs), "ClusterRole")
    [binding] = [b for b in support.of_kind(docs, "RoleBinding")
                 if b["metadata"]["name"] == OPERATOR]
    assert binding["roleRef"]["name"] == OPERATOR
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR,
                                    "namespace": "chat"}]


def test_operator_deployment_runs_the_console_script_with_peering() -> None:
    docs = render()
    dep = support.by_name(docs, "Deployment")[OPERATOR]
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["chat-relay-operator"]
    relay_image = support.by_name(docs, "Deployment")[RELAY]["spec"]["template"]["spec"][
        "containers"][0]["image"]
    # its own image, not the relay's (which ships no kopf)
    assert container["image"].startswith("ghcr.io/chat-service/chat-relay-operator:")
    assert container["image"] != relay_image
    assert pod["serviceAccountName"] == OPERATOR and pod["automountServiceAccountToken"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    [peering] = support.of_kind(docs, "KopfPeering")
    assert env["PEERING_NAME"] == peering["metadata"]["name"]
    assert dep["spec"]["replicas"] >= 2  # peering makes the second one a standby
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    scripts = tomllib.loads(pathlib.Path(ROOT / "services/relay-operator/pyproject.toml")
                            .read_text())["project"]["scripts"]
    assert scripts["chat-relay-operator"] == "chat_relay_operator.main:main"


def test_prometheus_source_and_disabled_operator() -> None:
    docs = render("operator.autoscaler.source.type=prometheus",
                  "operator.autoscaler.source.prometheus.url=http://prometheus:9090")
    [ra] = support.of_kind(docs, "RelayAutoscaler")
    assert ra["spec"]["source"]["prometheus"]["url"] == "http://prometheus:9090"
    assert instance_errors(ra) == []
    role = support.by_name(docs, "Role")[OPERATOR]
    assert all("secrets" not in rule["resources"] for rule in role["rules"])
    assert operator_objects(render("operator.enabled=false")) == []
