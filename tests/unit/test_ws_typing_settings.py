"""The typing limit has one setting, a rate limit's: RATE_LIMIT_TYPING_INTERVAL.

Why: the gateway once had two typing throttles (its own and the rate limiter's), configured
apart; the relay's window (atomic with the publish) is the one kept, and it must follow the
rate-limit setting, also when the request limits are switched off.
"""

from __future__ import annotations

from chat_ws_gateway.app import build_app
from chat_ws_gateway.settings import GatewaySettings


def test_the_gateway_has_no_typing_setting_of_its_own() -> None:
    assert "ws_typing_interval" not in GatewaySettings.model_fields
    assert "rate_limit_typing_interval" in GatewaySettings.model_fields


async def test_the_relay_window_is_the_rate_limit_setting_even_with_limits_off() -> None:
    settings = GatewaySettings(_env_file=None, environment="development",
                               redis_addr="127.0.0.1:1",
                               db_source="postgresql://nobody@127.0.0.1:1/none",
                               rate_limit_enabled=False,
                               rate_limit_typing_interval=7.5)
    app = build_app(settings)
    try:
        assert app.limiter is None
        assert app.typing is not None and app.typing.interval == 7.5
        assert not hasattr(app.server, "typing")
    finally:
        await app.redis.aclose()
        await app.stream_redis.aclose()
