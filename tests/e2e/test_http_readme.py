"""docs/api.md's HTTP/JSON curl examples, run as written with the real curl against a chat-api.

The ```sh blocks of its "## HTTP/JSON" section run in one bash, exactly as the document shows
them; the only substitution is the address (127.0.0.1:8080 becomes the test server's free
port), and TOKEN is exported as README's "Trying it" section does before them. They run in an
empty directory, which must stay empty: the examples write no files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from chat_devtools.process import ServiceProcess, grpc_serving
from tests.conftest import ROOT, make_token


def readme_blocks() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("\n## HTTP/JSON\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, "docs/api.md's 'HTTP/JSON' section has no sh block"
    return "\n".join(blocks)


@pytest.fixture
def api_http_port(api_env: dict[str, str], venv_bin: Any) -> Iterator[int]:
    """chat-api on ports of its own (port 0), SERVING; its HTTP port."""
    with ServiceProcess("api", [venv_bin / "chat-api"], env={**os.environ, **api_env},
                        ready=grpc_serving()) as api:
        yield api.wait_ready().port("http_port")


def _json_documents(text: str) -> list[Any]:
    """The JSON documents curl printed back to back (responses have no trailing newline)."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
    return docs


def test_readme_curl_blocks_run_as_written(api_http_port, tmp_path):
    script = "set -euo pipefail\n" + readme_blocks().replace(
        "127.0.0.1:8080", f"127.0.0.1:{api_http_port}")
    env = {**os.environ, "TOKEN": make_token("alice")}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == [], "the examples must not write files"
    before, _, retry = result.stdout.partition("HTTP/1.1 409 Conflict")
    sent, history, listing, read = _json_documents(before)
    conversation = listing["conversations"][0]["conversation"]
    assert conversation["id"] == sent["message"]["conversation_id"]
    assert conversation["title"] == "lunch"
    assert sorted(conversation["member_ids"]) == ["alice", "bob"]
    assert sent["message"]["content"] == "hi bob"
    assert [m["id"] for m in history["messages"]] == [sent["message"]["id"]]
    assert read == {"last_read_seq": "1", "unread_count": "0"}
    # The retry: 409 with ErrorInfo naming the message the first send created.
    error = json.loads(retry.split("\n\n", 1)[1])
    info = next(d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert (error["code"], info["reason"]) == (6, "DUPLICATE_REQUEST")
    assert info["metadata"]["message_id"] == sent["message"]["id"]
