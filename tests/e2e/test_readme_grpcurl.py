"""README's grpcurl examples, run as written with the real grpcurl against a chat-api process.

The block runs in bash exactly as README shows it (`uv run grpcurl`, the workspace's grpcurl);
the only substitution is the address (README's 127.0.0.1:9090 becomes the test server's free
port). It runs in an empty directory, which must stay empty: the examples write no files into
the checkout they are pasted in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from chat_devtools.process import ServiceProcess, grpc_serving
from tests.conftest import ROOT, TEST_SECRET


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Trying it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's 'Trying it' section has no sh block"
    return block.group(1)


@pytest.fixture
def api_port(api_env, venv_bin):
    """chat-api on ports of its own (port 0), SERVING; its gRPC port."""
    with ServiceProcess("api", [venv_bin / "chat-api"], env={**os.environ, **api_env},
                        ready=grpc_serving()) as api:
        yield api.wait_ready().port("grpc_port")


def _uv_dir() -> str:
    # `uv run` exports UV (its own path); outside uv, find it on PATH or in .tools.
    uv = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools/uv/bin/uv")
    assert Path(uv).exists(), "uv not found: run the tests through ./dev test"
    return str(Path(uv).parent)


def test_readme_grpcurl_block_runs_as_written(api_port, venv_bin, tmp_path):
    port = api_port
    script = "set -euo pipefail\n" + readme_block().replace("127.0.0.1:9090", f"127.0.0.1:{port}")
    env = {**os.environ, "JWT_SECRET": TEST_SECRET,
           "PATH": f"{venv_bin}:{_uv_dir()}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == [], "README's examples must not write files"
    out = result.stdout
    assert "chat.v1.ChatService" in out and "grpc.health.v1.Health" in out
    assert not re.search(r"^grpcurl ", readme_block(), re.M), \
        "copy-paste blocks call the workspace's grpcurl: uv run grpcurl"
    # SendMessage and GetMessages both print the message, in the conversation just created.
    printed = [json.loads(doc) for doc in re.findall(r"^\{.*?^\}", out, re.M | re.S)]
    sent, history = printed
    assert sent["message"]["content"] == "hi bob" and sent["message"]["seq"] == "1"
    assert [m["id"] for m in history["messages"]] == [sent["message"]["id"]]


def test_readme_retry_with_same_key_is_already_exists(api_port, venv_bin, tmp_path):
    """What README says about a retried key holds for grpcurl users too."""
    port = api_port
    script = "set -uo pipefail\n" + readme_block().replace("127.0.0.1:9090", f"127.0.0.1:{port}")
    send = [line for line in script.split("\nuv run grpcurl") if "SendMessage" in line]
    assert send, "README has no SendMessage example"
    script += "\nuv run grpcurl" + send[0].split("chat.v1.ChatService/SendMessage")[0] + \
        "chat.v1.ChatService/SendMessage\n"
    env = {**os.environ, "JWT_SECRET": TEST_SECRET,
           "PATH": f"{venv_bin}:{_uv_dir()}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert "AlreadyExists" in result.stderr, result.stderr
    assert "DUPLICATE_REQUEST" in result.stderr, result.stderr
