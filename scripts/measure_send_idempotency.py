"""SendMessage with and without a Redis reservation in front of the database's constraint.

Runs the API of each given git revision (``WORKTREE`` = the working tree) as a subprocess
against the same throwaway PostgreSQL and Redis, and sends through each in turn, alternating
the order every round so that the machine's noise falls on both alike:

- ``new``: sequential sends, each with a fresh idempotency key (what almost every send is);
- ``retry``: each of those keys sent again (ALREADY_EXISTS naming the original).

Per variant and case it prints the median over rounds of each round's median and p99 latency
(client side, gRPC) and of the API process's CPU per call (utime + stime from /proc), with the
spread of the round medians as the noise, and each round's difference from the first variant
(both ran back to back in that round, so the machine's drift cancels). PostgreSQL runs as the
test fixtures run it (fsync off), which makes a Redis round trip the largest possible share of
a send.

Usage: uv run python scripts/measure_send_idempotency.py --rev main --rev WORKTREE
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
import uuid

import grpc

from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis
from chat_devtools.services import BIN, Api, base_env
from chat_shared.auth import issue_token
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECRET = "measure-secret-that-is-long-enough-for-hs256"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def export(rev: str, into: pathlib.Path) -> pathlib.Path:
    """The source tree of ``rev`` (``WORKTREE``: this checkout as it is) under ``into``."""
    if rev == "WORKTREE":
        return ROOT
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "shared", "services"],
                             check=True, capture_output=True).stdout
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Variant:
    def __init__(self, rev: str, api: Api, stub: chat_pb2_grpc.ChatServiceStub,
                 conversation_id: str) -> None:
        self.rev = rev
        self.api = api
        self.stub = stub
        self.conversation_id = conversation_id
        self.rounds: dict[str, list[tuple[float, float, float]]] = {"new": [], "retry": []}

    async def run(self, case: str, keys: list[str]) -> None:
        meta = (("authorization", f"Bearer {issue_token('alice', secret=SECRET)}"),)
        latencies = []
        cpu0 = cpu_seconds(self.api.pid)
        for key in keys:
            request = chat_pb2.SendMessageRequest(conversation_id=self.conversation_id,
                                                  content="hello", idempotency_key=key)
            start = time.perf_counter()
            try:
                await self.stub.SendMessage(request, metadata=meta, timeout=10)
                ok = case == "new"
            except grpc.aio.AioRpcError as err:
                ok = case == "retry" and err.code() == grpc.StatusCode.ALREADY_EXISTS
            latencies.append(time.perf_counter() - start)
            if not ok:
                raise RuntimeError(f"{self.rev}: unexpected answer in case {case}")
        cpu = cpu_seconds(self.api.pid) - cpu0
        self.rounds[case].append((statistics.median(latencies), quantile(latencies, 0.99),
                                  cpu / len(keys)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", action="append", required=True,
                        help="a git revision, or WORKTREE (give two or more)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=500, help="sends per case and round")
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="chat-measure-"))
    pg, redis = LocalPostgres().start(), LocalRedis().start()
    variants: list[Variant] = []
    channels: list[grpc.aio.Channel] = []
    print(f"load average at start: {os.getloadavg()}, cores: {os.cpu_count()}")
    try:
        for i, rev in enumerate(args.rev):
            dsn = pg.create_database(f"v{i}")
            subprocess.run([str(BIN / "chat-migrate")],  # noqa: ASYNC221 (set-up, not measured)
                           env={**os.environ, "DB_SOURCE": dsn}, check=True, capture_output=True)
            tree = export(rev, work / f"v{i}")
            env = base_env(dsn, redis.addr, SECRET, LOG_LEVEL="WARNING", REDIS_TIMEOUT="0.5",
                           PYTHONPATH=f"{tree / 'shared'}:{tree / 'services' / 'api'}")
            logs = work / f"logs{i}"
            logs.mkdir()
            api = Api(env, logs).start()
            await asyncio.to_thread(api.wait_ready)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}")
            channels.append(channel)
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            meta = (("authorization", f"Bearer {issue_token('alice', secret=SECRET)}"),)
            conv = await stub.CreateConversation(
                chat_pb2.CreateConversationRequest(member_ids=["bob"]), metadata=meta)
            variants.append(Variant(rev, api, stub, conv.conversation.id))
        for v in variants:  # warm-up: connections, prepared statements
            keys = [uuid.uuid4().hex for _ in range(200)]
            await v.run("new", keys)
            await v.run("retry", keys)
            v.rounds = {"new": [], "retry": []}
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                keys = [uuid.uuid4().hex for _ in range(args.calls)]
                await v.run("new", keys)
                await v.run("retry", keys)
        print(f"load average at end: {os.getloadavg()}")
        print(f"{args.rounds} rounds x {args.calls} sequential calls per case; median of the"
              " round figures [min..max of the rounds]")
        for v in variants:
            for case, rounds in v.rounds.items():
                p50s, p99s, cpus = (sorted(x[i] for x in rounds) for i in range(3))
                print(f"{v.rev[:12]:>12} {case:>5}: "
                      f"p50 {statistics.median(p50s) * 1e3:.3f} ms "
                      f"[{p50s[0] * 1e3:.3f}..{p50s[-1] * 1e3:.3f}]  "
                      f"p99 {statistics.median(p99s) * 1e3:.3f} ms "
                      f"[{p99s[0] * 1e3:.3f}..{p99s[-1] * 1e3:.3f}]  "
                      f"cpu {statistics.median(cpus) * 1e6:.0f} us/call "
                      f"[{cpus[0] * 1e6:.0f}..{cpus[-1] * 1e6:.0f}]")
        base = variants[0]
        for v in variants[1:]:
            print(f"paired by round, {v.rev[:12]} minus {base.rev[:12]}"
                  " (rounds where it is lower):")
            for case in ("new", "retry"):
                pairs = list(zip(v.rounds[case], base.rounds[case], strict=True))
                d50 = [a[0] - b[0] for a, b in pairs]
                dcpu = [a[2] - b[2] for a, b in pairs]
                print(f"  {case:>5}: p50 {statistics.median(d50) * 1e3:+.3f} ms "
                      f"({sum(d < 0 for d in d50)}/{len(pairs)})  "
                      f"cpu {statistics.median(dcpu) * 1e6:+.0f} us/call "
                      f"({sum(d < 0 for d in dcpu)}/{len(pairs)})")
    finally:
        for channel in channels:
            await channel.close()
        for v in variants:
            v.api.stop()
        redis.cleanup()
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
