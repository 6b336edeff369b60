"""Requests the API's HTTP server cannot parse, sent as raw bytes over a socket.

aiohttp answers those before any application code runs; the API must still answer them in its
JSON error shape (``{"code", "message", "details"}``), with no version banner, and log each as
one line that names the kind of error, never the request's contents (the start of an oversized
``Authorization`` header once landed in the log), rate-limited so that an anonymous client
cannot fill the log. A client that leaves in the middle of its body is a 499 in the log, not
a 500 with a traceback. Checked against a real ``chat-api`` process and its JSON log.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiohttp import web

from chat_shared.http_serving import (
    PARSE_ERROR_LOG_BURST,
    SERVER_HEADER,
    HttpListener,
    RateLimit,
)
from tests.conftest import make_token
from tests.support.api_process import ApiUnderTest, api_process_fixture  # noqa: F401 - fixture

SECRET_MARK = "SECRETSTART"


async def raw_exchange(port: int, request: bytes, *, close_after_send: bool = False,
                       within: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Sends ``request`` as it is and reads the answer up to its Content-Length (or EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if close_after_send:
            return 0, {}, b""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), within) if length else b""
        return status, headers, body
    finally:
        writer.close()


def _request(*header_lines: str, body: bytes = b"", method: str = "POST",
             path: str = "/v1/messages") -> bytes:
    head = "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *header_lines])
    return head.encode("latin-1") + b"\r\n\r\n" + body


MALFORMED = {
    "oversized Authorization header": _request(
        f"Authorization: Bearer {SECRET_MARK}{'x' * 9000}", "Content-Length: 2", body=b"{}"),
    "oversized request line": _request(method="GET", path="/v1/conversations?q=" + "x" * 9000),
    "negative Content-Length": _request("Content-Length: -1", body=b"{}"),
    "Transfer-Encoding and Content-Length": _request(
        "Transfer-Encoding: chunked", "Content-Length: 5", body=b"0\r\n\r\n"),
    "header without a colon": _request(f"X-{SECRET_MARK} no colon", "Content-Length: 0"),
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


def _assert_json_error(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert status == 400, (status, headers, body)
    assert headers["content-type"].startswith("application/json"), headers
    assert headers["server"] == SERVER_HEADER, headers
    error = json.loads(body)
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == 3 and error["details"] == [], error  # INVALID_ARGUMENT
    assert SECRET_MARK not in error["message"]
    return error


def _traceback_free(records: list[dict[str, Any]]) -> None:
    bad = [r for r in records if "exception" in r or "Traceback" in r.get("raw", "")
           or r.get("level") in ("error", "critical")]
    assert bad == [], bad[:3]


async def test_unparsable_requests_get_the_json_error_shape_and_one_quiet_log_line(
        api_process: ApiUnderTest) -> None:
    for case, request in MALFORMED.items():
        since = api_process.log_size()
        status, headers, body = await raw_exchange(api_process.http_port, request)
        _assert_json_error(status, headers, body)
        (line,) = await api_process.wait_for_records(
            lambda r: r.get("msg") == "http_bad_request", since=since)
        assert (line["level"], line["status"]) == ("warning", 400), (case, line)
        assert set(line) <= {"msg", "level", "status", "error", "peer", "logger", "timestamp",
                             "service", "pid", "suppressed"}, (case, line)
        _traceback_free(api_process.records(since))
    assert SECRET_MARK not in api_process.log_text()


async def test_parse_error_log_lines_are_rate_limited(api_process: ApiUnderTest) -> None:
    since = api_process.log_size()
    requests = PARSE_ERROR_LOG_BURST * 3
    for _ in range(requests):
        status, headers, body = await raw_exchange(
            api_process.http_port, MALFORMED["negative Content-Length"])
        _assert_json_error(status, headers, body)
    # A call after them: once its line is in, every earlier line is too.
    status, _, _ = await raw_exchange(api_process.http_port, _request(
        method="GET", path="/openapi.json"))
    assert status == 200
    await api_process.wait_for_records(
        lambda r: r.get("msg") == "http_request" and r.get("path") == "/openapi.json",
        since=since)
    lines = [r for r in api_process.records(since) if r.get("msg") == "http_bad_request"]
    assert len(lines) == PARSE_ERROR_LOG_BURST, lines
    _traceback_free(api_process.records(since))


async def test_client_leaving_mid_body_is_logged_as_499_without_a_traceback(
        api_process: ApiUnderTest) -> None:
    since = api_process.log_size()
    await raw_exchange(api_process.http_port, _request(
        f"Authorization: Bearer {make_token('alice')}", "Content-Type: application/json",
        "Content-Length: 1000", "X-Request-Id: left-mid-body", body=b'{"conversation_id": "'),
        close_after_send=True)
    (line,) = await api_process.wait_for_records(
        lambda r: r.get("msg") == "http_request" and r.get("request_id") == "left-mid-body",
        since=since)
    assert line["status"] == 499, line
    _traceback_free(api_process.records(since))


async def test_every_response_says_server_chat_service(api_process: ApiUnderTest) -> None:
    for path in ("/openapi.json", "/v1/conversations", "/no/such/route"):
        status, headers, _ = await raw_exchange(api_process.http_port,
                                                _request(method="GET", path=path))
        assert status in (200, 401, 404), (path, status)
        assert headers["server"] == SERVER_HEADER, (path, headers)


async def test_the_suppressed_count_rides_on_the_next_line_that_gets_through() -> None:
    """In process, with the rate limit's clock in hand: after a quiet spell, the next parse
    error's line says how many were left out."""
    now = [0.0]
    app = web.Application()
    listener = HttpListener(app, parse_error_log=RateLimit(2, 60.0, clock=lambda: now[0]))
    port = await listener.start("127.0.0.1", 0)
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                status, _, _ = await raw_exchange(port, MALFORMED["negative Content-Length"])
                assert status == 400
            now[0] = 61.0
            await raw_exchange(port, MALFORMED["negative Content-Length"])
    finally:
        await listener.stop()
    lines = [e for e in logs if e["event"] == "http_bad_request"]
    assert [e.get("suppressed", 0) for e in lines] == [0, 0, 3], lines
