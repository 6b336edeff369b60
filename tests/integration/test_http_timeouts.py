"""Slow and silent HTTP clients: half a request, a trickle of header bytes, an idle connection,
a body that never arrives. Each is closed (or answered 408) within the configured time, over
real sockets, by the shared listener in process and by the real ``chat-api`` and
``chat-ws-gateway`` processes with short timeouts set through their environment.

The bounds asserted are the configured timeouts plus slack for a busy machine, and always far
below what the old code did (aiohttp's own keep-alive default, 3,630 s, held half a request).
"""

from __future__ import annotations

import asyncio
import pathlib
import time

from aiohttp import web

from chat_devtools.services import Api
from chat_shared.http_serving import HttpListener
from tests.conftest import make_token
from tests.support.api_process import api_process_env
from tests.support.ws_stack import Gateway, base_env

HEADER_TIMEOUT = 0.5
SLACK = 5.0
"""Scheduling slack on a shared machine; still far below any keep-alive period in play."""


async def _closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before closing."""
    started = time.monotonic()
    data = b""
    deadline = started + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the server kept the connection open for {within} s (sent {data!r})"
        chunk = await asyncio.wait_for(reader.read(65536), left)
        if not chunk:
            return time.monotonic() - started, data
        data += chunk


async def _half_request(port: int, *, trickle: bool = False) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        if trickle:
            # A slowloris: a header byte now and then, never the blank line. The header
            # timeout counts from the request's first byte, not from the last one.
            started = time.monotonic()
            for i in range(200):
                if reader.at_eof() or time.monotonic() - started > HEADER_TIMEOUT + SLACK:
                    break
                try:
                    writer.write(b"X-Slow-%d: 1\r\n" % i)
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0.05)
            return await _closed_after(reader, SLACK)
        return await _closed_after(reader, HEADER_TIMEOUT + SLACK)
    finally:
        writer.close()


async def _listener(**timeouts: float) -> HttpListener:
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", ok)
    listener = HttpListener(app, **timeouts)
    await listener.start("127.0.0.1", 0)
    return listener


async def test_half_a_request_is_closed_after_the_header_timeout() -> None:
    listener = await _listener(header_timeout=HEADER_TIMEOUT, keepalive_timeout=60.0)
    try:
        waited, answer = await _half_request(listener.port)
        assert answer == b""  # closed, not answered: there is no request to answer
        assert HEADER_TIMEOUT * 0.8 <= waited < HEADER_TIMEOUT + SLACK, waited
        waited, _ = await _half_request(listener.port, trickle=True)
        assert waited < HEADER_TIMEOUT + SLACK, waited
    finally:
        await listener.stop()


async def test_a_keep_alive_connection_serves_requests_and_idles_until_its_own_timeout() -> None:
    """The header timer is for a request in progress: between requests the connection is idle
    and only the keep-alive timeout closes it; a connection that never sends anything too."""
    keepalive = 1.5
    listener = await _listener(header_timeout=HEADER_TIMEOUT, keepalive_timeout=keepalive)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        try:
            for _ in range(2):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLACK)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert await asyncio.wait_for(reader.readexactly(2), SLACK) == b"ok"
            waited, _ = await _closed_after(reader, keepalive + SLACK)
            # Longer than the header timeout: idle is not "half a request".
            assert keepalive * 0.8 <= waited < keepalive + SLACK, waited
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        try:
            waited, _ = await _closed_after(reader, keepalive + SLACK)
            assert waited < keepalive + SLACK, waited
        finally:
            writer.close()
    finally:
        await listener.stop()


async def test_the_api_closes_half_requests_and_answers_a_stalled_body_408(
        api_env: dict[str, str], tmp_path: pathlib.Path) -> None:
    env = api_process_env(api_env, HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
                          HTTP_BODY_TIMEOUT=str(HEADER_TIMEOUT))
    api = Api(env, tmp_path).start()
    try:
        await api.ready()
        waited, answer = await _half_request(api.http_port)
        assert answer == b"" and waited < HEADER_TIMEOUT + SLACK, (waited, answer)

        reader, writer = await asyncio.open_connection("127.0.0.1", api.http_port)
        try:
            writer.write(b"POST /v1/conversations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Authorization: Bearer " + make_token("alice").encode() + b"\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ti")
            await writer.drain()
            # The answer, not the close: aiohttp lingers a while to drain the unread body so
            # that the client gets to read the 408 before the connection goes.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          HEADER_TIMEOUT + SLACK)
            assert head.startswith(b"HTTP/1.1 408"), head
            assert b"connection: close" in head.lower(), head
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await asyncio.wait_for(reader.readexactly(length), SLACK)
        finally:
            writer.close()
        assert b"request body not received" in body, body
    finally:
        api.stop()


async def test_the_gateway_closes_half_requests(db_source: str, redis_addr: str,
                                                tmp_path: pathlib.Path) -> None:
    gateway = await Gateway(base_env(db_source, redis_addr,
                                     HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT)),
                            tmp_path).start().ready()
    try:
        waited, answer = await _half_request(gateway.ws_port)
        assert answer == b"" and waited < HEADER_TIMEOUT + SLACK, (waited, answer)
    finally:
        gateway.stop()
