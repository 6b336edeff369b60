"""The gateway process's settings: the shared sections plus what only the gateway reads."""

from __future__ import annotations

from pydantic import Field, field_validator

from chat_shared.config import HttpServerSettings, Seconds, ServiceSettings, parse_host_port
from chat_shared.events import DEFAULT_STREAM_PREFIX
from chat_shared.graphql_settings import GraphQLSettings
from chat_shared.ratelimit import RateLimitSettings


class GatewaySettings(ServiceSettings, HttpServerSettings, RateLimitSettings, GraphQLSettings):
    ws_server_address: str = Field("0.0.0.0:8081", description="host:port for WebSocket + demo")
    metrics_port: int = Field(9102, ge=0, le=65535,
                              description="/metrics, /healthz and /readyz port; 0 = off")
    stream_shards: int = Field(1, ge=1, le=1024, description="number of Redis streams (as relay)")
    stream_prefix: str = Field(DEFAULT_STREAM_PREFIX, min_length=1,
                               description="stream key prefix; keys are `<prefix>:<shard>`")
    stream_block: Seconds = Field(2.0, gt=0, le=60, description="XREAD BLOCK, seconds")
    stream_read_count: int = Field(500, ge=1, le=100_000, description="entries per XREAD")
    ws_send_queue_size: int = Field(
        256, ge=1, le=1_000_000,
        description="frames queued per connection before it is closed as a slow consumer")
    ws_heartbeat: Seconds = Field(
        30.0, ge=0, description="seconds between pings; no pong within half of it closes; 0 = off")
    ws_max_frame_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024,
                                    description="largest client frame, bytes")
    ws_resume_wait: Seconds = Field(
        2.0, ge=0, le=60,
        description="seconds live events wait for the client's first frame (its resume)")
    ws_close_timeout: Seconds = Field(
        10.0, gt=0, description="seconds a closing socket may take before it is aborted")
    ws_max_connections_per_user: int = Field(
        20, ge=1, le=100_000,
        description="open sockets one user may hold on one gateway process; the next one is "
                    "closed with 4029 (counted per process: N replicas allow up to N times this)")
    ws_max_inbound_frames_per_second: int = Field(
        50, ge=0, le=1_000_000,
        description="frames a client may send per second (burst: one second's worth) before "
                    "its socket is closed with 4030; 0 = no limit")
    ws_max_resume_positions: int = Field(1000, ge=1, le=100_000,
                                         description="conversations per resume frame")
    resume_page_size: int = Field(200, ge=1, le=10_000,
                                  description="messages per PostgreSQL page during catch-up")
    api_public_url: str = Field(
        "", description="HTTP API base URL the demo page calls; empty = same host, port 8080")
    shutdown_grace: Seconds = Field(10.0, ge=0, description="seconds to close sockets on SIGTERM")
    database_role: str = Field(
        "chat_app", pattern=r"^([a-z_][a-z0-9_]{0,62})?$",
        description="the role the gateway's sessions act as: one that cannot bypass row-level "
                    "security (migrations create chat_app); empty = the login user itself "
                    "(docs/tenancy.md)")
    ws_tenant_check_interval: Seconds = Field(
        2.0, gt=0, le=5,
        description="seconds between re-reads of the tenant registry for the tenants with open "
                    "sockets: a disabled tenant's sockets close (4403) within it")
    ws_device_check_interval: Seconds = Field(
        30.0, gt=0, le=300,
        description="seconds between the checks that a socket's end-to-end encryption device "
                    "still exists: a removed device's sockets close (4404) within it")
    ws_typing_cache_ttl: Seconds = Field(
        2.0, ge=0, le=60,
        description="seconds a typing sender's membership and the conversation's members may "
                    "be reused before they are read again")
    db_pool_size: int = Field(5, ge=1, le=1000,
                              description="connections kept open for catch-up reads")

    @field_validator("ws_server_address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_host_port(v)
        return v

    def service_host(self) -> str:
        return parse_host_port(self.ws_server_address)[0]

    @field_validator("api_public_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")
