"""Typed settings built from environment variables (plus an optional ``app.env`` file).

Each process builds exactly one settings object at start (``load_settings``) from the shared
sections below plus its own fields. A bad value stops the process with a message naming the
environment variable, never a traceback. Durations accept Go-style strings ("24h", "500ms")
or plain seconds, as the seed service's app.env did.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "development-secret-do-not-use-in-production"
"""The secret `chat-token` and local runs share. Production refuses to start with it."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
}


class ConfigError(Exception):
    """The environment does not describe a valid configuration; the message names the variable."""


def parse_duration(value: Any) -> float:
    """Parses "1h30m", "250ms", "15" (seconds) or a number into seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 30s, 500ms)")
    return total


Seconds = Annotated[float, BeforeValidator(parse_duration)]


def parse_host_port(value: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """Splits "host:port" (or ":port") into its parts; IPv6 hosts go in brackets."""
    text = value.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a host:port address: {value!r}")
    return host or default_host, int(port)


class BaseSection(BaseSettings):
    model_config = SettingsConfigDict(
        env_file="app.env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )


class CommonSettings(BaseSection):
    """What every process reads: environment, logging, metrics, tracing."""

    environment: Literal["development", "test", "staging", "production"] = Field(
        "development",
        description="where it runs; production refuses the development JWT_SECRET, and only "
                    "development enables the demo token endpoint")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="lowest level logged (JSON lines on stdout)")
    metrics_port: int = Field(9100, ge=0, le=65535, description="Prometheus /metrics port; 0 = off")
    metrics_address: str = Field("0.0.0.0", description="address the metrics server binds")
    otel_exporter_otlp_endpoint: str = Field(
        "", description="OTLP gRPC endpoint; empty = no export")
    otel_service_name: str = Field(
        "", description="service.name of exported spans; empty = the program's name")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class DatabaseSettings(BaseSection):
    db_source: str = Field(
        "", description="PostgreSQL URL, e.g. postgresql://user:pass@host:5432/chat?sslmode=disable"
    )
    db_pool_size: int = Field(10, ge=1, le=1000,
                              description="connections the pool keeps open per process")
    db_max_overflow: int = Field(10, ge=0, le=1000,
                                 description="extra connections the pool may open under load")
    db_pool_timeout: Seconds = Field(
        5.0, gt=0, description="seconds to wait for a pooled connection")
    db_statement_timeout: Seconds = Field(
        10.0, gt=0, description="per-statement limit PostgreSQL enforces, seconds; a unit of "
                                "work also stops waiting 0.5 s after it and drops the connection")

    @field_validator("db_source")
    @classmethod
    def _db_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return v


class RedisSettings(BaseSection):
    redis_addr: str = Field("", description="host:port of Redis")
    redis_password: str = Field("", description="Redis AUTH password; empty = none")
    redis_db: int = Field(0, ge=0, le=15, description="Redis database number")
    redis_timeout: Seconds = Field(0.5, gt=0, description="socket timeout, seconds")

    @field_validator("redis_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            parse_host_port(v, default_host="127.0.0.1")
        return v


class AuthSettings(BaseSection):
    jwt_secret: str = Field(DEV_JWT_SECRET, description="HMAC (HS256) secret, 16+ characters")
    jwt_public_key: str = Field("", description="PEM public key for RS256/ES256")
    jwt_jwks_url: str = Field("", description="JWKS URL for RS256/ES256")
    jwt_algorithms: str = Field("HS256", description="comma-separated accepted algorithms")
    jwt_issuer: str = Field("", description="required `iss` claim; empty = not checked")
    jwt_audience: str = Field("", description="required `aud` claim; empty = not checked")
    jwt_leeway: Seconds = Field(30.0, ge=0, le=600,
                                description="clock skew allowed on `exp` and `nbf`, seconds")

    @field_validator("jwt_algorithms")
    @classmethod
    def _algs(cls, v: str) -> str:
        algs = [a.strip() for a in v.split(",") if a.strip()]
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256"}
        bad = [a for a in algs if a not in allowed]
        if not algs or bad:
            raise ValueError(f"unsupported algorithm(s) {bad or v!r}; allowed: {sorted(allowed)}")
        return ",".join(algs)

    @property
    def algorithm_list(self) -> list[str]:
        return self.jwt_algorithms.split(",")


class HttpServerSettings(BaseSection):
    """How long an HTTP server (the API's, the gateway's) waits on a slow or silent client."""

    http_header_timeout: Seconds = Field(
        10.0, gt=0, le=3600,
        description="seconds a client has, from the first byte of a request, to send the whole "
                    "request line and headers; then the connection is closed")
    http_body_timeout: Seconds = Field(
        30.0, gt=0, le=3600,
        description="seconds to receive a request body once its headers arrived; then 408")
    http_keepalive_timeout: Seconds = Field(
        75.0, gt=0, le=3600,
        description="seconds an idle keep-alive connection (or one that never sends a request) "
                    "stays open")


class ServiceSettings(CommonSettings, DatabaseSettings, RedisSettings, AuthSettings):
    """The shared sections together; each service subclasses this with its own fields."""

    @model_validator(mode="after")
    def _production_needs_real_secret(self) -> ServiceSettings:
        uses_hmac = any(a.startswith("HS") for a in self.algorithm_list)
        if self.environment == "production" and uses_hmac and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError(
                "JWT_SECRET is the development secret; production refuses to start with it"
            )
        if any(a.startswith("HS") for a in self.algorithm_list) and len(self.jwt_secret) < 16:
            raise ValueError("JWT_SECRET must be at least 16 characters")
        return self


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Builds ``cls`` from the environment; raises ConfigError naming each bad variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(settings)"
            name = loc.upper() if err["loc"] else "configuration"
            given = err.get("input")
            shown = "" if err["loc"] == () or isinstance(given, dict) else f" (got {given!r})"
            if "SECRET" in name or "PASSWORD" in name:
                shown = ""  # never echo secrets
            problems.append(f"{name}: {err['msg']}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
