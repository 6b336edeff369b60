"""A tiny service for the development tools' tests, run as ``python -m tests.support.demo_service``.

It binds HTTP on port 0 (or on $PORT), says so in a JSON start line as the chat services do,
answers /readyz, and exits 0 on SIGTERM. Switches: IGNORE_SIGTERM=1 (it has to be killed),
EXIT_CODE=n (it fails at start, on stderr, as with a bad setting), FAIL_FIRST=<file> (the run
that finds no such file creates it and fails as a server whose port is taken).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        status = 200 if self.path in ("/readyz", "/healthz") else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok\n" if status == 200 else b"")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main() -> int:
    fail_first = os.environ.get("FAIL_FIRST")
    if fail_first and not os.path.exists(fail_first):
        open(fail_first, "w").close()  # noqa: SIM115
        print("OSError: [Errno 98] Address already in use", file=sys.stderr, flush=True)
        return 1
    if os.environ.get("EXIT_CODE"):
        print("demo: BAD_SETTING is not a number", file=sys.stderr, flush=True)
        return int(os.environ["EXIT_CODE"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))),
                                             Handler)
    # A plain flag: Event.set() in a signal handler deadlocks when the signal lands while
    # the main thread holds the Event's lock inside Event.wait() (seen once in CI).
    stopping = False

    def on_sigterm(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("IGNORE_SIGTERM")
                  else on_sigterm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"msg": "demo_started", "http_port": server.server_port, "off_port": 0,
                      "pid": os.getpid()}), flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    while not stopping:
        time.sleep(0.1)
    server.shutdown()
    print(json.dumps({"msg": "demo_stopped"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
