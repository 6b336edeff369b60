"""Shared by the packaging tests: real helm/kubectl/promtool/amtool binaries, rendering the chart
once per variant, strict schema validation of rendered objects, PromQL walking.

No cluster exists here, so "deployable" means: helm renders it at the oldest and newest
Kubernetes versions the chart supports, every object validates strictly against the schema of
its kind at that version (monitoring CRDs against prometheus-operator's published models) and an
object with no known schema is an error, never a silent pass.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pydantic
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "chat-service"
RULES_FILE = CHART / "files" / "alerts.rules.yaml"
RULES_TEST_FILE = CHART / "files" / "alerts.rules.test.yaml"
DASHBOARDS = CHART / "files" / "dashboards"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

# The chart's supported range (Chart.yaml kubeVersion >=1.27; newest tested release).
OLDEST_KUBE = "1.27.0"
NEWEST_KUBE = "1.35.0"
KUBE_VERSIONS = (OLDEST_KUBE, NEWEST_KUBE)

MONITORING_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)

# Variant name -> values files (relative to the chart). "default" is values.yaml alone.
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "hpa-off": ("ci/hpa-off-values.yaml",),
    "networkpolicy": ("ci/networkpolicy-values.yaml",),
    "existing-secret": ("ci/existing-secret-values.yaml",),
    "monitoring": ("ci/monitoring-values.yaml",),
    "operator-off": ("ci/operator-off-values.yaml",),
    "dev": ("values-dev.yaml",),
    "ci": ("values-ci.yaml",),
    "production": ("values-production.yaml",),
}

# Custom resources validated with prometheus-operator's models (cloudcoil, operator 0.80).
CRD_MODELS: dict[tuple[str, str], type[pydantic.BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring_v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): monitoring_v1.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring_v1.PrometheusRule,
}


def tool(name: str) -> str:
    """A binary from PATH or the repository's .tools/bin (where ./dev test installs helm)."""
    local = ROOT / ".tools" / "bin" / name
    found = shutil.which(name) or (str(local) if local.exists() else None)
    assert found, f"{name} not found on PATH or in .tools/bin (./dev test installs helm/kubectl)"
    return found


def run(cmd: Sequence[str], *, cwd: pathlib.Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/chat-helm-cache",
           "HELM_CONFIG_HOME": "/tmp/chat-helm-config", "HELM_DATA_HOME": "/tmp/chat-helm-data"}
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} -> rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm_args(values_files: Sequence[str] = (), sets: Sequence[str] = (),
              kube: str = NEWEST_KUBE, crds: bool = True) -> list[str]:
    args = ["--namespace", "chat", "--kube-version", kube]
    for api in MONITORING_APIS if crds else ():
        args += ["--api-versions", api]
    for f in values_files:
        args += ["-f", str(CHART / f) if not os.path.isabs(f) else f]
    for s in sets:
        args += ["--set", s]
    return args


CNPG_APIS = ("postgresql.cnpg.io/v1/Cluster", "postgresql.cnpg.io/v1/Pooler")
"""The CloudNativePG operator's kinds the chart renders (postgresql.cluster.enabled)."""
CNPG_SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas" / "cloudnative-pg-v1.30.0.json"
"""Their CRDs' openAPIV3Schema, as published with CloudNativePG 1.30.0
(config/crd/bases/postgresql.cnpg.io_{clusters,poolers}.yaml, descriptions removed)."""


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server's strict field validation
    does (a CRD prunes them silently otherwise): ``additionalProperties: false`` wherever the
    schema lists properties and neither allows more nor preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _operator_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema of the operators' kinds the chart may render."""
    schemas = json.loads(CNPG_SCHEMAS.read_text())["schemas"]
    out = {}
    for key, schema in schemas.items():
        group_version, kind = key.rsplit("/", 1)
        strict = _strict(schema)
        strict["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the server
        out[(group_version, kind)] = strict
    return out


def template(values_files: Sequence[str] = (), sets: Sequence[str] = (), kube: str = NEWEST_KUBE,
             crds: bool = True, release: str = "chat-service",
             check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), "template", release, str(CHART),
                *helm_args(values_files, sets, kube, crds)], check=check)


@functools.cache
def render(variant: str = "default", kube: str = NEWEST_KUBE, crds: bool = True,
           sets: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    """Rendered objects of a variant; cached for the session (helm is ~0.2 s a call)."""
    out = template(VARIANTS[variant], sets, kube, crds).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def of_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: Sequence[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, kind)}


def schema_errors(doc: dict[str, Any], kube: str) -> list[str]:
    """Problems with one object against its schema at `kube`; no known schema is a problem."""
    return list(_schema_errors(json.dumps(doc, sort_keys=True), kube))


@functools.cache
def _chart_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of each CRD version in the chart's crds/."""
    schemas = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = load_yaml(path)
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


@functools.cache
def _schema_errors(doc_json: str, kube: str) -> tuple[str, ...]:
    # Variants share most objects; each distinct object is validated once per version.
    doc = json.loads(doc_json)
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    own = _chart_crd_schemas().get(key) or _operator_crd_schemas().get(key)
    if own is not None:  # a kind the chart defines itself (crds/): its CRD's schema
        validator = jsonschema.Draft7Validator(own)
        return tuple(f"{name}: {'/'.join(map(str, e.path))}: {e.message}"
                     for e in validator.iter_errors(doc))
    model = CRD_MODELS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if model is not None:
        try:
            model.model_validate(doc)
        except pydantic.ValidationError as exc:
            return tuple(f"{name}: {e['loc']} {e['msg']}" for e in exc.errors())
        return ()
    try:
        kubernetes_validate.validate(doc, kube, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return (f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} at {kube}",)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        return (f"{name}: {path}: {exc.message}",)
    return ()


def pod_specs(docs: Sequence[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload (Deployments and Jobs)."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


# --- PromQL ------------------------------------------------------------------------------------

def _children(node: Any) -> Iterator[Any]:
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, str | int | float):
            yield child
    yield from getattr(node, "args", None) or []


def selectors(expr: str) -> list[tuple[str, bool]]:
    """(metric name, read through a range selector) for every vector selector in `expr`."""
    found: list[tuple[str, bool]] = []

    def walk(node: Any, in_range: bool) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name or "", in_range))
            return
        ranged = isinstance(node, promql_parser.MatrixSelector)
        for child in _children(node):
            walk(child, in_range or ranged)

    walk(promql_parser.parse(expr), False)
    return found


def load_yaml(path: pathlib.Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES_FILE)["groups"] for r in g["rules"] if "alert" in r]


def secret_files(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Credential (DB_SOURCE, ...) -> {"name": Secret, "key": key} for each ``<NAME>_FILE`` the
    container reads, followed through its volume mounts to the Secret item behind the file
    (a ``secret`` volume or a ``projected`` one)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    found = {}
    for e in container.get("env", []):
        if not e["name"].endswith("_FILE") or "value" not in e:
            continue
        path = pathlib.PurePosixPath(e["value"])
        (mount,) = [m for m in container.get("volumeMounts", [])
                    if path.parent == pathlib.PurePosixPath(m["mountPath"])]
        volume = volumes[mount["name"]]
        sources = ([{"name": volume["secret"]["secretName"], "items": volume["secret"]["items"]}]
                   if "secret" in volume else
                   [s["secret"] for s in volume["projected"]["sources"] if "secret" in s])
        (ref,) = [{"name": s["name"], "key": i["key"]} for s in sources for i in s["items"]
                  if i["path"] == path.name]
        found[e["name"].removesuffix("_FILE")] = ref
    return found
