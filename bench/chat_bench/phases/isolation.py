"""The isolation phase: one abusive user cannot slow a well-behaved one; what the limiter costs.

It starts two API processes of its own against the stack's PostgreSQL and Redis, one with the
rate limits on and one with them off, and measures (the limits are the defaults except
``send``, raised to 25/s with a burst of 50 so that the well-behaved user's 20 sends/s stay
within its limit; the default 10/s would refuse half of them):

1. **Limiter cost**: sequential GetConversations calls alternating between the two APIs call by
   call (gRPC, then HTTP), so drift on a shared machine hits both alike; the cost is the
   difference of the means. The calls rotate over 20 users so none reaches its read limit
   (every call is an allowed one, with its Redis round trip).
2. **Isolation**: on the API with limits, a well-behaved user sends 20 messages/s (open loop:
   each send starts on schedule, whatever the previous one did) for the window, first alone,
   then while an abusive user sends about 1,000 messages/s (open loop, from a client process
   of its own). The well-behaved user's p50/p99 alone and with the abuser, their ratio, how
   much of the abuser's load was refused, and the API's CPU per abusive call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pathlib
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from chat_bench import cpu
from chat_bench.clients import CallFailed, GrpcApi, Sequential, User, grpc_channel
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_devtools.services import Api, base_env, metric_sum

GOOD_RATE = 20.0
ABUSE_RATE = 1000.0
COST_USERS = 20
WARMUP = 50
RATIO_TARGET = 2.0
COST_TARGET_MS = 0.1
SEND_LIMIT = {"RATE_LIMIT_SEND_RATE": "25", "RATE_LIMIT_SEND_BURST": "50"}
"""The send limit of the API with limits: above the well-behaved user's 20/s."""
IN_FLIGHT_CAP = 2000
"""Abusive calls in flight at most; past it the client skips a beat (counted as skipped)."""


def measure_cost(on: Sequential, off: Sequential, secret: str, calls: int,
                 pids: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Blocks for the whole measurement (run it in a thread). ``pids``: the two APIs' process
    ids ("on", "off"), for the CPU each spends per call (less sensitive than latency to the
    scheduling delays of a busy machine)."""
    users = [User(f"iso-cost-{i:02d}", secret) for i in range(COST_USERS)]
    samples: dict[str, list[float]] = collections.defaultdict(list)
    cpu_before: dict[str, float] = {}
    for i in range(WARMUP + calls):
        if i == WARMUP and pids:
            cpu_before = cpu.snapshot(pids)
        user = users[i % COST_USERS]
        order = [("on", on), ("off", off)] if i % 2 == 0 else [("off", off), ("on", on)]
        for transport in ("grpc", "http"):
            for name, client in order:
                fn = (client.get_conversations_grpc if transport == "grpc"
                      else client.get_conversations_http)
                start = time.perf_counter()
                fn(user, 50)
                if i >= WARMUP:
                    samples[f"{transport}_{name}"].append(time.perf_counter() - start)
    out: dict[str, Any] = {"calls": calls}
    if pids and cpu_before:
        cpu_after = cpu.snapshot(pids)
        per_call = {name: (cpu_after[name] - cpu_before[name]) * 1000 / (2 * calls)
                    for name in ("on", "off") if name in cpu_after and name in cpu_before}
        out["api_cpu_ms_per_call"] = per_call
        if len(per_call) == 2:
            out["added_cpu_ms_per_call"] = per_call["on"] - per_call["off"]
    for transport in ("grpc", "http"):
        s_on, s_off = summarize(samples[f"{transport}_on"]), summarize(samples[f"{transport}_off"])
        out[transport] = {"on": s_on, "off": s_off,
                          "added_mean_ms": s_on["mean_ms"] - s_off["mean_ms"],
                          "added_p50_ms": s_on["p50_ms"] - s_off["p50_ms"]}
    return out


async def _open_loop(api: GrpcApi, user: User, conv: str, rate: float, duration: float,
                     latencies: list[float] | None, outcomes: collections.Counter[str]) -> int:
    """Sends at ``rate`` per second for ``duration`` seconds, each on schedule; returns how
    many were started."""
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    in_flight: set[asyncio.Task[None]] = set()

    async def one() -> None:
        start = time.perf_counter()
        try:
            await api.send(user, conv, "isolation", deadline=10)
            outcomes["OK"] += 1
            if latencies is not None:
                latencies.append(time.perf_counter() - start)
        except CallFailed as e:
            outcomes[e.code] += 1

    start, started = loop.time(), 0
    while started < total:
        due = min(total, int((loop.time() - start) * rate) + 1)
        while started < due:
            if len(in_flight) >= IN_FLIGHT_CAP:
                outcomes["skipped"] += 1
            else:
                task = asyncio.create_task(one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            started += 1
        await asyncio.sleep(min(0.001, 1.0 / rate))
    await asyncio.gather(*in_flight)
    return started


async def _abuse(addr: str, secret: str, conv: str, rate: float, duration: float
                 ) -> dict[str, Any]:
    outcomes: collections.Counter[str] = collections.Counter()
    channel = grpc_channel(addr, own_connection=True)
    try:
        started = time.monotonic()
        count = await _open_loop(GrpcApi(channel), User("iso-abuser", secret), conv, rate,
                                 duration, None, outcomes)
        elapsed = time.monotonic() - started
    finally:
        await channel.close()
    return {"started": count, "seconds": elapsed, "outcomes": dict(outcomes)}


def abuse(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The abusive user, in a client process (module-level: ``run_in_executor`` pickles it)."""
    return asyncio.run(_abuse(spec["addr"], spec["secret"], spec["conv"], spec["rate"],
                              spec["duration"]))


async def _well_behaved(api: GrpcApi, user: User, conv: str, duration: float
                        ) -> dict[str, Any]:
    latencies: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    await _open_loop(api, user, conv, GOOD_RATE, duration, latencies, outcomes)
    return {**summarize(latencies), "outcomes": dict(outcomes)}


async def isolation(ctx: Context, api_proc: Api, duration: float) -> dict[str, Any]:
    secret = ctx.target.jwt_secret
    addr = f"127.0.0.1:{api_proc.grpc_port}"
    good, abuser = User("iso-good", secret), User("iso-abuser", secret)
    channel = grpc_channel(addr, own_connection=True)
    try:
        api = GrpcApi(channel)
        good_conv = await api.create_conversation(good, ["iso-friend"], "isolation")
        abuse_conv = await api.create_conversation(abuser, ["iso-victim"], "abuse")
        ctx.progress(f"isolation: well-behaved user alone, {GOOD_RATE:g} sends/s "
                     f"for {duration:g} s ...")
        alone = await _well_behaved(api, good, good_conv, duration)
        await asyncio.sleep(3.5)  # the abuser starts with a full burst, as a new client would
        ctx.progress(f"isolation: with an abusive user at {ABUSE_RATE:g} sends/s ...")
        spec = {"addr": addr, "secret": secret, "conv": abuse_conv, "rate": ABUSE_RATE,
                "duration": duration + 1.0}
        loop = asyncio.get_running_loop()
        abusing = (loop.run_in_executor(ctx.clients, abuse, spec) if ctx.clients is not None
                   else asyncio.ensure_future(_abuse(addr, secret, abuse_conv, ABUSE_RATE,
                                                     duration + 1.0)))
        await asyncio.sleep(0.5)
        before = cpu.snapshot({"API": api_proc.pid})
        with_abuser = await _well_behaved(api, good, good_conv, duration)
        after = cpu.snapshot({"API": api_proc.pid})
        abused = await abusing
        fail_open = await asyncio.to_thread(_fail_open, api_proc)
    finally:
        await channel.close()
    outcomes = abused["outcomes"]
    attempted = sum(outcomes.values())
    refused = outcomes.get("RESOURCE_EXHAUSTED", 0)
    api_cpu = (after.get("API", 0.0) - before.get("API", 0.0)) if before and after else None
    calls_in_window = ABUSE_RATE * duration + GOOD_RATE * duration
    return {
        "seconds": duration, "alone": alone, "with_abuser": with_abuser,
        "p50_ratio": with_abuser["p50_ms"] / alone["p50_ms"] if alone["p50_ms"] else None,
        "p99_ratio": with_abuser["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else None,
        "abuser": {**abused, "attempted": attempted, "refused": refused,
                   "allowed": outcomes.get("OK", 0),
                   "refused_share": refused / attempted if attempted else None,
                   "achieved_rate": abused["started"] / abused["seconds"]},
        "api_cpu_ms_per_call": (api_cpu * 1000 / calls_in_window
                                if api_cpu is not None else None),
        "fail_open_decisions": fail_open,
    }


def _fail_open(api_proc: Api) -> float:
    """The API's decisions made without Redis (Redis too slow to answer within the timeout)."""
    url = f"http://127.0.0.1:{api_proc.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback, ours
        body = resp.read().decode()
    return sum(metric_sum(body, f'chat_ratelimit_requests_total{{class="{c}",result="fail_open"}}')
               for c in ("send", "read", "write-other"))


async def run(ctx: Context) -> dict[str, Any]:
    t = ctx.target
    if not (t.db_source and t.redis_addr):
        raise RuntimeError("the isolation phase starts API processes of its own: it needs a "
                           "stack started by chat-bench (its PostgreSQL and Redis)")
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="chat-bench-isolation-"))
    env = base_env(t.db_source, t.redis_addr, t.jwt_secret, ENVIRONMENT="development",
                   LOG_LEVEL="WARNING")
    on = Api({**env, "RATE_LIMIT_ENABLED": "true", **SEND_LIMIT}, log_dir, name="api-limits-on",
             metrics=True)
    off = Api({**env, "RATE_LIMIT_ENABLED": "false"}, log_dir, name="api-limits-off")
    try:
        on.start()
        off.start()
        await asyncio.gather(on.ready(), off.ready())
        ctx.progress(f"isolation: limiter cost, {ctx.settings['cost_calls']} sequential calls "
                     f"per API and transport (limits on and off alternating) ...")
        client_on = Sequential(f"127.0.0.1:{on.grpc_port}", on.http_url)
        client_off = Sequential(f"127.0.0.1:{off.grpc_port}", off.http_url)
        try:
            cost = await asyncio.to_thread(measure_cost, client_on, client_off, t.jwt_secret,
                                           ctx.settings["cost_calls"],
                                           {"on": on.pid, "off": off.pid})
        finally:
            client_on.close()
            client_off.close()
        iso = await isolation(ctx, on, ctx.settings["isolation_seconds"])
    finally:
        on.stop()
        off.stop()
    return {"cost": cost, "limits": {k.lower(): v for k, v in SEND_LIMIT.items()}, **iso}


def targets(figures: Mapping[str, Any]) -> list[Check]:
    cost = figures.get("cost") or {}
    abuser = figures.get("abuser") or {}
    share = abuser.get("refused_share")
    return [
        check("well-behaved p99 with / without the abuser", figures.get("p99_ratio"),
              f"<= {RATIO_TARGET:g}x", at_most(RATIO_TARGET), "x"),
        check("abuser's load refused", share * 100 if share is not None else None,
              ">= 95 %", lambda v: v >= 95, "%"),
        check("limiter cost per call (mean, gRPC)",
              (cost.get("grpc") or {}).get("added_mean_ms"), f"<= {COST_TARGET_MS:g} ms",
              at_most(COST_TARGET_MS), "ms"),
        check("limiter cost per call (mean, HTTP)",
              (cost.get("http") or {}).get("added_mean_ms"), f"<= {COST_TARGET_MS:g} ms",
              at_most(COST_TARGET_MS), "ms"),
        check("limiter CPU per call in the API", cost.get("added_cpu_ms_per_call"),
              f"<= {COST_TARGET_MS:g} ms", at_most(COST_TARGET_MS), "ms"),
    ]


def details(figures: Mapping[str, Any]) -> list[str]:
    alone, abused = figures["alone"], figures["with_abuser"]
    ab = figures["abuser"]
    cost = figures["cost"]
    rows = [[name, *(fmt(s.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))]
            for name, s in (("alone", alone), ("with the abuser", abused))]
    cost_rows = [[t.upper() if t == "http" else "gRPC",
                  fmt(cost[t]["off"]["mean_ms"]), fmt(cost[t]["on"]["mean_ms"]),
                  fmt(cost[t]["added_mean_ms"]), fmt(cost[t]["added_p50_ms"])]
                 for t in ("grpc", "http")]
    share = ab.get("refused_share")
    return [
        f"A well-behaved user sending {GOOD_RATE:g} messages/s (open loop, gRPC) for "
        f"{figures['seconds']:g} s, alone and while an abusive user sends "
        f"{ab['achieved_rate']:.0f}/s (asked {ABUSE_RATE:g}/s), rate limits on (send 25/s, "
        f"burst 50; the rest their defaults), ms; the well-behaved user's answers: alone "
        f"{alone.get('outcomes')}, with the abuser {abused.get('outcomes')}:", "",
        *table(["well-behaved user", "p50", "p95", "p99", "max"], rows), "",
        f"p50 ratio {fmt(figures.get('p50_ratio'))}x, p99 ratio "
        f"{fmt(figures.get('p99_ratio'))}x. The abuser's {ab['attempted']} calls: "
        f"{ab['allowed']} allowed, {ab['refused']} refused "
        f"({(share or 0) * 100:.1f} %), others {ab['outcomes']}; the API's CPU per call "
        f"in that window {fmt(figures.get('api_cpu_ms_per_call'))} ms; decisions made without "
        f"Redis (it did not answer within 50 ms) in the whole phase: "
        f"{fmt(figures.get('fail_open_decisions'))}.", "",
        f"Limiter cost: {cost['calls']} sequential GetConversations per API and transport, "
        f"limits off and on alternating call by call, ms:", "",
        *table(["transport", "mean off", "mean on", "added (mean)", "added (p50)"], cost_rows),
        "", f"The APIs' CPU per call over those calls (both transports): limits off "
        f"{fmt((cost.get('api_cpu_ms_per_call') or {}).get('off'))} ms, on "
        f"{fmt((cost.get('api_cpu_ms_per_call') or {}).get('on'))} ms, added "
        f"{fmt(cost.get('added_cpu_ms_per_call'))} ms.",
    ]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--isolation-seconds", type=float,
                       help="seconds of each isolation window (15)")
    group.add_argument("--cost-calls", type=int,
                       help="sequential calls per API and transport for the limiter's cost "
                            "(2000)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.isolation_seconds or (3.0 if args.quick else 15.0)
    calls = args.cost_calls or (100 if args.quick else 2000)
    return {"isolation_seconds": seconds, "cost_calls": calls}


PHASE = Phase(
    name="isolation",
    about="one user at 1,000 req/s beside one at 20/s (rate limits on), and the limiter's cost",
    run=run, targets=targets, details=details, options=_options, settings=_settings,
    repeated=False)
