"""skaffold.yaml (no skaffold binary here): parsed, every path it names exists, and what it
deploys is rendered the way skaffold would (kubectl kustomize for k8s/dev, helm template with
its values files and image values for the chart) and validated strictly. Also the k8s/
kustomizations on their own."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.k8s import support
from tests.k8s.support import KUBE_VERSIONS

SKAFFOLD = support.ROOT / "skaffold.yaml"


def configs() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(SKAFFOLD.read_text()) if d]
    for d in docs:
        assert d["apiVersion"] == "skaffold/v4beta11" and d["kind"] == "Config"
    return {d["metadata"]["name"]: d for d in docs}


def kustomize(path: str) -> list[dict[str, Any]]:
    out = support.run([support.tool("kubectl"), "kustomize", str(support.ROOT / path)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def image_values(template: str) -> str:
    """What skaffold substitutes for {{.IMAGE_REPO_x}} / {{.IMAGE_TAG_x}}."""
    template = re.sub(r"\{\{\.IMAGE_REPO_(\w+)\}\}", r"registry.local/\1", template)
    return re.sub(r"\{\{\.IMAGE_TAG_(\w+)\}\}", "dev-1234abcd", template)


def releases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(profile, release, config section) for the base config and every profile."""
    chat = configs()["chat-service"]
    out = [("base", r, chat) for r in chat["deploy"]["helm"]["releases"]]
    for profile in chat["profiles"]:
        for r in profile.get("deploy", {}).get("helm", {}).get("releases", []):
            out.append((profile["name"], r, profile))
    return out


def render_release(release: dict[str, Any], kube: str) -> list[dict[str, Any]]:
    cmd = [support.tool("helm"), "template", release["name"],
           str(support.ROOT / release["chartPath"]), "--kube-version", kube]
    for f in release.get("valuesFiles", []):
        cmd += ["-f", str(support.ROOT / f)]
    for key, value in release.get("setValueTemplates", {}).items():
        cmd += ["--set", f"{key}={image_values(value)}"]
    for key, value in release.get("setValues", {}).items():
        cmd += ["--set", f"{key}={value}"]
    return [d for d in yaml.safe_load_all(support.run(cmd).stdout) if d]


def test_configs_profiles_and_paths_exist() -> None:
    cfg = configs()
    assert set(cfg) == {"dev-deps", "chat-service"}
    chat = cfg["chat-service"]
    assert chat["requires"] == [{"configs": ["dev-deps"]}], "dependencies deploy first"
    assert {p["name"] for p in chat["profiles"]} == {"dev", "ci"}
    for path in cfg["dev-deps"]["manifests"]["kustomize"]["paths"]:
        assert (support.ROOT / path / "kustomization.yaml").is_file()
    builds = [chat["build"]] + [p["build"] for p in chat["profiles"] if "build" in p]
    for build in builds:
        images = {a["image"] for a in build["artifacts"]}
        assert images == {"ghcr.io/chat-service/chat-api", "ghcr.io/chat-service/chat-outbox-relay",
                          "ghcr.io/chat-service/chat-relay-operator",
                          "ghcr.io/chat-service/chat-ws-gateway"}
        for a in build["artifacts"]:
            assert (support.ROOT / a["context"] / a["docker"]["dockerfile"]).is_file()
    for _, release, _ in releases():
        assert (support.ROOT / release["chartPath"] / "Chart.yaml").is_file()
        for f in release["valuesFiles"]:
            assert (support.ROOT / f).is_file()
        # skaffold's template names: the image name with every non-alphanumeric as "_"
        artifacts = {re.sub(r"[^A-Za-z0-9]", "_", a["image"]) for a in chat["build"]["artifacts"]}
        used = set(re.findall(r"IMAGE_(?:REPO|TAG)_(\w+)", str(release["setValueTemplates"])))
        assert used == artifacts


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_releases_render_with_skaffolds_values_and_validate(kube: str) -> None:
    chat = configs()["chat-service"]
    for profile, release, section in releases():
        docs = render_release(release, kube)
        assert [e for d in docs for e in support.schema_errors(d, kube)] == []
        images = {c["image"] for _, spec in support.pod_specs(docs) for c in spec["containers"]}
        assert images == {f"registry.local/ghcr_io_chat_service_chat_{name}:dev-1234abcd"
                          for name in ("api", "outbox_relay", "relay_operator", "ws_gateway")}, \
            profile
        services = support.by_name(docs, "Service")
        forwards = section.get("portForward", chat["portForward"]) if profile != "base" \
            else chat["portForward"]
        for fwd in forwards:
            svc = services[fwd["resourceName"]]
            assert fwd["port"] in {p["port"] for p in svc["spec"]["ports"]}, fwd
    ports = {f["localPort"] for f in chat["portForward"]}
    assert ports == {9090, 8080, 8081}


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_dev_dependencies_render_validate_and_match_chart_defaults(kube: str) -> None:
    docs = kustomize("k8s/dev")
    assert [e for d in docs for e in support.schema_errors(d, kube)] == []
    assert not support.of_kind(docs, "PersistentVolumeClaim")
    for name, spec in support.pod_specs(docs):
        assert all("emptyDir" in v for v in spec["volumes"]), f"{name}: persistence must be off"
        for c in spec["containers"]:
            assert c["resources"]["limits"] and c.get("readinessProbe"), name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
    services = support.by_name(docs, "Service")
    values = support.load_yaml(support.CHART / "values-dev.yaml")
    db = urlsplit(values["database"]["url"])
    assert db.port in {p["port"] for p in services[db.hostname]["spec"]["ports"]}
    host, port = values["redis"]["addr"].split(":")
    assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    (secret,) = support.of_kind(docs, "Secret")
    creds = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert (creds["POSTGRES_USER"], creds["POSTGRES_PASSWORD"]) == (db.username, db.password)


def test_monitoring_kustomization_carries_the_alertmanager_config() -> None:
    docs = kustomize("k8s/monitoring")
    (secret,) = docs
    assert secret["metadata"]["name"] == "alertmanager-chat"
    body = base64.b64decode(secret["data"]["alertmanager.yaml"]).decode()
    assert body == (support.ROOT / "k8s" / "monitoring" / "alertmanager.yml").read_text()
    assert support.schema_errors(secret, KUBE_VERSIONS[-1]) == []
