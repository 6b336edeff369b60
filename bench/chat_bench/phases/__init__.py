"""The benchmark's phases, in the order they run: one module each (``chat_bench.phase`` says
what a module declares), registered here. Adding a phase: docs/performance.md."""

from __future__ import annotations

from chat_bench.phase import Phase
from chat_bench.phases import (
    attachments,
    changes,
    delivery,
    e2ee,
    graphql,
    idle,
    isolation,
    replica,
    rpc,
    scaling,
    search,
    threads,
    throughput,
)

PHASES: tuple[Phase, ...] = (rpc.PHASE, changes.PHASE, threads.PHASE, attachments.PHASE,
                             throughput.PHASE, delivery.PHASE, graphql.PHASE, isolation.PHASE,
                             idle.PHASE, scaling.PHASE, search.PHASE,
                             replica.PHASE, e2ee.PHASE)


def by_name(names: list[str], phases: tuple[Phase, ...] = PHASES) -> list[Phase]:
    """The phases named, in their run order (whatever order the names come in).

    Raises:
        KeyError: a name no phase has (the message lists them).
    """
    known = {p.name for p in phases}
    unknown = sorted(set(names) - known)
    if unknown:
        raise KeyError(f"unknown phase(s) {unknown}; choose from {[p.name for p in phases]}")
    return [p for p in phases if p.name in names]


__all__ = ["PHASES", "by_name"]
