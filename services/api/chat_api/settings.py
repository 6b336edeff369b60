"""The API process's settings: the shared sections plus what only the API reads."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from chat_api.transport.client_address import Network, parse_networks
from chat_shared.config import (
    SECRET,
    BaseSection,
    HttpServerSettings,
    Seconds,
    ServiceSettings,
    parse_host_port,
)
from chat_shared.events import DEFAULT_STREAM_PREFIX
from chat_shared.graphql_settings import GraphQLSettings
from chat_shared.ratelimit import RateLimitSettings
from chat_shared.tenancy import TENANT_ID

MAX_TENANT_LABELS = 50
_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")

DEFAULT_ATTACHMENT_TYPES = ("image/png,image/jpeg,image/gif,image/webp,application/pdf,"
                            "text/plain,application/zip,audio/mpeg,video/mp4")


class ObjectStoreSettings(BaseSection):
    """The S3-compatible store that holds attachments (docs/attachments.md)."""

    s3_endpoint: str = Field(
        "", description="URL of the S3 API (https://s3.eu-west-1.amazonaws.com, "
                        "http://minio:9000); empty = attachments are off (their RPCs answer "
                        "FAILED_PRECONDITION)")
    s3_public_endpoint: str = Field(
        "", description="the store's URL as clients reach it, named in presigned URLs, when "
                        "that is not S3_ENDPOINT (an in-cluster service name, say); empty = "
                        "S3_ENDPOINT")
    s3_region: str = Field("us-east-1", min_length=1, description="the store's region (signing)")
    s3_bucket: str = Field("chat-attachments", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                           description="the bucket attachments are stored in")
    s3_access_key_id: str = Field("", description="access key id of the API's store user")
    s3_secret_access_key: str = Field(
        "", description="its secret key (or S3_SECRET_ACCESS_KEY_FILE: a file holding it)",
        json_schema_extra=SECRET)
    s3_path_style: bool = Field(
        False, description="path-style URLs (endpoint/bucket/key), as MinIO and most local "
                           "stores need; false = virtual-hosted (bucket.endpoint/key)")
    s3_timeout: Seconds = Field(
        2.0, gt=0, le=60, description="seconds for each store call (connect and read each); "
                                      "calls are never retried")
    max_attachments_per_message: int = Field(10, ge=1, le=100,
                                             description="attachments one message may carry")
    attachment_max_bytes: int = Field(
        25 << 20, ge=1, le=5 << 30,
        description="bytes per file for a tenant whose registry entry sets no "
                    "max_attachment_bytes")
    attachment_content_types: str = Field(
        DEFAULT_ATTACHMENT_TYPES,
        description="comma-separated content types an upload may declare")
    attachment_orphan_after: Seconds = Field(
        86400.0, gt=0, description="seconds after which an upload never attached is deleted")
    attachment_sweep_interval: Seconds = Field(
        300.0, ge=0, description="seconds between sweeps for such uploads (0 = never)")
    thumbnail_max_pixels: int = Field(
        40_000_000, ge=1_000_000, le=200_000_000,
        description="an image with more pixels gets no thumbnail (decompression bombs)")
    thumbnail_size: int = Field(320, ge=32, le=1024,
                                description="pixels of a thumbnail's longer side at most")
    thumbnails: bool = Field(
        True, description="run the thumbnail worker (a consumer of message.created) in this "
                          "process; needs REDIS_ADDR and S3_ENDPOINT")

    @field_validator("s3_endpoint", "s3_public_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not re.fullmatch(r"https?://[^/\s]+/?", v):
            raise ValueError("must be an http(s):// URL of the store (no path)")
        return v.rstrip("/")

    @field_validator("attachment_content_types")
    @classmethod
    def _types(cls, v: str) -> str:
        types = [t.strip().lower() for t in v.split(",") if t.strip()]
        for t in types:
            if not _CONTENT_TYPE.fullmatch(t):
                raise ValueError(f"not a content type: {t!r}")
        return ",".join(types)

    @property
    def content_types(self) -> frozenset[str]:
        return frozenset(t for t in self.attachment_content_types.split(",") if t)


class ReadReplicaSettings(BaseSection):
    """A streaming replica for the read-only calls (docs/read-replicas.md)."""

    db_read_source: str = Field(
        "", description="PostgreSQL URL of a streaming replica (hot standby) of DB_SOURCE's "
                        "database; GetMessages, GetThread, GetConversations, GetConversation "
                        "and SearchMessages read there when it has replayed the caller's "
                        "X-Chat-Read-After "
                        "position (or DB_READ_SOURCE_FILE: a file holding it); empty = every "
                        "read on the primary", json_schema_extra=SECRET)
    db_read_pool_timeout: Seconds = Field(
        0.25, gt=0, le=10,
        description="seconds a read waits for a replica connection before it runs on the "
                    "primary (the cost of a replica that is down, once per DB_READ_RETRY_AFTER)")
    db_read_retry_after: Seconds = Field(
        5.0, gt=0, le=300, description="seconds reads skip a replica that failed")
    db_read_transaction_pooler: bool = Field(
        False, description="DB_READ_SOURCE reaches the replica through a pooler in transaction "
                           "mode (as DB_TRANSACTION_POOLER does for DB_SOURCE; "
                           "docs/pgbouncer.md); false = sessions of its own, whatever "
                           "DB_TRANSACTION_POOLER says")

    @field_validator("db_read_source")
    @classmethod
    def _read_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return v


class ApiSettings(ServiceSettings, HttpServerSettings, RateLimitSettings, ObjectStoreSettings,
                  GraphQLSettings, ReadReplicaSettings):
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
    stream_shards: int = Field(1, ge=1, le=1024,
                               description="number of Redis streams (as the relay): the "
                                           "thumbnail worker reads them all")
    stream_prefix: str = Field(DEFAULT_STREAM_PREFIX, min_length=1,
                               description="stream key prefix (as the relay)")
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
    trusted_proxies: str = Field(
        "", description="comma-separated CIDR networks of the proxies (the ingress) whose "
                        "X-Forwarded-For names the client for the per-address limit of refused "
                        "credentials; empty = trust nobody: the peer's address counts")
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

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: str) -> str:
        try:
            return ",".join(str(n) for n in parse_networks(v))
        except ValueError as exc:
            raise ValueError(f"must be CIDR networks or addresses, comma-separated: {exc}"
                             ) from None

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
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(o for o in self.cors_allowed_origins.split(",") if o)
