"""``chat-bench``: run the benchmark phases, print the tables, write the JSON (and the docs).

    chat-bench                       the whole benchmark on a throwaway stack started here, on
                                     durable commits (PostgreSQL's defaults: fsync,
                                     synchronous_commit, full_page_writes on); the rpc,
                                     throughput and delivery phases run 3 times (--repeat) and
                                     each figure is reported as its median
    chat-bench --quick               fewer calls, shorter phases (a smoke run; used by a test)
    chat-bench --only rpc,delivery   some phases only
    chat-bench --only scaling        the opt-in scaling phase (COPY-loads up to 2,000,000
                                     messages; --scaling-size 0.1 for a tenth of that)
    chat-bench --transport http      every phase's sends and reads over HTTP/JSON (plain HTTP
                                     clients), comparable with any HTTP chat server
    chat-bench --unsafe-fast-db      PostgreSQL with fsync, synchronous_commit and
                                     full_page_writes off, for comparison (labelled "unsafe:
                                     fsync off" in every table)
    chat-bench --pg-setting commit_delay=100 --pg-setting commit_siblings=4
                                     further PostgreSQL settings (group commit, ...)
    chat-bench --grpc H:P --http URL --ws URL --redis-addr H:P --db-source DSN
                                     against a running stack (its settings read from it)
    chat-bench readme                regenerate docs/performance.md's figures from the JSON

The PostgreSQL settings a run measured on are read back from the server, recorded in the JSON
(``database``) and printed with the tables. A phase that fails is recorded with its error and
the others still run; the exit code is then 1. Whether the targets are met never changes the
exit code: the table says it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from chat_bench import database, dataset, machine, medians, report
from chat_bench.clients import TRANSPORT_NAMES, TRANSPORTS
from chat_bench.phase import Context, Phase, run_phase
from chat_bench.phases import PHASES, by_name
from chat_bench.stack import Target, local_stack, raise_fd_limit
from chat_bench.stats import Progress
from chat_shared.config import DEV_JWT_SECRET

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_DOC = ROOT / "docs" / "performance.md"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chat-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=("run", "readme"), default="run")
    p.add_argument("--quick", action="store_true", help="fewer calls, shorter phases")
    p.add_argument("--only", action="append", default=[],
                   help=f"phases to run, comma-separated: {', '.join(ph.name for ph in PHASES)} "
                        "(default: all but the opt-in ones: "
                        f"{', '.join(ph.name for ph in PHASES if not ph.default)})")
    p.add_argument("--repeat", type=int,
                   help="runs of the repeated phases (3; --quick: 1); each figure reported is "
                        "its median across the runs (losses, errors summed)")
    p.add_argument("--transport", choices=TRANSPORTS, default="grpc",
                   help="what every phase's sends and reads go over (default grpc; the rpc "
                        "phase then alternates each call with HTTP/JSON); http: HTTP/JSON only")
    p.add_argument("--clients", type=int, default=2,
                   help="client processes generating load (throughput; delivery uses one)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the result JSON")
    p.add_argument("--readme", nargs="?", const=DEFAULT_DOC, type=Path,
                   help="after the run (or with `readme`), regenerate this document's "
                        "generated section (default: docs/performance.md)")
    for phase in PHASES:
        phase.options(p.add_argument_group(f"the {phase.name} phase: {phase.about}"))
    g = p.add_argument_group("a running stack (default: start one here)")
    g.add_argument("--grpc", help="host:port of chat-api's gRPC listener (not needed with "
                                  "--transport http)")
    g.add_argument("--http", help="base URL of chat-api's HTTP/JSON listener")
    g.add_argument("--ws", help="base URL of chat-ws-gateway (http://host:port)")
    g.add_argument("--db-source", default="",
                   help="PostgreSQL DSN: its version and settings are read and recorded")
    g.add_argument("--redis-addr", default="", help="host:port of Redis (relay lag)")
    g.add_argument("--stream-prefix", default="chat:events")
    g.add_argument("--jwt-secret", default=os.environ.get("JWT_SECRET", DEV_JWT_SECRET))
    g.add_argument("--gateway-pid", type=int, help="the gateway's pid (memory per connection)")
    g.add_argument("--gateway-metrics", default="", help="the gateway's /metrics URL")
    s = p.add_argument_group("the stack started here")
    s.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the services")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the services (default API_WORKERS=<cores, up to 4>)")
    s.add_argument("--unsafe-fast-db", action="store_true",
                   help="PostgreSQL with fsync, synchronous_commit and full_page_writes off: "
                        "a crash may lose committed data; for comparison only, and every "
                        "table says so")
    s.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a PostgreSQL setting for this run (repeatable), e.g. commit_delay=100 "
                        "commit_siblings=4; recorded in the JSON")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase's settings (whichever run), the data set's and the client processes'."""
    cfg: dict[str, Any] = {"clients": max(1, args.clients), **dataset.settings(args.quick)}
    for phase in PHASES:
        cfg.update(phase.settings(args))
    return cfg


def _warm() -> int:
    """Starts a client process and imports what the phases need, before any window opens."""
    import aiohttp  # noqa: F401
    import grpc  # noqa: F401

    time.sleep(0.3)
    return os.getpid()


def _stack(args: argparse.Namespace, pg_settings: dict[str, str],
           extra_env: dict[str, str]) -> Any:
    """The stack to measure, as an async context: given on the command line, or started here."""
    if not (args.grpc or args.http or args.ws):
        return local_stack(args.jwt_secret, args.log_level, extra_env,
                           durable=not args.unsafe_fast_db, pg_settings=pg_settings)
    needed = ["http", "ws", *(["grpc"] if args.transport == "grpc" else [])]
    missing = [f"--{name}" for name in needed if not getattr(args, name)]
    if missing:
        raise SystemExit(f"chat-bench: a running stack needs {', '.join(missing)} too")
    if args.unsafe_fast_db or pg_settings:
        raise SystemExit("chat-bench: --unsafe-fast-db and --pg-setting apply to the "
                         "PostgreSQL started here; a running stack's settings are read from "
                         "it (--db-source)")
    return _given(Target(
        grpc=args.grpc or "", http=args.http.rstrip("/"), ws=args.ws.rstrip("/"),
        jwt_secret=args.jwt_secret, db_source=args.db_source, redis_addr=args.redis_addr,
        stream_prefix=args.stream_prefix, gateway_pid=args.gateway_pid,
        gateway_metrics=args.gateway_metrics))


async def _run(args: argparse.Namespace, phases: list[Phase], pg_settings: dict[str, str],
               progress: Progress) -> dict[str, Any]:
    cfg = _settings(args)
    result: dict[str, Any] = {"mode": "quick" if args.quick else "full",
                              "phases": [p.name for p in phases], "transport": args.transport,
                              "settings": cfg, "errors": {}}
    result["fd_limit"] = raise_fd_limit()
    result["load_before"] = machine.load_average()
    result["machine"] = machine.describe()
    # The API's best setting on a multi-core box: one process per core (SO_REUSEPORT).
    extra_env = {"API_WORKERS": str(min(4, os.cpu_count() or 1)),
                 **dict(kv.split("=", 1) for kv in args.env)}
    stack_cm = _stack(args, pg_settings, extra_env)
    started_here = not (args.grpc or args.http or args.ws)
    if started_here:
        fsync = "off (--unsafe-fast-db)" if args.unsafe_fast_db else "on"
        progress(f"starting the stack: throwaway PostgreSQL (fsync {fsync}), Redis and S3 (moto), "
                 "migrations, chat-api, chat-outbox-relay, chat-ws-gateway ...")
        result["service_env"] = {"LOG_LEVEL": args.log_level, **extra_env}
    result["database"] = {"started_here": started_here, "unsafe_fast_db": args.unsafe_fast_db,
                          "set": pg_settings, "settings": {}}
    started = time.monotonic()
    ctx_spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg["clients"], mp_context=ctx_spawn) as pool:
        loop = asyncio.get_running_loop()
        warm = [loop.run_in_executor(pool, _warm) for _ in range(cfg["clients"])]
        async with stack_cm as target:
            t: Target = target
            result["target"] = {"grpc": t.grpc, "http": t.http, "ws": t.ws,
                                "started_here": t.started_here, "logs": t.log_dir}
            if t.db_source:
                result["database"]["settings"] = await database.read_settings(t.db_source)
            result["machine"]["postgresql"] = result["database"]["settings"].get(
                "server_version", "unknown")
            result["machine"]["redis"] = await machine.redis_version(t.redis_addr)
            await asyncio.gather(*warm)
            progress(f"stack up (logs in {t.log_dir or 'n/a'}); load average "
                     f"{result['load_before']}; {cfg['clients']} client processes ready; "
                     f"transport {TRANSPORT_NAMES[args.transport]}")
            progress(database.settings_line(result["database"]))
            ctx = Context(target=t, settings=cfg, transport=args.transport, clients=pool,
                          client_count=cfg["clients"], progress=progress,
                          errors=result["errors"])
            repeated = [p for p in phases if p.repeated]
            runs: list[dict[str, Any]] = []
            for run_no in range(1, args.repeat + 1):
                if args.repeat > 1 and repeated:
                    progress(f"run {run_no} of {args.repeat}")
                run: dict[str, Any] = {}
                for phase in repeated:
                    await run_phase(phase, ctx, run)
                runs.append(run)
            summary = ctx.dataset_summary()
            if summary is not None:
                result["dataset"] = summary
            result["repeat"] = args.repeat
            summed = medians.SUMMED.union(*(p.summed for p in phases))
            result.update(medians.combine(runs, summed))
            if args.repeat > 1:
                result["runs"] = runs  # each run's own figures, for the record
            for phase in phases:
                if not phase.repeated:
                    await run_phase(phase, ctx, result)
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


def _pg_settings(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs as a dict; ValueError names a malformed one."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"--pg-setting wants NAME=VALUE, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "readme":
        data = json.loads(args.output.read_text())
        doc = args.readme or DEFAULT_DOC
        report.update_section(doc, data)
        print(f"chat-bench: {doc} regenerated from {args.output}")
        return 0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        print("chat-bench: --repeat must be at least 1", file=sys.stderr)
        return 2
    try:
        names = [name for arg in args.only for name in arg.split(",") if name]
        phases = by_name(names) if names else [p for p in PHASES if p.default]
        pg_settings = _pg_settings(args.pg_setting)
    except (KeyError, ValueError) as e:
        print(f"chat-bench: {e.args[0]}", file=sys.stderr)
        return 2
    progress = Progress()
    result = asyncio.run(_run(args, phases, pg_settings, progress))
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
        # From the JSON as written (sorted keys), so that the section is exactly what
        # `chat-bench readme` makes from the committed file.
        report.update_section(args.readme, json.loads(args.output.read_text()))
        print(f"generated section regenerated: {args.readme}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
