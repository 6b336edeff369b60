"""The relay process's settings: the shared sections plus what only the relay reads."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from chat_shared.config import DatabaseSettings, Seconds, ServiceSettings
from chat_shared.events import DEFAULT_STREAM_PREFIX

RELAY_ROLE = "chat_relay"
"""The role the relay, its commands and the operator act as: it reads and writes every tenant's
outbox and dead letters (its own row-level security policy) and nothing else."""

_ROLE_DESCRIPTION = ("the role the relay's sessions act as: chat_relay reads every tenant's "
                     "outbox and nothing else (docs/tenancy.md); empty = the login user itself")


class RelayDatabaseSettings(DatabaseSettings):
    """What ``chat-outbox`` reads: the database, as the relay's role."""

    database_role: str = Field(RELAY_ROLE, pattern=r"^([a-z_][a-z0-9_]{0,62})?$",
                               description=_ROLE_DESCRIPTION)


class RelaySettings(ServiceSettings):
    verifies_tokens: ClassVar[bool] = False  # it reads the outbox and writes streams: no tokens

    database_role: str = Field(RELAY_ROLE, pattern=r"^([a-z_][a-z0-9_]{0,62})?$",
                               description=_ROLE_DESCRIPTION)

    metrics_port: int = Field(9101, ge=0, le=65535,
                              description="/metrics, /healthz and /readyz port; 0 = off")
    outbox_batch_size: int = Field(100, ge=1, le=10_000, description="rows claimed per batch")
    outbox_workers: int = Field(10, ge=1, le=1000,
                                description="concurrent Redis pipelines per batch")
    outbox_poll_interval_ms: int = Field(100, ge=1, le=3_600_000,
                                         description="fallback poll period, milliseconds")
    outbox_max_retries: int = Field(3, ge=0, le=100,
                                    description="retries after the first failed publish")
    outbox_retry_base: Seconds = Field(1.0, gt=0, le=3600,
                                       description="first retry delay, seconds; doubles")
    outbox_rebalance_interval: Seconds = Field(
        1.0, gt=0, le=600, description="seconds between partition ownership checks")
    outbox_metrics_interval: Seconds = Field(
        1.0, gt=0, le=600, description="seconds between pending-count/readiness probes")
    outbox_retention: Seconds = Field(
        7 * 86400.0, ge=0, le=366 * 86400,
        description="seconds published outbox rows are kept (for chat-outbox republish) before "
                    "they are pruned; accepts 7d, 12h ...; 0 = prune at the next round")
    outbox_prune_interval: Seconds = Field(
        60.0, gt=0, le=86400, description="seconds between pruning rounds")
    outbox_prune_batch_size: int = Field(
        1000, ge=1, le=100_000,
        description="rows deleted per pruning statement (small: short statements, few locks)")
    stream_shards: int = Field(1, ge=1, le=1024, description="number of Redis streams")
    stream_maxlen: int = Field(1_000_000, ge=0,
                               description="approximate entries kept per stream; 0 = no trim")
    stream_prefix: str = Field(DEFAULT_STREAM_PREFIX, min_length=1,
                               description="stream key prefix; keys are `<prefix>:<shard>`")
    shutdown_grace: Seconds = Field(10.0, ge=0,
                                    description="seconds to finish the batch in hand on SIGTERM")

    @field_validator("db_transaction_pooler")
    @classmethod
    def _direct_sessions(cls, v: bool) -> bool:
        if v:
            raise ValueError("the relay needs sessions of its own (advisory locks own its "
                             "partitions, LISTEN wakes it): point its DB_SOURCE at PostgreSQL, "
                             "not at a transaction pooler (docs/pgbouncer.md)")
        return v

    @property
    def poll_interval(self) -> float:
        return self.outbox_poll_interval_ms / 1000.0
