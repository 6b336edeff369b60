"""``chat-bench``: run the benchmark phases, print the table, write the JSON (and README).

    chat-bench                       the whole benchmark on a throwaway stack started here;
                                     rpc, throughput and delivery run 3 times (--repeat) and
                                     each figure is reported as its median
    chat-bench --quick               fewer calls, shorter phases (a smoke run; used by a test)
    chat-bench --only rpc,delivery   some phases only (rpc, throughput, delivery, idle)
    chat-bench --grpc H:P --http URL --ws URL --redis-addr H:P   against a running stack
    chat-bench readme                regenerate README's Performance section from the JSON

A phase that fails is recorded with its error and the others still run; the exit code is then 1.
Whether the targets are met never changes the exit code: the table says it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from chat_bench import dataset, delivery, idle, machine, medians, report, rpc_latency, throughput
from chat_bench.clients import Api, Sequential, grpc_channel
from chat_bench.stack import Target, local_stack, raise_fd_limit
from chat_bench.stats import Progress
from chat_shared.config import DEV_JWT_SECRET

PHASES = ("rpc", "throughput", "delivery", "idle")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chat-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=("run", "readme"), default="run")
    p.add_argument("--quick", action="store_true", help="fewer calls, shorter phases")
    p.add_argument("--only", action="append", default=[],
                   help=f"phases to run, comma-separated: {', '.join(PHASES)} (default: all)")
    p.add_argument("--calls", type=int, help="sequential calls per RPC and transport (500)")
    p.add_argument("--repeat", type=int,
                   help="runs of the rpc, throughput and delivery phases (3; --quick: 1); each "
                        "figure reported is its median across the runs (losses, errors summed)")
    p.add_argument("--concurrency", default="16,64", help="throughput runs (comma list)")
    p.add_argument("--duration", type=float, help="seconds per throughput run (15)")
    p.add_argument("--clients", type=int, default=2, help="client processes for throughput")
    p.add_argument("--rate", type=float, help="messages/s of the delivery phase (500)")
    p.add_argument("--delivery-duration", type=float, help="seconds of the delivery phase (15)")
    p.add_argument("--receivers", type=int, default=2,
                   help="receiving members per conversation in the delivery phase")
    p.add_argument("--idle", type=int, help="idle connections to open (10000)")
    p.add_argument("--idle-timeout", type=float, default=180.0,
                   help="at most this many seconds for opening the idle connections")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the result JSON")
    p.add_argument("--readme", nargs="?", const=ROOT / "README.md", type=Path,
                   help="after the run (or with `readme`), regenerate this README's section")
    g = p.add_argument_group("a running stack (default: start one here)")
    g.add_argument("--grpc", help="host:port of chat-api's gRPC listener")
    g.add_argument("--http", help="base URL of chat-api's HTTP/JSON listener")
    g.add_argument("--ws", help="base URL of chat-ws-gateway (http://host:port)")
    g.add_argument("--db-source", default="", help="PostgreSQL DSN (only for its version)")
    g.add_argument("--redis-addr", default="", help="host:port of Redis (relay lag)")
    g.add_argument("--stream-prefix", default="chat:events")
    g.add_argument("--jwt-secret", default=os.environ.get("JWT_SECRET", DEV_JWT_SECRET))
    g.add_argument("--gateway-pid", type=int, help="the gateway's pid (memory per connection)")
    g.add_argument("--gateway-metrics", default="", help="the gateway's /metrics URL")
    s = p.add_argument_group("the stack started here")
    s.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the services")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the services (default API_WORKERS=<cores, up to 4>)")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    calls = pick(args.calls, 500, 40)
    return {
        "calls": calls, "concurrency": [int(c) for c in args.concurrency.split(",") if c],
        "duration": pick(args.duration, 15.0, 2.0), "clients": max(1, args.clients),
        "rate": pick(args.rate, 500.0, 100.0),
        "delivery_duration": pick(args.delivery_duration, 15.0, 2.0),
        "delivery_conversations": 20 if quick else 100, "receivers": args.receivers,
        "idle": pick(args.idle, 10_000, 200), "idle_timeout": args.idle_timeout,
        "users": 200 if quick else 1000, "other_conversations": 20 if quick else 250,
        "messages_per_conversation": 3 if quick else 8,
        # every MarkAsRead (warm-up included, both transports, every run) moves one forward
        "read_messages": 2 * (calls + rpc_latency.WARMUP) * max(1, args.repeat) + 10,
    }


def _warm() -> int:
    """Starts a client process and imports what the phases need, before any window opens."""
    import grpc  # noqa: F401

    time.sleep(0.3)
    return os.getpid()


async def _run(args: argparse.Namespace, phases: list[str], progress: Progress) -> dict[str, Any]:
    cfg = _settings(args)
    result: dict[str, Any] = {"mode": "quick" if args.quick else "full", "phases": phases,
                              "settings": cfg, "errors": {}}
    result["fd_limit"] = raise_fd_limit()
    result["load_before"] = machine.load_average()
    result["machine"] = machine.describe()
    # The API's best setting on a multi-core box: one process per core (SO_REUSEPORT).
    extra_env = {"API_WORKERS": str(min(4, os.cpu_count() or 1)),
                 **dict(kv.split("=", 1) for kv in args.env)}
    if args.grpc:
        if not (args.http and args.ws):
            raise SystemExit("chat-bench: --grpc needs --http and --ws too")
        stack_cm: Any = _given(Target(
            grpc=args.grpc, http=args.http.rstrip("/"), ws=args.ws.rstrip("/"),
            jwt_secret=args.jwt_secret, db_source=args.db_source, redis_addr=args.redis_addr,
            stream_prefix=args.stream_prefix, gateway_pid=args.gateway_pid,
            gateway_metrics=args.gateway_metrics))
    else:
        progress("starting the stack: throwaway PostgreSQL and Redis, migrations, chat-api, "
                 "chat-outbox-relay, chat-ws-gateway ...")
        stack_cm = local_stack(args.jwt_secret, args.log_level, extra_env)
        result["service_env"] = {"LOG_LEVEL": args.log_level, **extra_env}
    started = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg["clients"], mp_context=ctx) as pool:
        loop = asyncio.get_running_loop()
        warm = [loop.run_in_executor(pool, _warm) for _ in range(cfg["clients"])]
        async with stack_cm as target:
            t: Target = target
            result["target"] = {"grpc": t.grpc, "http": t.http, "ws": t.ws,
                                "started_here": t.started_here, "logs": t.log_dir}
            result["machine"].update(await machine.server_versions(t.db_source, t.redis_addr))
            await asyncio.gather(*warm)
            progress(f"stack up (logs in {t.log_dir or 'n/a'}); load average "
                     f"{result['load_before']}; {cfg['clients']} client processes ready")
            ds = None
            runs: list[dict[str, Any]] = []
            for run_no in range(1, args.repeat + 1):
                if args.repeat > 1:
                    progress(f"run {run_no} of {args.repeat}")
                run: dict[str, Any] = {"errors": {}}
                async with grpc_channel(t.grpc) as channel:
                    api = Api(channel)
                    if ds is None and ("rpc" in phases or "throughput" in phases):
                        ds = await dataset.load(
                            api, t.jwt_secret, users=cfg["users"],
                            other_conversations=cfg["other_conversations"],
                            messages_per_conversation=cfg["messages_per_conversation"],
                            read_messages=cfg["read_messages"], progress=progress)
                        result["dataset"] = {"users": ds.users,
                                             "conversations": len(ds.conversations),
                                             "messages": ds.messages}
                    if "rpc" in phases and ds is not None:
                        client = Sequential(t.grpc, t.http)
                        try:
                            await _phase(run, "rpc", asyncio.to_thread(
                                rpc_latency.measure, client, ds, t.jwt_secret, cfg["calls"],
                                progress))
                        finally:
                            client.close()
                if "throughput" in phases and ds is not None:
                    run["throughput"] = {}
                    # Not the read conversation: a send there by bench-user would move its
                    # read position, which the next run's MarkAsRead calls count on.
                    spread = [c for c in ds.conversations if c[0] != ds.read_conversation]
                    for c in cfg["concurrency"]:
                        await _phase(run["throughput"], f"c{c}", throughput.measure(
                            pool, cfg["clients"], t.grpc, t.jwt_secret, spread, c,
                            cfg["duration"], progress), errors=run["errors"])
                if "delivery" in phases:
                    await _phase(run, "delivery", delivery.measure(
                        pool, t.grpc, t.ws, t.redis_addr, t.stream_prefix, t.jwt_secret,
                        cfg["rate"], cfg["delivery_duration"], cfg["delivery_conversations"],
                        cfg["receivers"], 15.0, progress))
                runs.append(run)
            for run in runs:
                for name, error in run.pop("errors").items():
                    result["errors"][name] = error
            result["repeat"] = args.repeat
            result.update(medians.combine(runs))
            if args.repeat > 1:
                result["runs"] = runs  # each run's own figures, for the record
            if "idle" in phases:
                await _phase(result, "idle", idle.measure(
                    t.ws, t.jwt_secret, cfg["idle"], cfg["idle_timeout"], t.gateway_pid,
                    t.gateway_metrics, progress))
            progress("stopping the stack ..." if t.started_here else "done")
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    result["load_after"] = machine.load_average()
    result["targets"] = [c.__dict__ for c in report.checks(result)]
    return result


class _given:
    """A running stack as an async context (nothing to start or stop)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    async def __aenter__(self) -> Target:
        return self.target

    async def __aexit__(self, *exc: object) -> None:
        return None


async def _phase(into: dict[str, Any], name: str, work: Any,
                 errors: dict[str, str] | None = None) -> None:
    try:
        into[name] = await work
    except Exception as e:  # a phase's failure is a result too; the others still run
        traceback.print_exc()
        (errors if errors is not None else into["errors"])[name] = f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "readme":
        data = json.loads(args.output.read_text())
        readme = args.readme or ROOT / "README.md"
        report.update_readme(readme, data)
        print(f"chat-bench: {readme} Performance section regenerated from {args.output}")
        return 0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        print("chat-bench: --repeat must be at least 1", file=sys.stderr)
        return 2
    phases = [p for arg in args.only for p in arg.split(",") if p] or list(PHASES)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        print(f"chat-bench: unknown phase(s) {unknown}; choose from {PHASES}", file=sys.stderr)
        return 2
    progress = Progress()
    result = asyncio.run(_run(args, phases, progress))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print()
    print(report.machine_line(result))
    print()
    print("\n".join(report.render(result)))
    if result["errors"]:
        print(f"\nphases that failed: {result['errors']}")
    print(f"\nwritten: {args.output}")
    if args.readme:
        report.update_readme(args.readme, result)
        print(f"README section regenerated: {args.readme}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
