"""The benchmark's CPU sampler reads real processes' CPU time from /proc, whole trees."""

from __future__ import annotations

import subprocess
import sys
import time

from chat_bench import cpu

# A parent that starts a child burning CPU for a bounded time, then waits for it.
_BURN = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
         "'import time\\nend = time.process_time() + 0.4\\nwhile time.process_time() < end: pass'"
         "]); import time; time.sleep(5)")


def test_a_tree_counts_its_descendants_cpu_even_after_they_exit() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _BURN])
    try:
        before = cpu.snapshot({"tree": parent.pid, "nobody": 2**22 + 7})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the child's 0.4 s of CPU, then its exit
            after = cpu.snapshot({"tree": parent.pid, "nobody": 2**22 + 7})
            if after["tree"] - before["tree"] >= 0.35:
                break
            time.sleep(0.05)
        assert after["tree"] - before["tree"] >= 0.35
        assert after["nobody"] == before["nobody"] == 0.0  # no such process: nothing
    finally:
        parent.kill()
        parent.wait()


def test_per_message_and_what_the_cores_allow() -> None:
    ms = cpu.per_message({"API": 1.0, "PostgreSQL": 2.0}, {"API": 2.5, "PostgreSQL": 2.5},
                         1000, {"load generator": 0.5})
    assert ms == {"API": 1.5, "PostgreSQL": 0.5, "load generator": 0.5, "all": 2.5}
    assert cpu.capacity(ms, cores=2) == 800.0
    assert cpu.per_message({"API": 1.0}, {"API": 2.0}, 0) == {}
    assert cpu.capacity({}, cores=2) is None
