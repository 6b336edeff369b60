"""The house style's machine-checkable part: ruff and mypy (strict) over the source packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SOURCES = ["shared/chat_shared", "services/api/chat_api", "services/outbox-relay/chat_outbox_relay",
           "services/relay-operator/chat_relay_operator",
           "services/ws-gateway/chat_ws_gateway", "migrations/chat_migrations",
           "bench/chat_bench", "devtools/chat_devtools"]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    result = _run(str(BIN / "ruff"), "check", "--output-format", "concise", *SOURCES, "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_finds_nothing():
    result = _run(str(BIN / "mypy"), *SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr
