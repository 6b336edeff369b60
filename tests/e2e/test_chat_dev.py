"""README's run command (`chat-dev`, what `./dev run` execs): the whole stack from nothing.

Starts with DB_SOURCE, REDIS_ADDR and S3_ENDPOINT unset, so chat-dev starts its own PostgreSQL,
Redis and S3 server (attachments work);
every port is moved by CHAT_DEV_PORT_OFFSET. "running" is printed only once every service
answers; a message posted to the HTTP API reaches a member's WebSocket through the relay; a
relay killed with SIGKILL is restarted (and the log says so) while the rest keeps running;
Ctrl-C stops everything and exits 0. A taken port is named before anything starts.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import re
import signal
import socket
import time
import uuid

import aiohttp
import pytest

from chat_devtools.ports import retry_on_port_in_use
from chat_devtools.process import ServiceProcess, printed
from chat_shared.auth import issue_token
from chat_shared.config import DEV_JWT_SECRET


def chat_dev(venv_bin, offset: int) -> ServiceProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DB_SOURCE", "REDIS_ADDR", "JWT_SECRET", "ENVIRONMENT")}
    env["CHAT_DEV_PORT_OFFSET"] = str(offset)
    # SIGINT: what Ctrl-C sends it.
    return ServiceProcess("chat-dev", [venv_bin / "chat-dev"], env=env,
                          ready=printed("chat-dev: running"), stop_signal=signal.SIGINT,
                          grace=60)


def start_stack(venv_bin) -> tuple[ServiceProcess, int]:
    """chat-dev running on a block of ports below the ephemeral range; another block when
    chat-dev finds one of them taken (its own check, or a service's bind)."""
    def attempt() -> tuple[ServiceProcess, int]:
        offset = random.randrange(11000, 23000)  # ports 19080-32102
        proc = chat_dev(venv_bin, offset).start()
        try:
            proc.wait_ready(180, attempts=1)
        except BaseException:
            proc.stop()
            raise
        return proc, offset

    return retry_on_port_in_use(attempt)


async def wait_for_line(proc: ServiceProcess, pattern: str, within: float) -> re.Match[str]:
    deadline = time.monotonic() + within
    while True:
        found = re.search(pattern, proc.output())
        if found:
            return found
        assert proc.running, f"chat-dev exited:\n{proc.log()}"
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{proc.log()}"
        await asyncio.sleep(0.1)


async def post_and_receive(session: aiohttp.ClientSession, http: str, conv: str,
                           sock: aiohttp.ClientWebSocketResponse, content: str) -> None:
    alice = {"Authorization": f"Bearer {issue_token('alice', secret=DEV_JWT_SECRET)}"}
    async with session.post(f"{http}/v1/messages", headers=alice, json={
            "conversation_id": conv, "content": content,
            "idempotency_key": uuid.uuid4().hex}) as resp:
        assert resp.status == 200, await resp.text()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = await sock.receive_json(timeout=30)
        if msg.get("type") == "message.created":
            assert msg["message"]["content"] == content
            return
    raise AssertionError(f"{content!r} did not reach the socket")


@pytest.mark.slow
async def test_chat_dev_runs_the_stack_restarts_a_crashed_service_and_stops_on_ctrl_c(venv_bin):
    proc, offset = start_stack(venv_bin)
    try:
        assert f"127.0.0.1:{9090 + offset}" in proc.output()
        assert "with fsync=off: a crash loses data" in proc.output()  # said before it is used
        # Its Redis keeps the streams in an append-only file (the tests' own Redis does not).
        redis_dir = re.search(r"append-only file in (\S+)\)", proc.output()).group(1)
        assert list(pathlib.Path(redis_dir).rglob("*.aof")), os.listdir(redis_dir)
        http, ws = f"http://127.0.0.1:{8080 + offset}", f"http://127.0.0.1:{8081 + offset}"
        alice = {"Authorization": f"Bearer {issue_token('alice', secret=DEV_JWT_SECRET)}"}
        bob = issue_token("bob", secret=DEV_JWT_SECRET)
        async with aiohttp.ClientSession() as session:
            # "running" means ready: the first call is answered, no retrying.
            async with session.post(f"{http}/v1/conversations", headers=alice,
                                    json={"member_ids": ["bob"]}) as resp:
                assert resp.status == 200, await resp.text()
                conv = (await resp.json())["conversation"]["id"]
            assert "S3 on http://127.0.0.1:" in proc.output()
            async with session.post(f"{http}/v1/conversations/{conv}/uploads", headers=alice,
                                    json={"filename": "a.pdf", "content_type": "application/pdf",
                                          "size_bytes": "5"}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["method"] == "POST"
            async with session.ws_connect(f"{ws}/v1/ws",
                                          headers={"Authorization": f"Bearer {bob}"}) as sock:
                await sock.send_json({"type": "resume", "positions": {}})
                await post_and_receive(session, http, conv, sock, "via chat-dev")

                relay_pid = int((await wait_for_line(proc, r"chat-dev: relay ready \(pid (\d+)\)",
                                               5)).group(1))
                os.kill(relay_pid, signal.SIGKILL)
                await wait_for_line(proc, r"chat-dev: relay exited with code -9; restarting in 1s "
                                          r"\(restart 1\)", 30)
                again = int((await wait_for_line(
                    proc, r"chat-dev: relay ready again \(pid (\d+)\)", 60)).group(1))
                assert again != relay_pid
                # The API and the gateway kept running: the same socket gets the next message.
                await post_and_receive(session, http, conv, sock, "after the restart")
        proc.signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0, proc.log()
        assert "chat-dev: stopped" in proc.output()
    finally:
        proc.stop()


def listening_block() -> tuple[socket.socket, int]:
    """A listening socket on a port that is the API's HTTP port of some valid offset."""
    for _ in range(20):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        offset = sock.getsockname()[1] - 8080
        if offset <= 50000 and 9102 + offset < 65536:
            sock.listen()
            return sock, offset
        sock.close()
    pytest.fail("no port of the kernel's choice fits CHAT_DEV_PORT_OFFSET's range")


def test_a_taken_port_is_named_before_anything_starts(venv_bin):
    sock, offset = listening_block()
    with sock, chat_dev(venv_bin, offset) as proc:
        assert proc.wait(60) == 1
        out = proc.output()
    assert f"127.0.0.1:{8080 + offset} (api HTTP)" in out
    assert "CHAT_DEV_PORT_OFFSET=10000 ./dev run" in out
    assert "PostgreSQL" not in out and "migrations" not in out  # nothing was started


def test_a_bad_port_offset_exits_2_naming_the_variable(venv_bin):
    with ServiceProcess("chat-dev", [venv_bin / "chat-dev"],
                        env={**os.environ, "CHAT_DEV_PORT_OFFSET": "ten"}) as proc:
        assert proc.wait(30) == 2
        assert "CHAT_DEV_PORT_OFFSET" in proc.output("stderr")
