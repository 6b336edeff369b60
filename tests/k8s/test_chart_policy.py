"""Policy checks over the rendered chart, for every variant: the conventions of well-behaved
charts (labels and selectors, probes, resources, non-root, disruption budgets, autoscaling
ownership, hook ordering, secrets never in ConfigMaps)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.k8s import support
from tests.k8s.support import VARIANTS

RECOMMENDED = ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
               "app.kubernetes.io/version", "app.kubernetes.io/managed-by")
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                 "app.kubernetes.io/component"}
COMPONENTS = {"api", "outbox-relay", "ws-gateway", "relay-operator"}
# The relay operator is the one pod that talks to the Kubernetes API (it scales the relay).
API_CLIENTS = {"relay-operator"}


def component(d: dict[str, Any]) -> str:
    return d["metadata"]["labels"].get("app.kubernetes.io/component", "")

variants = pytest.mark.parametrize("variant", sorted(VARIANTS))


def deployments(docs: Any) -> dict[str, dict[str, Any]]:
    return support.by_name(docs, "Deployment")


def pod_labels(d: dict[str, Any]) -> dict[str, str]:
    return d["spec"]["template"]["metadata"]["labels"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


@variants
def test_every_object_has_the_recommended_labels(variant: str) -> None:
    for d in support.render(variant):
        labels = d["metadata"].get("labels", {})
        missing = [k for k in RECOMMENDED if k not in labels]
        assert not missing, f"{d['kind']}/{d['metadata']['name']} lacks {missing}"


@variants
def test_selectors_use_name_instance_component_only(variant: str) -> None:
    docs = support.render(variant)
    for name, d in deployments(docs).items():
        selector = d["spec"]["selector"]["matchLabels"]
        assert set(selector) == SELECTOR_KEYS, name
        assert selector.items() <= pod_labels(d).items(), name
        assert selector["app.kubernetes.io/component"] in COMPONENTS
    # Each Service selects the pods of exactly one Deployment, on ports those pods declare.
    for name, svc in support.by_name(docs, "Service").items():
        matching = [d for d in deployments(docs).values()
                    if svc["spec"]["selector"].items() <= pod_labels(d).items()]
        assert len(matching) == 1, name
        assert set(svc["spec"]["selector"]) == SELECTOR_KEYS
        container_ports = {p["name"] for c in matching[0]["spec"]["template"]["spec"]["containers"]
                           for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= container_ports, name


@variants
def test_every_container_has_resources_probes_and_runs_locked_down(variant: str) -> None:
    docs = support.render(variant)
    workloads = list(support.pod_specs(docs))
    assert len(workloads) >= 4  # api, relay, gateway (+ operator) and the migration Job
    comps = {name: component(d) for d in docs if d["kind"] in ("Deployment", "Job")
             for name in [f"{d['kind']}/{d['metadata']['name']}"]}
    for name, spec in workloads:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is (comps[name] in API_CLIENTS), name
        for c in spec["containers"]:
            req, lim = c["resources"]["requests"], c["resources"]["limits"]
            assert {"cpu", "memory"} <= req.keys() and {"cpu", "memory"} <= lim.keys(), name
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["runAsNonRoot"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc.get("privileged"), name
            assert not c["image"].endswith(":latest") and ":" in c["image"], c["image"]
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), f"{name}: duplicate env {names}"
            if name.startswith("Deployment/"):
                for probe in ("readinessProbe", "livenessProbe"):
                    assert c.get(probe), f"{name} lacks {probe}"
                if comps[name] not in API_CLIENTS:
                    assert c.get("startupProbe"), f"{name} lacks startupProbe"


@variants
def test_env_from_configmap_never_shadows_explicit_env(variant: str) -> None:
    docs = support.render(variant)
    configmaps = support.by_name(docs, "ConfigMap")
    for _, spec in support.pod_specs(docs):
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                keys = set(configmaps[source["configMapRef"]["name"]]["data"])
                assert not keys & set(env_of(c)), keys & set(env_of(c))


@variants
def test_no_credentials_in_configmaps(variant: str) -> None:
    for cm in support.of_kind(support.render(variant), "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not re.search(r"SECRET|PASSWORD|DB_SOURCE|TOKEN", key), key
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f"credential in {key}"


@variants
def test_every_deployment_has_a_non_blocking_pdb(variant: str) -> None:
    docs = support.render(variant)
    pdbs = support.by_name(docs, "PodDisruptionBudget")
    for name, d in deployments(docs).items():
        assert name in pdbs, f"no PDB for {name}"
        spec = pdbs[name]["spec"]
        assert spec["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
        assert "minAvailable" not in spec
        assert spec["maxUnavailable"] == 1


@variants
def test_scaled_deployments_leave_replicas_to_their_scaler(variant: str) -> None:
    docs = support.render(variant)
    hpas = support.by_name(docs, "HorizontalPodAutoscaler")
    deps = deployments(docs)
    operator = any(component(d) == "relay-operator" for d in deps.values())
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deps, name
        assert hpa["spec"]["metrics"], name
        behavior = hpa["spec"]["behavior"]
        assert "stabilizationWindowSeconds" in behavior["scaleDown"]
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for name, d in deps.items():
        scaled = name in {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
        if operator and name.endswith("-outbox-relay"):
            assert "replicas" not in d["spec"] and not scaled, "the operator owns relay replicas"
        elif scaled:
            assert "replicas" not in d["spec"], f"{name} is autoscaled but sets replicas"
        else:
            assert d["spec"]["replicas"] >= 1, name


def test_default_autoscales_api_and_gateway_on_cpu() -> None:
    hpas = support.by_name(support.render(), "HorizontalPodAutoscaler")
    assert set(hpas) == {"chat-service-api", "chat-service-ws-gateway"}
    for hpa in hpas.values():
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert set(support.by_name(support.render("hpa-off"), "HorizontalPodAutoscaler")) == set()


@variants
def test_termination_grace_outlasts_prestop_and_drain(variant: str) -> None:
    for name, d in deployments(support.render(variant)).items():
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        grace = env_of(c).get("SHUTDOWN_GRACE", {"value": "0s"})["value"]
        drain = float(grace.rstrip("s"))
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep = float(pre[1]) if pre else 0.0
        assert spec["terminationGracePeriodSeconds"] > sleep + drain, name


def test_api_uses_native_grpc_probes_and_spreads_over_zones() -> None:
    d = deployments(support.render())["chat-service-api"]
    spec = d["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    assert c["readinessProbe"]["grpc"]["port"] == grpc_port
    assert c["startupProbe"]["grpc"]["port"] == grpc_port
    assert "grpc" not in c["livenessProbe"], "liveness must not fail when PostgreSQL does"
    keys = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for t in spec["topologySpreadConstraints"]:
        assert t["labelSelector"]["matchLabels"].items() <= pod_labels(d).items()
        assert t["whenUnsatisfiable"] == "ScheduleAnyway"


@variants
def test_migration_job_is_an_ordered_pre_upgrade_hook(variant: str) -> None:
    docs = support.render(variant)
    (job,) = support.of_kind(docs, "Job")
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(ann["helm.sh/hook-weight"]) < 0
    assert set(ann["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation", "hook-succeeded"}
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > 0
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"][0] == "chat-migrate"
    api_image = deployments(docs)["chat-service-api"]["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == api_image["image"], "migrations run from the api image"
    assert "DB_SOURCE" not in env_of(c), "credentials are files, not variables"
    ref = support.secret_files(job["spec"]["template"]["spec"], c)["DB_SOURCE"]
    secrets = support.by_name(docs, "Secret")
    existing = {"existing-secret": {"name": "chat-db", "key": "url"},
                "production": {"name": "chat-db", "key": "DB_SOURCE"}}
    if variant in existing:
        assert ref == existing[variant]
    else:
        # Hooks run before the release's objects exist: its Secret is a hook created first.
        hook_secret = secrets[ref["name"]]
        sann = hook_secret["metadata"]["annotations"]
        assert sann["helm.sh/hook"] == ann["helm.sh/hook"]
        assert int(sann["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"])
        assert ref["key"] in hook_secret["data"]


def test_existing_secrets_replace_the_charts_secret() -> None:
    docs = support.render("existing-secret")
    assert support.of_kind(docs, "Secret") == []
    for name, d in deployments(docs).items():
        if component(d) in API_CLIENTS:
            continue
        spec = d["spec"]["template"]["spec"]
        refs = support.secret_files(spec, spec["containers"][0])
        want = {"DB_SOURCE": {"name": "chat-db", "key": "url"},
                "REDIS_PASSWORD": {"name": "chat-redis", "key": "password"},
                "JWT_SECRET": {"name": "chat-jwt", "key": "JWT_SECRET"}}
        if component(d) == "outbox-relay":
            del want["JWT_SECRET"]  # the relay never verifies a token: it does not get the key
        assert refs == want, name
        assert not any("secretKeyRef" in e.get("valueFrom", {}) for c in spec["containers"]
                       for e in c.get("env", [])), "credentials are files, not variables"
    default = support.render()
    (own,) = [s for s in support.of_kind(default, "Secret")
              if "helm.sh/hook" not in s["metadata"].get("annotations", {})]
    assert set(own["data"]) == {"DB_SOURCE", "JWT_SECRET"}


def test_network_policies_cover_each_component_and_its_ports() -> None:
    docs = support.render("networkpolicy")
    policies = support.by_name(docs, "NetworkPolicy")
    deps = deployments(docs)
    # On by default (the same objects), off with the switch.
    assert set(support.by_name(support.render(), "NetworkPolicy")) == set(policies)
    assert support.of_kind(support.render(sets=("networkPolicy.enabled=false",)),
                           "NetworkPolicy") == []
    (job,) = support.of_kind(docs, "Job")
    migrations = policies.pop("chat-service-migrations")
    assert migrations["spec"]["podSelector"]["matchLabels"].items() <= (
        job["spec"]["template"]["metadata"]["labels"].items())
    assert migrations["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in migrations["spec"]
    assert migrations["metadata"]["annotations"]["helm.sh/hook"] == (
        job["metadata"]["annotations"]["helm.sh/hook"])
    assert set(policies) == set(deps)
    for name, pol in policies.items():
        dep = deps[name]
        assert pol["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
        allowed = {p["port"] for rule in pol["spec"]["ingress"] for p in rule["ports"]}
        # Only the kubelet reaches a health port, and NetworkPolicies do not apply to it.
        assert allowed == ports - {"health"}, name
        metrics_rule = next(r for r in pol["spec"]["ingress"]
                            if [p["port"] for p in r["ports"]] == ["metrics"])
        assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "monitoring"}


def test_monitors_select_services_and_pods_with_a_metrics_port() -> None:
    docs = support.render()
    services = support.by_name(docs, "Service")
    for sm in support.of_kind(docs, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        (svc,) = [s for s in services.values() if s["spec"]["selector"] == sel]
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"
        assert sm["metadata"]["namespace"] == "chat"
    mon = support.render("monitoring")
    assert support.of_kind(mon, "ServiceMonitor") == []
    pms = support.of_kind(mon, "PodMonitor")
    assert len(pms) == 3
    for pm in pms:
        assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (rule,) = support.of_kind(mon, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_ship_as_sidecar_configmaps() -> None:
    files = sorted(p.name for p in support.DASHBOARDS.glob("*.json"))
    assert len(files) >= 3
    cms = [c for c in support.of_kind(support.render(), "ConfigMap")
           if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(k for c in cms for k in c["data"]) == files
    for c in cms:
        ((name, body),) = c["data"].items()
        assert body.strip() == (support.DASHBOARDS / name).read_text().strip()
        assert c["metadata"]["annotations"]["grafana_folder"] == "chat-service"


def test_pods_roll_when_settings_or_credentials_change() -> None:
    def annotations(*sets: str) -> dict[str, str]:
        out = support.template(support.VARIANTS["existing-secret"], sets).stdout  # uncached
        docs = [d for d in yaml.safe_load_all(out) if d]
        d = deployments(docs)["chat-service-api"]
        return d["spec"]["template"]["metadata"]["annotations"]

    base = annotations()
    assert annotations() == base  # a re-render of the same values changes nothing
    assert annotations("config.logLevel=DEBUG")["checksum/config"] != base["checksum/config"]
    changed = annotations("database.existingSecret=", "database.url=postgresql://u:p@db/chat")
    assert changed["checksum/secret"] != base["checksum/secret"]


def test_relay_replicas_belong_to_the_operator_unless_it_is_off() -> None:
    relay = "chat-service-outbox-relay"
    on = support.render()
    assert "replicas" not in deployments(on)[relay]["spec"]
    assert support.of_kind(on, "RelayAutoscaler")
    off = support.render("operator-off")
    assert deployments(off)[relay]["spec"]["replicas"] == 3
    assert not support.of_kind(off, "RelayAutoscaler")
    assert not [d for d in off if component(d) == "relay-operator"]
