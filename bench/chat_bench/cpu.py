"""Where a message's CPU goes: the CPU time of each of the stack's processes over a window.

A throughput figure alone does not say why it is what it is. On a machine whose cores are all
busy, throughput is the number of cores divided by the CPU one message costs across every
process that handles it; so the throughput phase samples, for each part of a stack started
here, the CPU time (user + system, from ``/proc/<pid>/stat``) of the part's process and all its
descendants (the API's workers, PostgreSQL's backends) at the start and the end of its window,
and divides by the messages sent in it. Children that exit inside the window are counted
through their parent's ``cutime``/``cstime`` once the parent has waited for them (PostgreSQL's
postmaster does, at once), so a 15 s window loses at most a process or two's last ticks.

Linux only (``/proc``); elsewhere, and for a running stack given by its addresses, there is no
sample and the tables leave the figures out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds including waited-for children)."""
    out: dict[int, tuple[int, float]] = {}
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # The name (field 2) may contain spaces and parentheses: split after its last ")".
        fields = text.rsplit(")", 1)[1].split()
        ppid = int(fields[1])
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        out[int(entry.name)] = (ppid, (utime + stime + cutime + cstime) / _TICKS)
    return out


def snapshot(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree (root pid and every descendant)."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in procs:
                total += procs[pid][1]
            todo += children.get(pid, [])
        out[name] = total
    return out


def per_message(before: Mapping[str, float], after: Mapping[str, float], messages: int,
                extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """Milliseconds of CPU per message for each tree (and each ``extra`` figure, in CPU
    seconds over the same window), plus ``all``; empty when no message was sent."""
    if messages <= 0 or not before:
        return {}
    spent = {name: max(0.0, after[name] - before[name]) for name in before}
    spent.update(extra or {})
    out = {name: round(seconds * 1000 / messages, 3) for name, seconds in spent.items()}
    out["all"] = round(sum(spent.values()) * 1000 / messages, 3)
    return out


def capacity(ms_per_message: Mapping[str, float], cores: int | None = None) -> float | None:
    """Messages per second the machine's cores allow at that CPU cost, all of them busy."""
    total = ms_per_message.get("all")
    cores = cores or os.cpu_count() or 1
    return round(cores * 1000 / total, 1) if total else None
