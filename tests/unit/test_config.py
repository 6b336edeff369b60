"""Configuration parsing: durations, addresses, and settings errors that name the variable.

A bad value must stop a process with a message an operator can act on (the variable's name),
and a secret must never be echoed back in that message.
"""

from __future__ import annotations

import pytest
from chat_shared.config import (
    DEV_JWT_SECRET,
    ConfigError,
    ServiceSettings,
    load_settings,
    parse_duration,
    parse_host_port,
)

GOOD_SECRET = "a-secret-that-is-long-enough"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # Settings read the process environment and ./app.env: start every test from neither,
    # except for a usable JWT_SECRET (no ENVIRONMENT means production, which needs one).
    for name in ("ENVIRONMENT", "DB_SOURCE", "REDIS_ADDR", "METRICS_PORT", "LOG_LEVEL",
                 "JWT_SECRET", "JWT_ALGORITHMS", "JWT_LEEWAY", "DB_POOL_TIMEOUT",
                 "METRICS_ADDRESS", "GRPC_SERVER_ADDRESS", "WS_SERVER_ADDRESS",
                 "JWT_SECRET_FILE", "DB_SOURCE_FILE", "REDIS_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JWT_SECRET", GOOD_SECRET)
    monkeypatch.chdir(tmp_path)


def load(**overrides: object) -> ServiceSettings:
    return load_settings(ServiceSettings, _env_file=None, **overrides)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("15", 15.0),
        ("2.5", 2.5),
        ("1m0.5s", 60.5),
        ("1d", 86400.0),
        (" 30s ", 30.0),
    ],
)
def test_parse_duration_accepts_go_style_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_passes_numbers_through() -> None:
    assert parse_duration(7) == 7.0
    assert parse_duration(0.25) == 0.25


@pytest.mark.parametrize("text", ["", "abc", "10x", "h", "1h 30m", "-5s", "5s garbage", "1.h"])
def test_parse_duration_rejects_bad_strings(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        (":8080", ("0.0.0.0", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:443", ("::1", 443)),
    ],
)
def test_parse_host_port_splits_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


def test_parse_host_port_uses_the_default_host_when_missing() -> None:
    assert parse_host_port(":6379", default_host="127.0.0.1") == ("127.0.0.1", 6379)


@pytest.mark.parametrize("text", ["host:", "host:port", "host:70000", "host:-1", ""])
def test_parse_host_port_rejects_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="not a host:port address"):
        parse_host_port(text)


def test_load_settings_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "9200")
    monkeypatch.setenv("DB_POOL_TIMEOUT", "1500ms")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load()
    assert (settings.metrics_port, settings.db_pool_timeout, settings.log_level) == (
        9200, 1.5, "DEBUG")


def test_bad_metrics_port_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "abc")
    with pytest.raises(ConfigError, match="METRICS_PORT") as exc:
        load()
    assert "'abc'" in str(exc.value)


def test_out_of_range_metrics_port_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        load(metrics_port=70000)


def test_non_postgres_db_source_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_SOURCE", "mysql://u@localhost/chat")
    with pytest.raises(ConfigError, match="DB_SOURCE.*postgresql://"):
        load()


def test_unknown_log_level_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        load(log_level="loud")


def test_jwt_algorithm_none_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_ALGORITHMS", "none")
    with pytest.raises(ConfigError, match="JWT_ALGORITHMS.*unsupported"):
        load()


def test_bad_duration_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="JWT_LEEWAY"):
        load(jwt_leeway="soon")


def test_bad_redis_addr_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="REDIS_ADDR"):
        load(redis_addr="localhost")


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as exc:
        load(metrics_port="abc", log_level="loud")
    assert "METRICS_PORT" in str(exc.value) and "LOG_LEVEL" in str(exc.value)


def test_no_environment_means_production() -> None:
    settings = load()
    assert settings.environment == "production" and not settings.development


@pytest.mark.parametrize("environment", [None, "production", "staging"])
def test_deployed_environments_refuse_the_development_secret(
        monkeypatch: pytest.MonkeyPatch, environment: str | None) -> None:
    if environment:
        monkeypatch.setenv("ENVIRONMENT", environment)
    monkeypatch.setenv("JWT_SECRET", DEV_JWT_SECRET)
    with pytest.raises(ConfigError, match="JWT_SECRET is the development secret") as exc:
        load()
    assert DEV_JWT_SECRET not in str(exc.value)


@pytest.mark.parametrize("environment", [None, "production", "staging", "test"])
def test_outside_development_a_secret_must_be_set(
        monkeypatch: pytest.MonkeyPatch, environment: str | None) -> None:
    if environment:
        monkeypatch.setenv("ENVIRONMENT", environment)
    monkeypatch.delenv("JWT_SECRET")
    with pytest.raises(ConfigError, match="JWT_SECRET .*must be set"):
        load()


def test_production_accepts_a_real_secret() -> None:
    settings = load(environment="production", jwt_secret=GOOD_SECRET)
    assert settings.environment == "production"


def test_development_defaults_to_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.delenv("JWT_SECRET")
    settings = load()
    assert settings.development and settings.jwt_secret == DEV_JWT_SECRET


def test_a_secret_is_read_from_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("JWT_SECRET")
    (tmp_path / "jwt").write_text(GOOD_SECRET + "\n")
    (tmp_path / "db").write_text("postgresql://chat:pw@db:5432/chat")
    (tmp_path / "redis").write_text("redis-pw")
    monkeypatch.setenv("JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("DB_SOURCE_FILE", str(tmp_path / "db"))
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(tmp_path / "redis"))
    settings = load()
    assert (settings.jwt_secret, settings.db_source, settings.redis_password) == (
        GOOD_SECRET, "postgresql://chat:pw@db:5432/chat", "redis-pw")


def test_a_secret_and_its_file_together_are_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / "jwt").write_text(GOOD_SECRET)
    monkeypatch.setenv("JWT_SECRET_FILE", str(tmp_path / "jwt"))
    with pytest.raises(ConfigError, match="JWT_SECRET or JWT_SECRET_FILE, not both"):
        load()


def test_an_unreadable_secret_file_names_the_variable(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setenv("JWT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="JWT_SECRET_FILE: cannot read .*missing"):
        load()


def test_a_bad_value_from_a_secret_file_is_not_echoed(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / "db").write_text("mysql://chat:hunter2@db/chat")
    monkeypatch.setenv("DB_SOURCE_FILE", str(tmp_path / "db"))
    with pytest.raises(ConfigError, match="DB_SOURCE.*postgresql://") as exc:
        load()
    assert "hunter2" not in str(exc.value)


def test_metrics_bind_where_the_service_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_api.settings import ApiSettings
    from chat_outbox_relay.settings import RelaySettings
    from chat_ws_gateway.settings import GatewaySettings

    monkeypatch.setenv("GRPC_SERVER_ADDRESS", "127.0.0.1:9090")
    monkeypatch.setenv("WS_SERVER_ADDRESS", "[::1]:8081")
    assert load_settings(ApiSettings, _env_file=None).metrics_host == "127.0.0.1"
    assert load_settings(GatewaySettings, _env_file=None).metrics_host == "::1"
    # The relay's only listener is its metrics and probe port: reachable by default.
    assert load_settings(RelaySettings, _env_file=None).metrics_host == "0.0.0.0"
    monkeypatch.setenv("METRICS_ADDRESS", "0.0.0.0")
    assert load_settings(ApiSettings, _env_file=None).metrics_host == "0.0.0.0"


def test_production_without_hmac_does_not_need_a_secret() -> None:
    settings = load(environment="production", jwt_algorithms="RS256")
    assert settings.algorithm_list == ["RS256"]


def test_short_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET") as exc:
        load(jwt_secret="tiny-secret")
    assert "tiny-secret" not in str(exc.value)


def test_bad_secret_type_is_not_echoed() -> None:
    # A field-level error on a secret variable must hide the given value too.
    with pytest.raises(ConfigError, match="JWT_SECRET") as exc:
        load(jwt_secret=["hunter2-hunter2-hunter2"])
    assert "hunter2" not in str(exc.value)


def test_jwt_algorithms_are_normalised() -> None:
    assert load(jwt_algorithms=" HS256 , RS256 ").algorithm_list == ["HS256", "RS256"]


def test_the_relay_never_needs_a_token_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_outbox_relay.settings import RelaySettings

    monkeypatch.delenv("JWT_SECRET")
    assert load_settings(RelaySettings, _env_file=None).environment == "production"


def test_the_relay_refuses_a_transaction_pooler(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_outbox_relay.settings import RelaySettings

    monkeypatch.setenv("DB_TRANSACTION_POOLER", "true")
    with pytest.raises(ConfigError, match="DB_TRANSACTION_POOLER.*sessions of its own"):
        load_settings(RelaySettings, _env_file=None)
