"""README's run command (`chat-dev`, what `./dev run` execs): the whole stack from nothing.

Starts with DB_SOURCE and REDIS_ADDR unset, so chat-dev starts its own PostgreSQL and Redis;
every port is moved by CHAT_DEV_PORT_OFFSET to free ones. A message posted to the HTTP API
reaches a member's WebSocket through the relay; Ctrl-C stops everything and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
import uuid

import aiohttp

from chat_shared.auth import issue_token
from chat_shared.config import DEV_JWT_SECRET
from chat_shared.devstack import _port_free

PORTS = (9090, 8080, 8081, 9100, 9101, 9102)


def _free_offset() -> int:
    for _ in range(50):
        offset = random.randrange(20000, 40000)
        if all(_port_free(p + offset) for p in PORTS):
            return offset
    raise AssertionError("no free block of ports")


class Output:
    """Collects the process's output lines on a thread (bounded waits, no blocking reads)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(self.lines[-40:])
            await asyncio.sleep(0.1)


async def test_chat_dev_runs_the_whole_stack_and_stops_on_ctrl_c(venv_bin):
    offset = _free_offset()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DB_SOURCE", "REDIS_ADDR", "JWT_SECRET", "ENVIRONMENT")}
    env["CHAT_DEV_PORT_OFFSET"] = str(offset)
    proc = subprocess.Popen([str(venv_bin / "chat-dev")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out = Output(proc)
    try:
        await out.wait_for("chat-dev: running", 120)
        assert any(f"127.0.0.1:{9090 + offset}" in line for line in out.lines)
        http, ws = f"http://127.0.0.1:{8080 + offset}", f"http://127.0.0.1:{8081 + offset}"
        alice = {"Authorization": f"Bearer {issue_token('alice', secret=DEV_JWT_SECRET)}"}
        bob = issue_token("bob", secret=DEV_JWT_SECRET)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            conv, last = "", "nothing"
            while not conv:  # the services start after the "running" line
                try:
                    async with session.post(f"{http}/v1/conversations", headers=alice,
                                            json={"member_ids": ["bob"]}) as resp:
                        last = f"HTTP {resp.status}"
                        if resp.status == 200:
                            conv = (await resp.json())["conversation"]["id"]
                except aiohttp.ClientConnectionError as exc:
                    last = type(exc).__name__
                assert conv or time.monotonic() < deadline, f"API: {last}"
                await asyncio.sleep(0.3)
            async with session.ws_connect(f"{ws}/v1/ws",
                                          headers={"Authorization": f"Bearer {bob}"}) as sock:
                await sock.send_json({"type": "resume", "positions": {}})
                async with session.post(f"{http}/v1/messages", headers=alice, json={
                        "conversation_id": conv, "content": "via chat-dev",
                        "idempotency_key": uuid.uuid4().hex}) as resp:
                    assert resp.status == 200, await resp.text()
                frame = None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    msg = await sock.receive_json(timeout=30)
                    if msg.get("type") == "message.created":
                        frame = msg
                        break
                assert frame is not None and frame["message"]["content"] == "via chat-dev"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        assert proc.wait(60) == 0, "\n".join(out.lines[-40:])
        await out.wait_for("chat-dev: stopped", 5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
