"""One database layer: runtime SQL goes through psycopg (chat_shared.db), never SQLAlchemy.

SQLAlchemy describes the schema for alembic (the migrations package) and nothing else: no
module of the services or of the shared package imports it, directly or through another
package, so a service's request path never pays for it and its image does not need it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

RUNTIME_PACKAGES = [ROOT / "shared" / "chat_shared", *sorted((ROOT / "services").glob("*/chat_*"))]


def _imports_sqlalchemy(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n == "sqlalchemy" or n.startswith("sqlalchemy.") for n in names):
            lines.append(node.lineno)
    return lines


def test_the_runtime_packages_are_the_ones_we_mean() -> None:
    names = {p.name for p in RUNTIME_PACKAGES}
    assert {"chat_shared", "chat_api", "chat_outbox_relay", "chat_ws_gateway"} <= names


def test_no_runtime_module_imports_sqlalchemy() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}"
             for package in RUNTIME_PACKAGES
             for path in sorted(package.rglob("*.py"))
             for line in _imports_sqlalchemy(path)]
    assert found == []


def test_the_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\nimport sqlalchemy\nfrom sqlalchemy.ext import asyncio\n"
                      "import sqlalchemy.orm as orm\nfrom . import sqlalchemy_like\n")
    assert _imports_sqlalchemy(source) == [2, 3, 4]


def test_importing_each_service_loads_no_sqlalchemy() -> None:
    # A fresh interpreter: what the composition roots pull in, transitively.
    code = ("import sys\n"
            "import chat_api.app, chat_api.main, chat_outbox_relay.app, chat_outbox_relay.cli\n"
            "import chat_outbox_relay.main, chat_relay_operator.sources\n"
            "import chat_ws_gateway.app, chat_ws_gateway.main\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
