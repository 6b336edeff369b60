"""X-Request-Id is the request_id of the call's JSON log line, and the caller's trace id its
trace_id (chat-api as a real process, spans not exported, so no span carries the ids).

Run as a subprocess because the JSON log configuration is process-wide (configure_logging in
``chat-api``'s main), which an in-process app in the test session does not set up.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import grpc

from chat_devtools.process import ServiceProcess, grpc_serving
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import make_token


HTTP_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
GRPC_TRACE = "0af7651916cd43dd8448eb211c80319c"


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def test_request_id_and_trace_id_are_in_the_call_log(api_env, venv_bin, tmp_path):
    log_path = tmp_path / "api.log"
    env = {**os.environ, **api_env, "LOG_LEVEL": "INFO"}
    auth = {"Authorization": f"Bearer {make_token('alice')}"}
    with ServiceProcess("api", [venv_bin / "chat-api"], env=env, ready=grpc_serving(),
                        log_path=log_path) as api:
        api.wait_ready()
        port, grpc_port = api.port("http_port"), api.port("grpc_port")
        status, headers = _get(port, "/v1/conversations",
                               {**auth, "X-Request-Id": "log-check-123"})
        assert (status, headers["X-Request-Id"]) == (200, "log-check-123")
        status, _ = _get(port, "/v1/conversations", {"X-Request-Id": "log-check-401"})
        assert status == 401
        status, _ = _get(port, "/v1/conversations", {
            **auth, "X-Request-Id": "log-check-http-trace",
            "traceparent": f"00-{HTTP_TRACE}-00f067aa0ba902b7-01"})
        assert status == 200
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            chat_pb2_grpc.ChatServiceStub(channel).GetConversations(
                chat_pb2.GetConversationsRequest(), timeout=10, metadata=(
                    ("authorization", auth["Authorization"]),
                    ("x-request-id", "log-check-grpc-trace"),
                    ("traceparent", f"00-{GRPC_TRACE}-00f067aa0ba902b7-01")))
    records = [json.loads(line) for line in log_path.read_text().splitlines()
               if line.startswith("{")]
    def logged(msg: str, request_id: str) -> list[dict]:
        return [r for r in records if r.get("msg") == msg and r.get("request_id") == request_id]

    calls = logged("rpc", "log-check-123")
    assert len(calls) == 1, records
    call = calls[0]
    assert (call["method"], call["transport"], call["code"]) == ("GetConversations", "http", "OK")
    assert len(call["trace_id"]) == 32
    access = logged("http_request", "log-check-123")
    assert access and access[0]["trace_id"] == call["trace_id"]
    failed = logged("rpc", "log-check-401")
    assert failed and failed[0]["code"] == "UNAUTHENTICATED"
    assert "Bearer" not in log_path.read_text()  # the token never reaches the log
    # The caller's W3C trace id is the logs' trace id, over both transports.
    assert [r["trace_id"] for r in logged("rpc", "log-check-http-trace")] == [HTTP_TRACE]
    assert [r["trace_id"] for r in logged("http_request", "log-check-http-trace")] == [HTTP_TRACE]
    grpc_calls = logged("rpc", "log-check-grpc-trace")
    assert [(r["transport"], r["trace_id"]) for r in grpc_calls] == [("grpc", GRPC_TRACE)]
