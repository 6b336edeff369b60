"""README's grpcurl examples, run as written against a real chat-api process.

Only the address (the README's 127.0.0.1:9090 becomes the test server's free port), $TOKEN and
the "<id from above>" placeholder are substituted; everything else is taken from README.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chat_shared.localstack import free_port
from tests.conftest import ROOT, make_token
from tests.support.grpc_cli import parse_grpcurl, run


def readme_grpcurl_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Trying it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's 'Trying it' section has no sh block"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("grpcurl")]


@pytest.fixture
def api_process(api_env, venv_bin):
    port = free_port()
    env = {**os.environ, **api_env, "GRPC_SERVER_ADDRESS": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([str(venv_bin / "chat-api")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    yield port, proc
    proc.terminate()
    proc.wait(15)
    proc.stderr.close()


async def _wait_serving(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            time.sleep(0.1)
    raise AssertionError("chat-api did not become SERVING")


def test_readme_has_the_three_grpcurl_examples():
    commands = readme_grpcurl_commands()
    methods = [parse_grpcurl(c.replace("$TOKEN", "t")).method for c in commands]
    assert methods == ["chat.v1.ChatService/CreateConversation",
                       "chat.v1.ChatService/SendMessage", "list"]


async def test_readme_grpcurl_examples_work_as_written(api_process):
    port, proc = api_process
    await _wait_serving(port, proc)
    token = make_token("alice")
    outputs = []
    conversation_id = ""
    for command in readme_grpcurl_commands():
        command = command.replace("127.0.0.1:9090", f"127.0.0.1:{port}")
        command = command.replace("$TOKEN", token).replace('"<id from above>"',
                                                           json.dumps(conversation_id))
        out = await run(parse_grpcurl(command))
        outputs.append(out)
        if not conversation_id and "conversation" in out:
            conversation_id = json.loads(out)["conversation"]["id"]
    created = json.loads(outputs[0])["conversation"]
    assert created["memberIds"] == ["alice", "bob"] and created["title"] == "lunch"
    sent = json.loads(outputs[1])["message"]
    assert sent["content"] == "hi bob" and sent["seq"] == "1"
    assert sent["conversationId"] == conversation_id
    assert "chat.v1.ChatService" in outputs[2].splitlines()
    assert "grpc.health.v1.Health" in outputs[2].splitlines()
