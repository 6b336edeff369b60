"""Each service's Dockerfile, checked by a small parser (hadolint is not installable here):
multi-stage, pinned bases, dependencies in their own layer from uv.lock, non-root numeric USER,
no ADD of URLs, no secrets, STOPSIGNAL SIGTERM, CMD = the service's console script, ports = the
chart's. And .dockerignore keeps the build context to the workspace sources; what each image
installs (its package's dependency closure in uv.lock) holds no other service."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.k8s import support

SERVICES = {"api": "api", "outbox-relay": "outboxRelay", "relay-operator": "operator",
            "ws-gateway": "wsGateway"}


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> list[Stage]:
    """Instructions per stage (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 else ""))
        else:
            assert stages, "instruction before FROM"
            stages[-1].instructions.append((op, " ".join(args.split())))
    return stages


def lint(text: str, scripts: set[str]) -> list[str]:
    problems = []
    stages = parse(text)
    names = {s.name for s in stages}
    if len(stages) < 2:
        problems.append("not multi-stage")
    for s in stages:
        if s.base in names:
            continue
        image, _, tag = s.base.partition(":")
        if "@sha256:" not in s.base and (not re.match(r"v?\d+\.\d+", tag) or "latest" in tag):
            problems.append(f"unpinned base {s.base}")
    for s in stages:
        for op, args in s.instructions:
            if op == "ADD" and re.search(r"https?://", args):
                problems.append(f"ADD of a URL: {args}")
            if op in ("ENV", "ARG") and re.search(r"(SECRET|PASSWORD|TOKEN|API_KEY)\w*=", args,
                                                  flags=re.I):
                problems.append(f"secret in {op}: {args}")
            if op == "COPY" and re.search(r"(^|\s)(\.env|app\.env|\.git)(\s|$)", args):
                problems.append(f"COPY of local secrets/VCS: {args}")
    final = stages[-1]
    ops = dict(final.instructions)
    user = ops.get("USER", "")
    if not re.fullmatch(r"[1-9]\d*(:\d+)?", user) or user.startswith("0"):
        problems.append(f"final stage USER must be a non-root uid, got {user!r}")
    if ops.get("STOPSIGNAL") != "SIGTERM":
        problems.append("STOPSIGNAL SIGTERM missing")
    try:
        cmd = json.loads(ops.get("CMD", "null"))
    except json.JSONDecodeError:
        cmd = None
    if not isinstance(cmd, list) or not cmd or cmd[0] not in scripts:
        problems.append(f"CMD must be exec-form running a console script of {sorted(scripts)}")
    for op, args in final.instructions:
        if op == "RUN" and re.search(r"apt-get install|pip install|uv sync|gcc|build-essential",
                                     args):
            problems.append(f"build tooling in the final stage: {args}")
        if op == "COPY" and "--from=" not in args:
            problems.append(f"final stage copies from the context: {args}")
    builder = [s for s in stages if any(op == "RUN" and "uv sync" in a for op, a in s.instructions)]
    if not builder:
        problems.append("no uv sync stage")
    else:
        seq = builder[0].instructions
        syncs = [i for i, (op, a) in enumerate(seq) if op == "RUN" and "uv sync" in a]
        lock = [i for i, (op, a) in enumerate(seq) if op == "COPY" and "uv.lock" in a]
        sources = [i for i, (op, a) in enumerate(seq)
                   if op == "COPY" and re.search(r"(^|\s)(shared|services/[\w-]+)/(\s|$)", a)]
        first_sync = seq[syncs[0]][1] if syncs else ""
        if not (lock and syncs and sources and lock[0] < syncs[0] < sources[0]):
            problems.append("dependencies must install from uv.lock before the sources are copied")
        if "--frozen" not in first_sync or "--no-install-workspace" not in first_sync:
            problems.append("dependency layer must be `uv sync --frozen --no-install-workspace`")
        if "--no-dev" not in first_sync:
            problems.append("dev dependencies in the image")
    return problems


def console_scripts(service: str) -> set[str]:
    project = tomllib.loads((support.ROOT / "services" / service / "pyproject.toml").read_text())
    return set(project["project"].get("scripts", {}))


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dockerfile_lints_clean(service: str) -> None:
    text = (support.ROOT / "services" / service / "Dockerfile").read_text()
    assert lint(text, console_scripts(service)) == []


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dockerfile_matches_the_chart(service: str) -> None:
    stages = parse((support.ROOT / "services" / service / "Dockerfile").read_text())
    final = dict(stages[-1].instructions)
    values = support.load_yaml(support.CHART / "values.yaml")[SERVICES[service]]
    assert {int(p) for p in final["EXPOSE"].split()} == set(values["containerPorts"].values())
    uid = int(final["USER"].split(":")[0])
    assert uid == support.load_yaml(support.CHART / "values.yaml")["podSecurityContext"][
        "runAsUser"]
    package = tomllib.loads((support.ROOT / "services" / service / "pyproject.toml").read_text())
    syncs = [a for s in stages for op, a in s.instructions if op == "RUN" and "uv sync" in a]
    assert all(f"--package {package['project']['name']}" in a for a in syncs)


def test_api_image_can_run_migrations() -> None:
    api = tomllib.loads((support.ROOT / "services/api/pyproject.toml").read_text())
    assert "chat-migrations" in api["project"]["dependencies"]
    text = (support.ROOT / "services/api/Dockerfile").read_text()
    assert "COPY migrations/ migrations/" in text


def test_lint_catches_bad_dockerfiles() -> None:
    bad = """FROM python:latest
ADD https://example.com/x.tar.gz /x
ENV JWT_SECRET=abc
COPY . .
RUN pip install .
USER root
CMD chat-api
"""
    problems = " | ".join(lint(bad, {"chat-api"}))
    for expected in ("not multi-stage", "unpinned base", "ADD of a URL", "secret in ENV",
                     "non-root uid", "STOPSIGNAL", "CMD must be exec-form", "build tooling",
                     "no uv sync stage"):
        assert expected in problems, expected


def test_dockerignore_keeps_the_context_to_workspace_sources() -> None:
    lines = [ln.strip() for ln in (support.ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "ignore everything, then allow the workspace sources"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "shared", "migrations", "services"}
    for junk in ("**/__pycache__", "**/.venv"):
        assert junk in lines
    # Everything a Dockerfile COPYs from the context is allowed in.
    for service in SERVICES:
        for s in parse((support.ROOT / "services" / service / "Dockerfile").read_text()):
            for op, args in s.instructions:
                if op == "COPY" and "--from=" not in args:
                    for src in args.split()[:-1]:
                        assert src.split("/")[0] in allowed, (service, src)


def project(service: str) -> dict[str, Any]:
    return tomllib.loads((support.ROOT / "services" / service / "pyproject.toml").read_text())


def closure(package: str) -> set[str]:
    """What ``uv sync --frozen --package <package>`` installs: the package and everything its
    dependencies (with the extras asked for) pull in, per uv.lock, markers ignored."""
    lock = tomllib.loads((support.ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    names: set[str] = set()
    done: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(package, ())]
    while todo:
        key = todo.pop()
        if key in done:
            continue
        done.add(key)
        name, extras = key
        names.add(name)
        deps = list(packages[name].get("dependencies", []))
        for extra in extras:
            deps += packages[name].get("optional-dependencies", {}).get(extra, [])
        todo += [(d["name"], tuple(d.get("extra", ()))) for d in deps]
    return names


def test_relay_image_ships_no_operator_and_the_operator_no_relay() -> None:
    relay, operator = closure("chat-outbox-relay"), closure("chat-relay-operator")
    assert "chat-shared" in relay and "psycopg" in relay  # the walk reaches transitive deps
    assert not {"kopf", "lightkube", "chat-relay-operator"} & relay
    assert {"kopf", "lightkube", "httpx2", "chat-shared"} <= operator
    assert "chat-outbox-relay" not in operator


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_installs_and_imports_no_other_service(service: str) -> None:
    """Services talk over the network, Kubernetes or the database, never through imports."""
    others = {project(s)["project"]["name"] for s in SERVICES if s != service}
    assert closure(project(service)["project"]["name"]) & others == set()
    modules = {p for s in SERVICES if s != service
               for p in project(s)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}
    for path in (support.ROOT / "services" / service).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in modules, f"{path}: imports {name}"
