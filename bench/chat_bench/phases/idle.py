"""The idle phase: idle WebSocket connections held by one gateway process, and its memory per
connection.

The sockets are opened by a separate client process (``chat_bench.phases.idle_client``) so
that each side has its own file-descriptor limit (both raised to the hard limit); each socket
is a different user that sends its resume frame, like a real client, then stays quiet. After a
settle time the gateway's RSS growth is divided by the connections still open, and the
gateway's own ``ws_connections`` gauge is read to confirm it holds them all. It runs once,
after the repeated phases (thousands of sockets would disturb them).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from chat_bench.phase import Check, Context, Phase, at_least, check
from chat_devtools.services import metric_sum

SETTLE = 3.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _fetch(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return await resp.text()


async def measure(ws_url: str, secret: str, count: int, within: float, gateway_pid: int | None,
                  gateway_metrics: str, progress: Callable[[str], None]) -> dict[str, Any]:
    base = rss_kib(gateway_pid) if gateway_pid else 0
    progress(f"idle connections: opening {count} sockets (1 client process, at most "
             f"{within:g} s) ...")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat_bench.phases.idle_client", f"{ws_url}/v1/ws", secret,
        str(count), str(within), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    opened = failed = 0
    started = time.monotonic()
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), within + 60)).decode()
            if not line:
                raise RuntimeError("the idle client exited early")
            fields = line.split()
            opened, failed = int(fields[1]), int(fields[2])
            if fields[0] == "READY":
                break
            progress(f"idle connections: {opened} open, {failed} failed")
        open_s = time.monotonic() - started
        await asyncio.sleep(SETTLE)
        rss = rss_kib(gateway_pid) if gateway_pid else 0
        held = metric_sum(await _fetch(gateway_metrics), "ws_connections") \
            if gateway_metrics else None
        proc.stdin.write(b"count\n")
        await proc.stdin.drain()
        still_open = int((await asyncio.wait_for(proc.stdout.readline(), 60)).split()[1])
    finally:
        if proc.returncode is None:
            proc.stdin.write(b"close\n")
            await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 120)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    connections = min(still_open, int(held)) if held is not None else still_open
    out: dict[str, Any] = {
        "target": count, "opened": opened, "failed": failed, "still_open": still_open,
        "gateway_ws_connections": held, "connections": connections,
        "open_seconds": round(open_s, 1), "client_processes": 1}
    if gateway_pid:
        out.update({"gateway_rss_before_mib": round(base / 1024, 1),
                    "gateway_rss_after_mib": round(rss / 1024, 1),
                    "kib_per_connection": round((rss - base) / max(1, connections), 1)})
    return out


async def run(ctx: Context) -> dict[str, Any]:
    t = ctx.target
    return await measure(t.ws, t.jwt_secret, ctx.settings["idle"], ctx.settings["idle_timeout"],
                         t.gateway_pid, t.gateway_metrics, ctx.progress)


def targets(figures: Mapping[str, Any]) -> list[Check]:
    return [check("idle WebSockets held by one gateway", figures.get("connections"),
                  ">= 10,000", at_least(10_000))]


def details(idle: Mapping[str, Any]) -> list[str]:
    mem = (f"; gateway RSS {idle['gateway_rss_before_mib']:g} -> "
           f"{idle['gateway_rss_after_mib']:g} MiB, {idle['kib_per_connection']:g} KiB per "
           "connection" if "kib_per_connection" in idle else "")
    return [f"Idle WebSockets: {idle['connections']:,} of {idle['target']:,} held by one "
            f"gateway process (opened in {idle['open_seconds']:g} s, {idle['failed']} "
            f"failed){mem}."]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--idle", type=int, help="idle connections to open (10000)")
    group.add_argument("--idle-timeout", type=float, default=180.0,
                       help="at most this many seconds for opening the idle connections")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    count = args.idle if args.idle is not None else (200 if args.quick else 10_000)
    return {"idle": count, "idle_timeout": args.idle_timeout}


PHASE = Phase(
    name="idle", about="idle WebSockets held by one gateway, and its memory per connection",
    run=run, targets=targets, details=details, options=_options, settings=_settings,
    repeated=False)
