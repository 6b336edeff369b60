"""Each service's start line (the ports it bound) is logged whatever LOG_LEVEL says, and
nothing else at INFO is: the development tools, and people, find a service's ports there."""

from __future__ import annotations

import json

import pytest

from chat_devtools.services import Api, Gateway, Relay, base_env
from tests.conftest import TEST_SECRET


@pytest.mark.parametrize(("service", "started", "ports"), [
    (Api, "api_started", {"grpc_port", "http_port", "metrics_port"}),
    (Relay, "relay_started", {"metrics_port"}),
    (Gateway, "ws_gateway_started", {"ws_port", "metrics_port"}),
])
def test_the_start_line_is_logged_at_log_level_error(db_source, redis_addr, tmp_path, service,
                                                     started, ports):
    env = base_env(db_source, redis_addr, TEST_SECRET, LOG_LEVEL="ERROR")
    kwargs = {"metrics": True} if service is Api else {}
    with service(env, tmp_path, **kwargs) as proc:
        proc.wait_ready()
        assert set(proc.ports) == ports
    records = [json.loads(line) for line in proc.output("stdout").splitlines()]
    assert started in {r["msg"] for r in records}
    assert {r["level"] for r in records} == {"info"}
    assert all(r["logger"] == "chat.lifecycle" for r in records), records
