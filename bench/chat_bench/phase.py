"""What a benchmark phase is, and what it runs with.

A phase is one module of ``chat_bench.phases`` ending in ``PHASE = Phase(...)``: its name (for
``--only``, and the key of its figures in the JSON), its options and settings, how it runs,
the targets it judges its own figures against, and how its figures read in the report.
``chat_bench.phases.PHASES`` lists the phases in the order they run. Everything around a
phase is generic and lives elsewhere:

- ``--repeat`` runs every ``repeated`` phase that many times, and ``medians`` reduces the runs
  to one result (each number its median; the counts in ``summed`` added up);
- the targets table judges each target on the median and shows every run's own figure in its
  "each run" column (``report``);
- a phase that raises is recorded in the result's ``errors`` and the others still run;
- the PostgreSQL settings, the transport and the machine are printed with every table.

docs/performance.md ("Adding a phase") walks through a minimal phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import traceback
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from chat_bench.clients import AsyncApi, User, open_api
from chat_bench.database import analyze
from chat_bench.dataset import Dataset, load_dataset
from chat_bench.stack import Target


@dataclass
class Check:
    """One target with the figure a run measured for it."""

    figure: str
    value: float | None
    target: str
    met: bool | None  # None: not measured in this run
    unit: str = ""


def check(figure: str, value: Any, target: str, ok: Callable[[float], bool],
          unit: str = "") -> Check:
    """A target's verdict: ``ok(value)`` when ``value`` was measured (a number, not NaN).

    Args:
        figure: what is measured, as the table names it.
        value: the measured figure, or None / a missing figure when the phase did not run.
        target: the target as the table shows it ("<= 2 ms").
        ok: whether a value meets the target.
        unit: the figure's unit ("ms", "msg/s"; "x" for a ratio).
    """
    measured = isinstance(value, int | float) and not math.isnan(value)
    return Check(figure, value if measured else None, target,
                 bool(ok(value)) if measured else None, unit)


def at_most(limit: float) -> Callable[[float], bool]:
    """``ok`` for a target "<= limit"."""
    return lambda value: value <= limit


def at_least(limit: float) -> Callable[[float], bool]:
    """``ok`` for a target ">= limit"."""
    return lambda value: value >= limit


def _no_options(_group: argparse._ArgumentGroup) -> None:
    return None


def _no_settings(_args: argparse.Namespace) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Phase:
    """One benchmark phase (see the module docstring).

    Attributes:
        name: ``--only`` takes it, and the phase's figures are ``result[name]`` in the JSON.
        about: one line for ``--help``.
        run: measures, and returns the phase's figures (plain JSON data; latencies through
            ``stats.summarize`` so every phase reports them alike).
        targets: the phase's targets from its figures; called with ``{}`` when the phase did
            not run (every target is then "not measured"), and with each run's own figures for
            the "each run" column, so it must not depend on anything but its argument.
        details: the figures as Markdown lines (a sentence, a table) for the report.
        options: adds the phase's command-line options to its argument group.
        settings: the phase's settings from the parsed options (``args.quick`` is the smoke
            run); they are recorded in the result's ``settings`` and reach ``run`` as
            ``ctx.settings``.
        repeated: run ``--repeat`` times and reported as medians; False: run once, after the
            repeated phases (e.g. a phase that fills the server with connections).
        summed: keys of counts that must never be averaged away across runs (besides
            ``medians.SUMMED``: lost, duplicates, errors, ...).
        default: run when ``--only`` names no phase; False: only when named (a phase that
            takes minutes, or writes a large data set into the database).
    """

    name: str
    about: str
    run: Callable[[Context], Awaitable[dict[str, Any]]]
    targets: Callable[[Mapping[str, Any]], list[Check]]
    details: Callable[[Mapping[str, Any]], list[str]]
    options: Callable[[argparse._ArgumentGroup], None] = _no_options
    settings: Callable[[argparse.Namespace], dict[str, Any]] = _no_settings
    repeated: bool = True
    summed: frozenset[str] = frozenset()
    default: bool = True


@dataclass
class Context:
    """What a phase runs with: the stack, the settings, the transport, the client processes.

    Attributes:
        target: the stack's addresses (and, for a stack started here, its processes).
        settings: every phase's settings (``Phase.settings``) and the data set's.
        transport: "grpc" or "http": what the phase's sends and reads go over.
        clients: spawned, warmed-up client processes for load generated outside this process
            (``loop.run_in_executor(ctx.clients, fn, spec)``; ``fn`` a module-level function
            taking and returning plain data).
        client_count: how many processes ``clients`` has.
        progress: one status line (stderr, with the time since the start).
        errors: the result's errors; ``failed`` records one without stopping the phase.
    """

    target: Target
    settings: dict[str, Any]
    transport: str = "grpc"
    clients: Executor | None = None
    client_count: int = 1
    progress: Callable[[str], None] = print
    errors: dict[str, str] = field(default_factory=dict)
    _dataset: Dataset | None = None
    _dataset_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def api(self, connections: int = 1) -> contextlib.AbstractAsyncContextManager[
            list[AsyncApi]]:
        """``connections`` async APIs over the run's transport (see ``clients.open_api``)."""
        return open_api(self.transport, self.target.grpc, self.target.http, connections)

    def user(self, name: str) -> User:
        """``name``'s credentials (a token signed with the stack's secret)."""
        return User(name, self.target.jwt_secret)

    async def dataset(self) -> Dataset:
        """The data set (``chat_bench.dataset``), loaded through the API on first use and
        shared by every phase and run after."""
        async with self._dataset_lock:
            if self._dataset is None:
                cfg = self.settings
                async with self.api() as (api, *_):
                    self._dataset = await load_dataset(
                        api, self.target.jwt_secret, users=cfg["users"],
                        other_conversations=cfg["other_conversations"],
                        messages_per_conversation=cfg["messages_per_conversation"],
                        read_messages=cfg.get("read_messages", 10), progress=self.progress)
                await self.analyze()
            return self._dataset

    async def analyze(self) -> None:
        """The statistics a running deployment has, after a phase loads data
        (``chat_bench.database.analyze``: why)."""
        await asyncio.to_thread(analyze, self.target.db_source)

    def dataset_summary(self) -> dict[str, int] | None:
        """The data set's size, once a phase has loaded it (for the result's ``dataset``)."""
        ds = self._dataset
        if ds is None:
            return None
        return {"users": ds.users, "conversations": len(ds.conversations),
                "messages": ds.messages}

    def failed(self, name: str, exc: BaseException) -> None:
        """Records a failed part of a phase (its traceback on stderr); the phase goes on."""
        traceback.print_exception(exc)
        self.errors[name] = f"{type(exc).__name__}: {exc}"

    @property
    def executor(self) -> Executor:
        """``clients``, which a phase that generates load from outside this process needs."""
        if self.clients is None:
            raise RuntimeError("this phase needs client processes (Context.clients)")
        return self.clients


async def run_phase(phase: Phase, ctx: Context, into: dict[str, Any]) -> None:
    """``into[phase.name]`` = the phase's figures; a failure is recorded in ``ctx.errors``."""
    try:
        into[phase.name] = await phase.run(ctx)
    except Exception as e:  # a phase's failure is a result too; the others still run
        ctx.failed(phase.name, e)


__all__ = ["Check", "Context", "Phase", "at_least", "at_most", "check", "run_phase"]
