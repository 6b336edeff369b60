"""Send-to-WebSocket latency at 500 messages/s, then idle connections per gateway.

Now a phase of `chat-bench`; this script is a shortcut for `chat-bench --only delivery,idle`
(the code is in bench/chat_bench; see README "Performance").
Other arguments are passed on, e.g. `--quick`.

Usage: uv run python scripts/bench_ws.py [chat-bench options]
"""

from __future__ import annotations

import sys

from chat_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["--only", "delivery,idle", *sys.argv[1:]]))
