"""The documents hold together: every relative link and anchor resolves, the commands they show
name things that exist (./dev commands, make targets, `uv run` entry points, scripts), README's
apt line installs what CI installs, and no document names an issue number or "the seed"."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "services").glob("*/README.md")])
VENV_BIN = Path(sys.executable).parent

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = _INLINE_CODE.sub("", _FENCE.sub("", path.read_text()))
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{rel(path)} -- {target} -- no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{rel(path)} -- {target} -- no such heading in {dest.name}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_the_link_check_finds_a_broken_link_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Real heading\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#real-heading) [gone](missing.md) [bad](other.md#nope) "
                   "[self](#doc) `[code](ignored.md)`\n\n# Doc\n")
    assert [p.split(" -- ")[1] for p in broken_links(doc)] == ["missing.md", "other.md#nope"]


def test_readme_links_every_document_in_docs() -> None:
    readme = set(links(ROOT / "README.md"))
    for doc in (ROOT / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in readme, f"README does not link docs/{doc.name}"


def test_no_document_names_an_issue_or_the_seed() -> None:
    pattern = re.compile(r"\bissue\s*#?\d+|\bthe seed\b|\bseed'?s?\b", re.I)
    found = [f"{rel(p)}: {m.group(0)}" for p in DOCS for m in pattern.finditer(p.read_text())]
    assert found == []


def shell_commands(path: Path) -> list[list[str]]:
    """The commands of a document's sh blocks (continuations joined, pipes and $() split)."""
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", path.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0] if not line.startswith("#") else ""
            for part in re.split(r"\$\(|\||&&|;", line):
                try:
                    words = shlex.split(part.replace(")", " "), comments=True)
                except ValueError:
                    continue
                while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value cmd
                    words = words[1:]
                if words and words[0] == "export":
                    continue
                if words:
                    commands.append(words)
    return commands


def dev_commands() -> set[str]:
    case = (ROOT / "dev").read_text().split('case "$cmd" in', 1)[1]
    return set(re.findall(r"^  ([a-z]+)\)", case, re.M))


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def entry_points() -> set[str]:
    names = set()
    for pyproject in ROOT.glob("**/pyproject.toml"):
        if ".venv" in pyproject.parts or ".tools" in pyproject.parts:
            continue
        names |= set(tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {}))
    return names


def unknown_commands(path: Path) -> list[str]:
    problems = []
    dev, make, scripts = dev_commands(), make_targets(), entry_points()
    for words in shell_commands(path):
        what = " ".join(words)
        if words[0] == "./dev" and (len(words) < 2 or words[1] not in dev):
            problems.append(f"{what} -- ./dev has no such command")
        elif words[0] == "make" and (len(words) < 2 or words[1] not in make):
            problems.append(f"{what} -- no such make target")
        elif words[:2] == ["uv", "run"]:
            tool = words[2]
            if tool == "python":
                script = words[3]
                if not (ROOT / script).is_file():
                    problems.append(f"{what} -- no such script")
            elif tool not in scripts and not (VENV_BIN / tool).exists():
                problems.append(f"{what} -- not an entry point of the workspace")
        elif words[0] in scripts:
            problems.append(f"{what} -- call it as `uv run {words[0]}` (not on PATH otherwise)")
        elif words[0] in ("grpcurl", "websocat"):
            problems.append(f"{what} -- call the workspace's: `uv run {words[0]}`")
    return problems


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=rel)
def test_documented_commands_name_things_that_exist(path: Path) -> None:
    assert unknown_commands(path) == []


def test_readme_shows_the_two_commands() -> None:
    commands = shell_commands(ROOT / "README.md")
    assert ["./dev", "run"] in commands and ["./dev", "test"] in commands


def test_the_command_check_finds_unknown_names(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("```sh\n./dev frobnicate\nmake nothing-here\nuv run chat-nope --x\n"
                   "X=$(uv run chat-token --user a)\ngrpcurl -plaintext h:1 list\n"
                   "uv run python scripts/missing.py\n./dev run\n```\n")
    assert [p.split(" -- ")[0] for p in unknown_commands(doc)] == [
        "./dev frobnicate", "make nothing-here", "uv run chat-nope --x",
        "grpcurl -plaintext h:1 list", "uv run python scripts/missing.py"]


def test_readme_apt_line_works_as_root_and_installs_what_ci_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    installs = [c for c in shell_commands(ROOT / "README.md") if c[:2] == ["apt-get", "install"]]
    assert len(installs) == 1, "README has one apt-get install line"
    (install,) = installs
    assert "sudo" not in readme.split("## The two commands", 1)[1].split("```sh", 1)[1] \
        .split("```", 1)[0], "a root shell on a fresh Debian has no sudo"
    assert "--no-install-recommends" in install, \
        "recommends pull in prometheus-node-exporter, on the API's metrics port"
    packages = {w for w in install[2:] if not w.startswith("-")}
    ci = set(re.findall(r"need\+=\(([\w.-]+)\)", (ROOT / ".ci" / "run").read_text()))
    assert ci and packages == ci
    assert "prometheus-node-exporter" not in packages
