"""No HTTP port of any service names its software or version in the ``Server`` header.

aiohttp's default is ``Server: Python/3.11 aiohttp/3.x`` and prometheus_client's metrics server
says ``WSGIServer/0.2 CPython/3.11.x``: free reconnaissance for anyone probing a deployment.
Every port of the three services is asked, as real processes: a normal request, a 404, and a
request the server cannot parse (answered before any application code runs).
"""

from __future__ import annotations

import asyncio
import pathlib
import re

from chat_shared.http_serving import SERVER_HEADER
from tests.support.ws_stack import Api, Gateway, Relay, base_env

BANNER = re.compile(r"python|aiohttp|wsgi|\d+\.\d+", re.IGNORECASE)


async def _server_header(port: int, request: bytes) -> tuple[int, str | None]:
    """(status, Server header); status 0 for an answer without a status line (wsgiref answers
    a request line it cannot read the HTTP/0.9 way: a bare body, no headers to carry a banner)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # every request here ends the connection
    finally:
        writer.close()
    if not answer.startswith(b"HTTP/"):
        assert answer, "no answer at all"
        return 0, None
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    servers = [line.split(":", 1)[1].strip() for line in lines[1:]
               if line.lower().startswith("server:")]
    assert len(servers) <= 1, lines
    return int(lines[0].split()[1]), servers[0] if servers else None


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


MALFORMED = {
    "bad request line": b"GET / HTTP/1.1 junk\r\nHost: 127.0.0.1\r\n\r\n",
    "oversized header": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 70_000
                         + b"\r\n\r\n"),
}


async def test_no_port_of_any_service_sends_a_version_banner(
        db_source: str, redis_addr: str, tmp_path: pathlib.Path) -> None:
    env = base_env(db_source, redis_addr)
    api = Api(env, tmp_path, metrics=True).start()
    relay = Relay(env, tmp_path).start()
    gateway = Gateway(env, tmp_path).start()
    services = [api, relay, gateway]
    try:
        await asyncio.gather(api.ready(), relay.ready(), gateway.ready())
        ports = {
            "api http": (api.http_port, ["/openapi.json", "/no/such/route"]),
            "api metrics": (api.metrics_port, ["/metrics", "/no/such/route"]),
            "relay metrics": (relay.metrics_port, ["/metrics", "/healthz", "/no/such/route"]),
            "gateway ws": (gateway.ws_port, ["/", "/no/such/route"]),
            "gateway metrics": (gateway.metrics_port, ["/metrics", "/readyz", "/nope"]),
        }
        seen = []
        for name, (port, paths) in ports.items():
            for path in paths:
                seen.append((name, path, *await _server_header(port, _get(path))))
            for kind, request in MALFORMED.items():
                seen.append((name, kind, *await _server_header(port, request)))
        banners = [s for s in seen if (s[3] != SERVER_HEADER and s[2] != 0)
                   or BANNER.search(s[3] or "")]
        assert banners == [], seen
        assert [s[0] for s in seen if s[2] == 0] in ([], ["api metrics"]), seen
        # aiohttp's ports answer 400; the metrics server (wsgiref) 431 or a bare HTTP/0.9 body.
        assert {s[2] for s in seen if s[1] in MALFORMED} <= {0, 400, 431}, seen
        assert {s[2] for s in seen if s[1] in MALFORMED and s[0] != "api metrics"} == {400}
    finally:
        for service in services:
            service.stop()
