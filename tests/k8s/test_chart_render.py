"""The chart lints strictly and renders at the oldest and newest supported Kubernetes versions,
for the default values and every variant, and every rendered object is valid for its schema."""

from __future__ import annotations

import copy
import pathlib
import re
import tarfile
from typing import Any

import pytest
import yaml

from tests.k8s import support
from tests.k8s.support import KUBE_VERSIONS, NEWEST_KUBE, OLDEST_KUBE, VARIANTS

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(variant: str, kube: str) -> None:
    args = support.helm_args(VARIANTS[variant], kube=kube, crds=False)  # lint has no --api-versions
    proc = support.run([support.tool("helm"), "lint", "--strict", str(support.CHART), *args])
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_validates_strictly(variant: str, kube: str) -> None:
    docs = support.render(variant, kube, crds=True)
    assert len(docs) >= 10
    errors = [e for d in docs for e in support.schema_errors(d, kube)]
    assert errors == []
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "Job", "ConfigMap"} <= kinds
    assert kinds & MONITORING_KINDS
    # Without the monitoring API the same values render the same objects minus the monitoring
    # kinds (gated by .Capabilities.APIVersions.Has), so the install does not fail.
    without = support.render(variant, kube, crds=False)
    assert sorted(d["kind"] for d in without) == sorted(
        d["kind"] for d in docs if d["kind"] not in MONITORING_KINDS)


def test_validation_rejects_broken_and_unknown_objects() -> None:
    """The validator itself can fail: unknown fields, removed APIs, CRD errors, unknown kinds."""
    docs = support.render()
    deployment = copy.deepcopy(support.of_kind(docs, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    assert "bogusField" in " ".join(support.schema_errors(deployment, OLDEST_KUBE))

    old_pdb = copy.deepcopy(support.of_kind(docs, "PodDisruptionBudget")[0])
    old_pdb["apiVersion"] = "policy/v1beta1"
    assert "no schema" in " ".join(support.schema_errors(old_pdb, NEWEST_KUBE))

    rule = copy.deepcopy(support.of_kind(docs, "PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    assert "for" in " ".join(support.schema_errors(rule, NEWEST_KUBE))

    monitor = copy.deepcopy(support.of_kind(docs, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = 30
    assert support.schema_errors(monitor, NEWEST_KUBE)

    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in " ".join(support.schema_errors(unknown, NEWEST_KUBE))


def test_kubernetes_older_than_supported_is_refused() -> None:
    proc = support.template(kube="1.26.0", check=False)
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or "incompatible" in proc.stderr


def test_monitoring_objects_follow_values_and_capabilities() -> None:
    assert not {d["kind"] for d in support.render(crds=False)} & MONITORING_KINDS
    off = support.render(sets=("metrics.serviceMonitor.enabled=false",
                               "metrics.prometheusRule.enabled=false"))
    assert not {d["kind"] for d in off} & MONITORING_KINDS
    on = support.render()
    assert len(support.of_kind(on, "ServiceMonitor")) == 3
    assert len(support.of_kind(on, "PrometheusRule")) == 1


def test_install_dry_run_prints_notes_with_port_forward_and_grpcurl() -> None:
    proc = support.run([support.tool("helm"), "install", "chat-service", str(support.CHART),
                        "--dry-run=client", "--namespace", "chat"])
    notes = proc.stdout.split("NOTES:", 1)[1]
    services = support.by_name(support.render(crds=False), "Service")
    assert "kubectl -n chat port-forward svc/chat-service-api 9090:9090 8080:8080" in notes
    assert "kubectl -n chat port-forward svc/chat-service-ws-gateway 8081:8081" in notes
    assert "grpcurl -plaintext 127.0.0.1:9090 list" in notes
    assert "chat.v1.ChatService/CreateConversation" in notes
    for name in ("chat-service-api", "chat-service-ws-gateway"):
        assert name in services
    # The hook objects come first, in weight order: DB secret (-10) then the Job (-5).
    assert proc.stdout.index("kind: Secret\nmetadata:\n  name: chat-service-migrations") \
        < proc.stdout.index("kind: Job")


def test_packaged_chart_renders_the_same_objects(tmp_path: pathlib.Path) -> None:
    """.helmignore keeps out only what the package does not need (the rules' unit tests, the
    checkov skip list)."""
    support.run([support.tool("helm"), "package", str(support.CHART), "-d", str(tmp_path)])
    (tgz,) = tmp_path.glob("chat-service-*.tgz")
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
    assert "chat-service/files/alerts.rules.yaml" in names
    assert "chat-service/values.schema.json" in names
    assert "chat-service/files/alerts.rules.test.yaml" not in names
    assert "chat-service/checkov-skips.yaml" not in names
    assert "chat-service/values-production.yaml" in names  # an example a user starts from
    out = support.run([support.tool("helm"), "template", "chat-service", str(tgz),
                       *support.helm_args()]).stdout
    packaged = [d for d in yaml.safe_load_all(out) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in packaged) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in support.render())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_map_numbers_are_written_as_the_services_parse_them(variant: str) -> None:
    """helm reads a large number from values as a float and writes 1e+06 unless the template
    converts it; the services' integer settings refuse that (seen when the relay's image first
    ran with the chart's environment)."""
    for cm in support.of_kind(support.render(variant), "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not re.fullmatch(r"[-+]?\d+(\.\d+)?[eE][-+]?\d+", value), (key, value)
    data = support.by_name(support.render(variant), "ConfigMap")["chat-service"]["data"]
    assert data["STREAM_MAXLEN"].isdigit() and data["STREAM_SHARDS"].isdigit()


def _container_env(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, str]]:
    """Deployment name -> its main container's explicit env (name -> value)."""
    return {name: {e["name"]: e.get("value", "") for e in d["spec"]["template"]["spec"]
                   ["containers"][0].get("env", []) if "value" in e}
            for name, d in support.by_name(docs, "Deployment").items()}


def test_each_service_acts_as_its_database_role_and_tenancy_values_reach_the_services() -> None:
    env = _container_env(support.render())
    assert env["chat-service-api"]["DATABASE_ROLE"] == "chat_app"
    assert env["chat-service-ws-gateway"]["DATABASE_ROLE"] == "chat_app"
    assert env["chat-service-outbox-relay"]["DATABASE_ROLE"] == "chat_relay"
    assert env["chat-service-api"]["METRICS_TENANT_LABELS"] == ""
    data = support.by_name(support.render(), "ConfigMap")["chat-service"]["data"]
    assert (data["JWT_TENANT_CLAIM"], data["REQUIRE_TENANT"]) == ("tid", "false")

    sets = ("database.roles.app=svc_app", "database.roles.relay=", "tenancy.requireTenant=true",
            "tenancy.autoCreate=true", "tenancy.metricsTenantLabels={acme,globex}")
    docs = tuple(d for d in yaml.safe_load_all(support.template(sets=sets).stdout) if d)
    env = _container_env(docs)
    assert env["chat-service-api"]["DATABASE_ROLE"] == "svc_app"
    assert env["chat-service-outbox-relay"]["DATABASE_ROLE"] == ""
    assert env["chat-service-api"]["TENANT_AUTO_CREATE"] == "true"
    assert env["chat-service-api"]["METRICS_TENANT_LABELS"] == "acme,globex"
    assert support.by_name(docs, "ConfigMap")["chat-service"]["data"]["REQUIRE_TENANT"] == "true"


def test_the_values_schema_refuses_a_role_or_tenant_that_is_not_one() -> None:
    for bad in ("database.roles.app=Robert'); DROP", "tenancy.metricsTenantLabels={Not A Tenant}"):
        result = support.template(sets=(bad,), check=False)
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, bad
def test_rate_limits_reach_the_config_map_as_the_services_parse_them(
        tmp_path: pathlib.Path) -> None:
    values = tmp_path / "limits.yaml"  # a file: --set would make 0.5 a string
    values.write_text("rateLimits:\n  enabled: false\n  perUser: {send: {rate: 0.5, burst: 30}}\n"
                      "  tenantCeiling: {read: {rate: 1000000, burst: 10000}}\n"
                      "  anonymous: {rate: 2, burst: 7}\n  typingIntervalSeconds: 1.5\n"
                      "api:\n  trustedProxies: [10.0.0.0/8, 'fd00::/8']\n")
    out = support.template([str(values)]).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    data = support.by_name(docs, "ConfigMap")["chat-service"]["data"]
    assert data["RATE_LIMIT_SEND_RATE"] == "0.5"
    assert data["RATE_LIMIT_TENANT_READ_RATE"] == "1000000"
    assert data["RATE_LIMIT_ANON_BURST"] == "7"
    assert data["RATE_LIMIT_ENABLED"] == "false"
    assert data["RATE_LIMIT_READ_RATE"] == "50" and data["RATE_LIMIT_READ_BURST"] == "100"
    assert data["RATE_LIMIT_TYPING_INTERVAL"] == "1.5"
    env = _container_env(docs)
    assert env["chat-service-api"]["TRUSTED_PROXIES"] == "10.0.0.0/8,fd00::/8"
    assert "TRUSTED_PROXIES" not in env["chat-service-ws-gateway"]
    assert _container_env(support.render())["chat-service-api"]["TRUSTED_PROXIES"] == ""
    refused = support.template(sets=("api.trustedProxies={ingress}",), check=False)
    assert "values don't meet the specifications of the schema" in refused.stderr


def test_object_storage_reaches_only_the_api_with_its_secret_as_a_file() -> None:
    env = _container_env(support.render())
    assert not any(k.startswith("S3_") for e in env.values() for k in e)  # off by default
    sets = ("objectStorage.endpoint=http://minio.storage:9000",
            "objectStorage.publicEndpoint=https://files.example.com",
            "objectStorage.existingSecret=chat-s3", "objectStorage.pathStyle=true")
    docs = tuple(d for d in yaml.safe_load_all(support.template(sets=sets).stdout) if d)
    env = _container_env(docs)
    api = env["chat-service-api"]
    assert (api["S3_ENDPOINT"], api["S3_PUBLIC_ENDPOINT"], api["S3_PATH_STYLE"]) == (
        "http://minio.storage:9000", "https://files.example.com", "true")
    assert api["S3_SECRET_ACCESS_KEY_FILE"] == "/var/run/secrets/chat/s3-secret-access-key"
    assert api["ATTACHMENT_MAX_BYTES"] == "26214400"
    assert not any(k.startswith("S3_") for name, e in env.items() if name != "chat-service-api"
                   for k in e)
    deployment = support.by_name(docs, "Deployment")["chat-service-api"]
    spec = deployment["spec"]["template"]["spec"]
    key_id = next(e for e in spec["containers"][0]["env"] if e["name"] == "S3_ACCESS_KEY_ID")
    assert key_id["valueFrom"]["secretKeyRef"] == {"name": "chat-s3", "key": "S3_ACCESS_KEY_ID"}
    sources = next(v for v in spec["volumes"] if v["name"] == "credentials")["projected"]["sources"]
    assert {"name": "chat-s3", "items": [{"key": "S3_SECRET_ACCESS_KEY",
                                          "path": "s3-secret-access-key"}]} in [
        s["secret"] for s in sources]
    bad = support.template(sets=("objectStorage.endpoint=not a url",), check=False)
    assert bad.returncode != 0 and "schema" in bad.stderr
