"""The API process's settings: the shared sections plus what only the API reads."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from chat_shared.config import HttpServerSettings, Seconds, ServiceSettings, parse_host_port
from chat_shared.ratelimit import RateLimitSettings
from chat_shared.tenancy import TENANT_ID

MAX_TENANT_LABELS = 50
_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")


class ApiSettings(ServiceSettings, HttpServerSettings, RateLimitSettings):
    database_role: str = Field(
        "chat_app", pattern=r"^([a-z_][a-z0-9_]{0,62})?$",
        description="the role the API's sessions act as: one that cannot bypass row-level "
                    "security (migrations create chat_app); empty = the login user itself, "
                    "which must then be such a role (docs/tenancy.md)")
    tenant_auto_create: bool = Field(
        False, description="register a tenant the registry does not know on its first call; "
                           "false = such a call is PERMISSION_DENIED (docs/tenancy.md)")
    tenant_cache_ttl: Seconds = Field(
        2.0, gt=0, le=5, description="seconds a tenant's registry entry is remembered: how long "
                                     "`chat-tenant disable` takes to reach the API")
    tenant_max_members: int = Field(
        1000, ge=2, le=1000,
        description="members per conversation (the creator included) for a tenant whose "
                    "registry entry sets no max_members")
    tenant_max_message_length: int = Field(
        4096, ge=1, le=4096,
        description="characters per message for a tenant whose registry entry sets no "
                    "max_message_length")
    metrics_tenant_labels: str = Field(
        "", description="comma-separated tenant ids (at most 50) whose calls are counted under "
                        "their own `tenant` label in chat_tenant_rpc_requests_total; every other "
                        "tenant is counted as `other` (docs/tenancy.md)")
    grpc_server_address: str = Field("0.0.0.0:9090", description="host:port for gRPC")
    http_server_address: str = Field("0.0.0.0:8080", description="host:port for HTTP/JSON")
    metrics_port: int = Field(9100, ge=0, le=65535,
                              description="Prometheus /metrics port (all workers); 0 = off")
    api_workers: int = Field(
        1, ge=1, le=64,
        description="processes serving the same ports (SO_REUSEPORT), to use more than one core")
    shutdown_grace: Seconds = Field(10.0, ge=0, description="seconds to drain on SIGTERM")
    health_check_interval: Seconds = Field(
        2.0, gt=0, description="seconds between PostgreSQL health probes")
    # HTTP/JSON gateway (chat_api.transport.http_gateway).
    cors_allowed_origins: str = Field(
        "", description="comma-separated origins (https://app.example.com) or *; empty = no CORS")
    http_max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20,
                                     description="bytes; a larger request body gets 413")

    @field_validator("grpc_server_address", "http_server_address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_host_port(v)
        return v

    def service_host(self) -> str:
        return parse_host_port(self.grpc_server_address)[0]

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        origins = [o.strip().rstrip("/") for o in v.split(",") if o.strip()]
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        return ",".join(origins)

    @field_validator("metrics_tenant_labels")
    @classmethod
    def _tenant_labels(cls, v: str) -> str:
        tenants = [t.strip() for t in v.split(",") if t.strip()]
        for tenant in tenants:
            if not TENANT_ID.fullmatch(tenant):
                raise ValueError(f"not a tenant id: {tenant!r}")
        if len(tenants) > MAX_TENANT_LABELS:
            raise ValueError(f"{len(tenants)} tenants; at most {MAX_TENANT_LABELS} (each is a "
                             "time series per status code)")
        return ",".join(tenants)

    @property
    def tenant_labels(self) -> frozenset[str]:
        return frozenset(t for t in self.metrics_tenant_labels.split(",") if t)

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(o for o in self.cors_allowed_origins.split(",") if o)
