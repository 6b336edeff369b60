"""The development tools (``devtools/``, package chat-devtools) stay out of the runtime: no
image's package depends on them, directly or through uv.lock, no Dockerfile copies them, and no
runtime module imports them."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT

DEV_ONLY = "chat-devtools"
RUNTIME_DIRS = ("shared", "migrations", "services")


def image_packages() -> dict[str, str]:
    """Dockerfile -> the package its `uv sync --package` installs."""
    found = {}
    for dockerfile in ROOT.glob("services/*/Dockerfile"):
        packages = set(re.findall(r"uv sync [^\n]*--package (\S+)", dockerfile.read_text()))
        assert len(packages) == 1, (dockerfile, packages)
        found[str(dockerfile.relative_to(ROOT))] = packages.pop()
    assert len(found) >= 3
    return found


def lock_closure(package: str) -> set[str]:
    """Every package uv.lock installs with ``package`` (optional extras included)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    deps = {}
    for entry in lock["package"]:
        names = {d["name"] for d in entry.get("dependencies", [])}
        for extra in entry.get("optional-dependencies", {}).values():
            names |= {d["name"] for d in extra}
        deps[entry["name"]] = names
    seen, todo = set(), [package]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(deps[name])
    return seen


def test_no_runtime_pyproject_names_the_dev_tools() -> None:
    for directory in RUNTIME_DIRS:
        for pyproject in ROOT.glob(f"{directory}/**/pyproject.toml"):
            project = tomllib.loads(pyproject.read_text())["project"]
            named = " ".join(project.get("dependencies", []))
            assert DEV_ONLY not in named, pyproject


def test_no_image_installs_the_dev_tools_or_pytest() -> None:
    for dockerfile, package in image_packages().items():
        closure = lock_closure(package)
        assert package in closure and "chat-shared" in closure  # the walk does reach things
        assert DEV_ONLY not in closure, dockerfile
        assert "pytest" not in closure, dockerfile


def test_no_dockerfile_copies_the_dev_tools_and_the_build_context_leaves_them_out() -> None:
    for dockerfile in image_packages():
        copies = re.findall(r"^COPY (.*)$", (ROOT / dockerfile).read_text(), re.M)
        assert copies and not any("devtools" in c for c in copies), dockerfile
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and not any("devtools" in line for line in ignore if line.startswith("!"))


def test_no_runtime_module_imports_the_dev_tools() -> None:
    for directory in RUNTIME_DIRS:
        for module in ROOT.glob(f"{directory}/**/*.py"):
            text = module.read_text()
            assert not re.search(r"^\s*(from|import) chat_devtools", text, re.M), module
            assert "localstack" not in text and "devstack" not in text, module
