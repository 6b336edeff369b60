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
    # Settings read the process environment and ./app.env: start every test from neither.
    for name in ("ENVIRONMENT", "DB_SOURCE", "REDIS_ADDR", "METRICS_PORT", "LOG_LEVEL",
                 "JWT_SECRET", "JWT_ALGORITHMS", "JWT_LEEWAY", "DB_POOL_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
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


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="JWT_SECRET") as exc:
        load()
    assert DEV_JWT_SECRET not in str(exc.value)


def test_production_accepts_a_real_secret() -> None:
    settings = load(environment="production", jwt_secret=GOOD_SECRET)
    assert settings.environment == "production"


def test_development_accepts_the_development_secret() -> None:
    assert load().jwt_secret == DEV_JWT_SECRET


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
