"""docs/operations.md's "Deploy to Kubernetes" commands are the ones the tests render: each helm
command renders (as `helm template` with the same release, chart, namespace, values files and
--set) and validates; port-forwards name Services and ports of that rendering; skaffold profiles and
kustomize paths exist; the promtool command passes; the grpcurl commands run as written
against a real chat-api (the only change: the forwarded port becomes the test server's).
README's "Trying it" port-forward names a Service and port of the same rendering."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chat_devtools.process import ServiceProcess, grpc_serving
from chat_shared.config import DEV_JWT_SECRET
from tests.k8s import support

VENV_BIN = Path(sys.executable).parent


DOC = support.ROOT / "docs" / "operations.md"


def section() -> str:
    text = DOC.read_text()
    assert "\n## Deploy to Kubernetes\n" in text
    return text.split("\n## Deploy to Kubernetes\n", 1)[1].split("\n## ", 1)[0]


def commands(body: str | None = None) -> list[str]:
    """Every command of the section's sh blocks and inline `code` (continuations joined)."""
    body = section() if body is None else body
    blocks = re.findall(r"```sh\n(.*?)```", body, re.S)
    lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines() if ln.strip()]
    inline = [c for c in re.findall(r"`((?:kubectl|helm|skaffold|docker) [^`]+)`", body)
              if len(c.split()) > 2]  # not prose like "`helm install` prints ..."
    return [" ".join(c.split()) for c in lines + inline]


def named(prefix: str) -> list[list[str]]:
    return [shlex.split(c) for c in commands() if c.startswith(prefix)]


def helm_render(argv: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """`helm install|upgrade --install REL CHART ...` as `helm template`; returns (ns, objects)."""
    args = [a for a in argv[2:] if a != "--install"]
    release, chart, rest = args[0], args[1], args[2:]
    assert (support.ROOT / chart / "Chart.yaml").is_file()
    flags = {"-n": None, "--namespace": None}
    ns = next(rest[i + 1] for i, a in enumerate(rest) if a in flags)
    rest = [str(support.ROOT / a) if a.startswith("helm/") else a for a in rest]
    cmd = [support.tool("helm"), "template", release, str(support.ROOT / chart), *rest,
           "--kube-version", support.NEWEST_KUBE,
           *[x for api in support.MONITORING_APIS for x in ("--api-versions", api)]]
    out = support.run(cmd).stdout
    return ns, [d for d in yaml.safe_load_all(out) if d]


def test_helm_commands_render_and_validate() -> None:
    helm = named("helm ")
    assert {tuple(c[:2]) for c in helm} == {("helm", "install"), ("helm", "upgrade")}
    for argv in helm:
        ns, docs = helm_render(argv)
        assert ns == "chat"
        assert [e for d in docs for e in support.schema_errors(d, support.NEWEST_KUBE)] == []
        assert support.of_kind(docs, "Deployment")


def test_existing_secret_command_uses_the_secrets_the_readme_creates() -> None:
    created = {c[6]: c[7].removeprefix("--from-literal=").split("=", 1)[0]
               for c in named("kubectl -n chat create secret generic")}
    (upgrade,) = named("helm upgrade")
    _, docs = helm_render(upgrade)
    assert support.of_kind(docs, "Secret") == [], "every credential comes from the README's Secrets"
    refs = {(ref["name"], ref["key"]) for _, spec in support.pod_specs(docs)
            for c in spec["containers"] for ref in support.secret_files(spec, c).values()}
    assert refs == {(name, key) for name, key in created.items()}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        for d in support.of_kind(docs, kind):
            assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_port_forwards_and_grpcurl_match_the_rendered_services() -> None:
    (install,) = named("helm install")
    ns, docs = helm_render(install)
    services = support.by_name(docs, "Service")
    forwarded: set[int] = set()
    forwards = named("kubectl -n chat port-forward")
    assert len(forwards) == 2
    for argv in forwards:
        assert argv[2] == ns
        svc = services[argv[4].removeprefix("svc/")]
        for mapping in argv[5:]:
            if mapping == "&":
                continue
            local, remote = (int(p) for p in mapping.split(":"))
            assert remote in {p["port"] for p in svc["spec"]["ports"]}, mapping
            forwarded.add(local)
    grpcurl_ports = {int(p) for c in commands() if c.startswith("uv run grpcurl")
                     for p in re.findall(r"127\.0\.0\.1:(\d+)", c)}
    assert grpcurl_ports and grpcurl_ports <= forwarded
    # NOTES.txt prints the same port-forward commands.
    notes = support.run([support.tool("helm"), "install", "chat-service", str(support.CHART),
                         "--dry-run=client", "-n", ns]).stdout.split("NOTES:", 1)[1]
    for argv in forwards:
        assert " ".join(a for a in argv if a != "&") in notes


def test_readme_port_forward_names_the_charts_api_service() -> None:
    """README's "Trying it" forwards `<release>-api` in the release's namespace, as installed."""
    readme = (support.ROOT / "README.md").read_text()
    trying = readme.split("\n## Trying it", 1)[1].split("\n## ", 1)[0]
    forwards = [shlex.split(c) for c in commands(trying) if " port-forward " in c]
    assert forwards, "README's 'Trying it' shows no kubectl port-forward"
    (install,) = named("helm install")
    ns, docs = helm_render(install)
    services = support.by_name(docs, "Service")
    for argv in forwards:
        assert argv[:2] == ["kubectl", "-n"] and argv[2] == ns, argv
        name = argv[4].removeprefix("svc/")
        assert name == f"{install[2]}-api" and name in services, (name, sorted(services))
        ports = {p["port"] for p in services[name]["spec"]["ports"]}
        for mapping in argv[5:]:
            assert int(mapping.split(":")[1]) in ports, mapping


def test_skaffold_kustomize_and_promtool_commands_are_real() -> None:
    skaffold = [d for d in yaml.safe_load_all((support.ROOT / "skaffold.yaml").read_text()) if d]
    profiles = {p["name"] for d in skaffold for p in d.get("profiles", [])}
    for argv in named("skaffold"):
        if "-p" in argv:
            assert argv[argv.index("-p") + 1] in profiles
    forwards = {f["localPort"] for d in skaffold for f in d.get("portForward", [])}
    for port in forwards:
        assert str(port) in section()
    for argv in named("kubectl") + named("docker"):
        for flag in ("-k", "-f"):
            if flag in argv:
                assert (support.ROOT / argv[argv.index(flag) + 1]).exists(), argv
    (promtool,) = [c for c in commands() if "promtool test rules" in c]
    proc = subprocess.run(["bash", "-c", promtool], cwd=support.ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PATH": f"{Path(support.tool('promtool')).parent}:"
                                                     f"{os.environ['PATH']}"})
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr


@pytest.fixture
def api_port(db_source: str, redis_addr: str, tmp_path: Path) -> Iterator[int]:
    """chat-api as a subprocess with the development JWT secret (as values-dev.yaml sets it)."""
    env = {**os.environ, "ENVIRONMENT": "test", "DB_SOURCE": db_source, "REDIS_ADDR": redis_addr,
           "JWT_SECRET": DEV_JWT_SECRET, "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
           "HTTP_SERVER_ADDRESS": "127.0.0.1:0", "METRICS_PORT": "0",
           "LOG_LEVEL": "WARNING", "HEALTH_CHECK_INTERVAL": "0.2"}
    with ServiceProcess("api", [VENV_BIN / "chat-api"], env=env, cwd=tmp_path,
                        log_path=tmp_path / "api.log", ready=grpc_serving()) as api:
        yield api.wait_ready().port("grpc_port")


def test_grpcurl_commands_run_against_a_real_api(api_port: int) -> None:
    block = [c for c in commands() if c.startswith(("uv run grpcurl", "export TOKEN"))]
    assert len(block) == 4
    assert any("uv run chat-token" in c for c in block)
    script = "set -e\n" + "\n".join(block).replace("127.0.0.1:9090", f"127.0.0.1:{api_port}")
    assert values_dev_secret() == DEV_JWT_SECRET
    # `uv run X` runs the workspace's X: the venv's bin first on PATH stands in for uv here.
    script = script.replace("uv run ", "")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "JWT_SECRET": DEV_JWT_SECRET}
    deadline = time.monotonic() + 30
    while True:  # wait until the api serves (the health check in the block needs it)
        probe = subprocess.run([str(VENV_BIN / "grpcurl"), "-plaintext", f"127.0.0.1:{api_port}",
                                "grpc.health.v1.Health/Check"], env=env, capture_output=True,
                               text=True, timeout=10)
        if '"SERVING"' in probe.stdout:
            break
        assert time.monotonic() < deadline, probe.stderr
        time.sleep(0.2)
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "chat.v1.ChatService" in proc.stdout and "grpc.health.v1.Health" in proc.stdout
    assert '"status": "SERVING"' in proc.stdout
    assert re.search(r'"id": "[0-9a-f-]{36}"', proc.stdout), proc.stdout


def values_dev_secret() -> str:
    return support.load_yaml(support.CHART / "values-dev.yaml")["jwt"]["secret"]
