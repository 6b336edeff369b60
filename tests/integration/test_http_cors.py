"""CORS: off by default, and for CORS_ALLOWED_ORIGINS both preflight and response headers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_token

ORIGIN = "https://app.example.com"


@pytest.fixture
async def cors_api(api_settings_factory: Callable[..., Any]) -> AsyncIterator[Any]:
    from chat_api.app import build_app

    app = build_app(api_settings_factory(cors_allowed_origins=f"{ORIGIN}, http://localhost:3000"))
    await app.start()
    await app.probe_once()
    yield app
    await app.stop(grace=1.0)


async def test_preflight_from_an_allowed_origin(cors_api):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{cors_api.http_port}") as http:
        async with http.options("/v1/messages", headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, idempotency-key"}) as resp:
            assert resp.status == 204
            h = resp.headers
            assert h["Access-Control-Allow-Origin"] == ORIGIN
            assert h["Access-Control-Allow-Methods"] == "POST"
            allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
            assert {"authorization", "idempotency-key", "content-type"} <= allowed
            assert "Origin" in h.getall("Vary")
        # The route's own methods are offered, not a fixed list.
        async with http.options("/v1/conversations", headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": "GET"}) as resp:
            assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST"


async def test_actual_request_carries_cors_headers(cors_api):
    headers = {"Origin": ORIGIN, "Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{cors_api.http_port}") as http:
        async with http.get("/v1/conversations", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
        # Errors carry them too, or a browser could not read the JSON error body.
        async with http.get("/v1/conversations", headers={"Origin": ORIGIN}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_other_origins_get_no_cors_headers(cors_api):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{cors_api.http_port}") as http:
        async with http.options("/v1/messages", headers={
                "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}) as resp:
            assert resp.status == 405  # not a preflight we answer: the route has no OPTIONS
            assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_is_off_by_default(api):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.http_port}") as http:
        async with http.options("/v1/messages", headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": "POST"}) as resp:
            assert resp.status == 405
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.get("/v1/conversations", headers={"Origin": ORIGIN}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers


def test_bad_origin_setting_names_the_variable(api_settings_factory):
    from chat_api.settings import ApiSettings
    from chat_shared.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS"):
        load_settings(ApiSettings, cors_allowed_origins="app.example.com/path")
