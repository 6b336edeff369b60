"""Typed settings built from environment variables (plus an optional ``app.env`` file).

Each process builds exactly one settings object at start (``load_settings``) from the shared
sections below plus its own fields. A bad value stops the process with a message naming the
environment variable, never a traceback. Durations accept Go-style strings ("24h", "500ms")
or plain seconds, as the seed service's app.env did.

Safe by default: with no ENVIRONMENT the process runs as production. Development conveniences
(the development JWT secret, the gateway's demo token endpoint) exist only with
ENVIRONMENT=development, and staging or production refuse to start without a real JWT_SECRET.
A secret setting can also come from a file (``JWT_SECRET_FILE=/run/secrets/jwt``), the way
Kubernetes and Docker mount secrets, so it never has to sit in the process environment.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEV_JWT_SECRET = "development-secret-do-not-use-in-production"
"""The secret `chat-token` and local runs share: the default only with ENVIRONMENT=development;
staging and production refuse to start with it."""

DEPLOYED_ENVIRONMENTS = frozenset({"staging", "production"})
"""Where a development convenience is a hole: these refuse the development secret."""

SECRET: JsonDict = {"secret": True}
"""``json_schema_extra`` of a secret field: never echoed in errors, readable from <NAME>_FILE."""

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


def is_secret(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


class SecretFilesSource(PydanticBaseSettingsSource):
    """``<NAME>_FILE`` for each secret field: the named file's content (a trailing newline is
    dropped, as ``echo`` and most secret stores write one). Setting both ``<NAME>`` and
    ``<NAME>_FILE`` is an error rather than a silent precedence rule."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            variable = f"{name.upper()}_FILE"
            path = os.environ.get(variable, "")
            if not is_secret(field) or not path:
                continue
            if os.environ.get(name.upper()):
                raise ConfigError(f"invalid configuration: set {name.upper()} or {variable}, "
                                  f"not both")
            try:
                with open(path, encoding="utf-8") as f:
                    values[name] = f.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise ConfigError(f"invalid configuration: {variable}: cannot read {path!r}: "
                                  f"{reason}") from None
        return values


class BaseSection(BaseSettings):
    model_config = SettingsConfigDict(
        env_file="app.env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, SecretFilesSource(settings_cls), dotenv_settings,
                file_secret_settings)


class CommonSettings(BaseSection):
    """What every process reads: environment, logging, metrics, tracing."""

    environment: Literal["development", "test", "staging", "production"] = Field(
        "production",
        description="production (the default), staging, test or development; only "
                    "development enables the development conveniences (the development "
                    "JWT secret, the gateway's demo token endpoint)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="lowest level logged (JSON lines on stdout)")
    metrics_port: int = Field(9100, ge=0, le=65535, description="Prometheus /metrics port; 0 = off")
    metrics_address: str = Field(
        "", description="host the metrics server binds; empty = the host the service itself "
                        "binds (loopback stays loopback); 0.0.0.0 in a pod for Prometheus")
    otel_exporter_otlp_endpoint: str = Field(
        "", description="OTLP gRPC endpoint; empty = no export")
    otel_service_name: str = Field(
        "", description="service.name of exported spans; empty = the program's name")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @property
    def development(self) -> bool:
        """Development conveniences are on: only when ENVIRONMENT=development says so."""
        return self.environment == "development"

    def service_host(self) -> str:
        """The host the process's own listener binds; a service with one overrides this.
        Here (a process whose only listener is its metrics and probe port, which the kubelet
        and Prometheus reach from outside the pod): all interfaces."""
        return "0.0.0.0"

    @property
    def metrics_host(self) -> str:
        """Where /metrics binds: METRICS_ADDRESS, else where the service binds."""
        return self.metrics_address or self.service_host()


class DatabaseSettings(BaseSection):
    db_source: str = Field(
        "", description="PostgreSQL URL, e.g. postgresql://user:pass@host:5432/chat?sslmode=disable"
                        " (or DB_SOURCE_FILE: a file holding it)", json_schema_extra=SECRET)
    db_pool_size: int = Field(10, ge=1, le=1000,
                              description="connections the pool keeps open per process")
    db_max_overflow: int = Field(10, ge=0, le=1000,
                                 description="extra connections the pool may open under load")
    db_pool_timeout: Seconds = Field(
        5.0, gt=0, description="seconds to wait for a pooled connection")
    db_statement_timeout: Seconds = Field(
        10.0, gt=0, description="per-statement limit PostgreSQL enforces, seconds; a unit of "
                                "work also stops waiting 0.5 s after it and drops the connection")
    db_transaction_pooler: bool = Field(
        False, description="DB_SOURCE reaches PostgreSQL through a pooler in transaction mode "
                           "(PgBouncer pool_mode=transaction), which shares server sessions "
                           "between clients: the tenant is then named in every statement's own "
                           "transaction instead of once per session, nothing is prepared "
                           "server-side, and the login role carries the session's role and "
                           "settings (docs/pgbouncer.md)")
    database_role: str = Field(
        "", pattern=r"^([a-z_][a-z0-9_]{0,62})?$",
        description="the role every session acts as (set at connection start; the login user "
                    "must be a member); empty = the login user itself (docs/tenancy.md)")

    @field_validator("db_source")
    @classmethod
    def _db_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return v


CLUSTER_SCHEME = "redis+cluster://"
"""A REDIS_ADDR that starts with this names the startup nodes of a Redis Cluster."""


def parse_redis_nodes(value: str) -> list[tuple[str, int]]:
    """The ``host:port`` addresses of REDIS_ADDR: one, or (for a cluster) a comma-separated
    list of startup nodes, optionally after ``redis+cluster://``.

    Raises:
        ValueError: an address is not host:port, or the URL carries credentials.
    """
    text = value.strip()
    if text.startswith(CLUSTER_SCHEME):
        text = text[len(CLUSTER_SCHEME):].rstrip("/")
    if "@" in text or "://" in text:
        raise ValueError(f"not host:port[,host:port...] or {CLUSTER_SCHEME}host:port[,...] "
                         f"(credentials go in REDIS_PASSWORD, never in the address)")
    nodes = [parse_host_port(part, default_host="127.0.0.1")
             for part in text.split(",") if part.strip()]
    if not nodes:
        raise ValueError(f"no address in {value!r}")
    return nodes


class RedisSettings(BaseSection):
    redis_addr: str = Field(
        "", description="host:port of Redis; for a Redis Cluster, one or more startup nodes "
                        "(host:port,host:port,...) with REDIS_CLUSTER=true, or the same list as "
                        "redis+cluster://host:port,... (which implies REDIS_CLUSTER)")
    redis_cluster: bool = Field(
        False, description="REDIS_ADDR names nodes of a Redis Cluster (3 or more masters): the "
                           "services route every key by its hash slot, follow MOVED/ASK "
                           "redirections and refresh the slot map after a failover "
                           "(docs/operations.md#redis-cluster)")
    redis_password: str = Field(
        "", description="Redis AUTH password, empty = none (or REDIS_PASSWORD_FILE: a file "
                        "holding it)", json_schema_extra=SECRET)
    redis_db: int = Field(0, ge=0, le=15, description="Redis database number (0 with a cluster, "
                                                      "which has only database 0)")
    redis_timeout: Seconds = Field(0.5, gt=0, description="socket timeout, seconds")

    @field_validator("redis_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            parse_redis_nodes(v)
        return v

    @model_validator(mode="after")
    def _cluster_addr(self) -> RedisSettings:
        if not self.redis_addr:
            return self
        if len(parse_redis_nodes(self.redis_addr)) > 1 and not self.cluster_mode:
            raise ValueError("REDIS_ADDR lists several nodes: that is a Redis Cluster; set "
                             "REDIS_CLUSTER=true or write it as redis+cluster://host:port,...")
        if self.cluster_mode and self.redis_db:
            raise ValueError("REDIS_DB must be 0 with a Redis Cluster (it has only database 0)")
        return self

    @property
    def cluster_mode(self) -> bool:
        """Whether REDIS_ADDR is a Redis Cluster (REDIS_CLUSTER or a redis+cluster:// address)."""
        return self.redis_cluster or self.redis_addr.strip().startswith(CLUSTER_SCHEME)

    @property
    def redis_nodes(self) -> list[tuple[str, int]]:
        """The (host, port) of REDIS_ADDR's node, or of each startup node of a cluster."""
        return parse_redis_nodes(self.redis_addr) if self.redis_addr else []


class AuthSettings(BaseSection):
    jwt_secret: str = Field(
        "", description="HS256/384/512 signing secret, at least 16 characters (or "
                        "JWT_SECRET_FILE: a file holding it); required with an HS algorithm "
                        "unless ENVIRONMENT=development, where it defaults to the development "
                        "secret, which staging and production refuse",
        json_schema_extra=SECRET)
    jwt_public_key: str = Field("", description="PEM public key for RS256/ES256")
    jwt_jwks_url: str = Field("", description="JWKS URL for RS256/ES256")
    jwt_algorithms: str = Field("HS256", description="comma-separated accepted algorithms")
    jwt_issuer: str = Field("", description="required `iss` claim; empty = not checked")
    jwt_audience: str = Field("", description="required `aud` claim; empty = not checked")
    jwt_leeway: Seconds = Field(30.0, ge=0, le=600,
                                description="clock skew allowed on `exp` and `nbf`, seconds")
    jwt_tenant_claim: str = Field(
        "tid", min_length=1, max_length=64,
        description="the token claim that names the caller's tenant (docs/tenancy.md)")
    require_tenant: bool = Field(
        False, description="refuse tokens without the tenant claim; false = such tokens "
                           "belong to the tenant `default`")

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


class CommonAuthSettings(CommonSettings, AuthSettings):
    """Common and auth settings together, for the rule that needs both: the JWT secret."""

    verifies_tokens: ClassVar[bool] = True
    """False for a process that never sees a token (the relay): no JWT_SECRET to require."""

    @model_validator(mode="after")
    def _real_secret_outside_development(self) -> CommonAuthSettings:
        if not self.verifies_tokens or not any(a.startswith("HS") for a in self.algorithm_list):
            return self
        if not self.jwt_secret:
            if not self.development:
                raise ValueError(
                    f"JWT_SECRET (or JWT_SECRET_FILE) must be set with ENVIRONMENT="
                    f"{self.environment} (the development secret is only the default with "
                    f"ENVIRONMENT=development)")
            self.jwt_secret = DEV_JWT_SECRET
        if self.environment in DEPLOYED_ENVIRONMENTS and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError(f"JWT_SECRET is the development secret; ENVIRONMENT="
                             f"{self.environment} refuses to start with it")
        if len(self.jwt_secret) < 16:
            raise ValueError("JWT_SECRET must be at least 16 characters")
        return self


class ServiceSettings(CommonAuthSettings, DatabaseSettings, RedisSettings):
    """The shared sections together; each service subclasses this with its own fields."""


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
            field = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
            if "SECRET" in name or "PASSWORD" in name or (field and is_secret(field)):
                shown = ""  # never echo secrets
            if isinstance(given, str) and "://" in given and "@" in given:
                shown = ""  # nor a URL that may carry credentials
            problems.append(f"{name}: {err['msg']}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
