"""HTTP next to gRPC, call by call alternating.

Now a phase of `chat-bench`; this script is a shortcut for `chat-bench --only rpc`
(the code is in bench/chat_bench; see README "Performance").
Other arguments are passed on, e.g. `--quick`.

Usage: uv run python scripts/bench_http_vs_grpc.py [chat-bench options]
"""

from __future__ import annotations

import sys

from chat_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["--only", "rpc", *sys.argv[1:]]))
