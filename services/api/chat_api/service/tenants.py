"""Which tenants may call, and their limits: the registry, remembered for a few seconds.

Every call's tenant (from its token) must be in the registry and active, or the call is
PERMISSION_DENIED; with TENANT_AUTO_CREATE a tenant the registry does not know is registered
on its first call instead. The answer (also "unknown") is remembered for TENANT_CACHE_TTL
seconds, so the registry costs one read per tenant per few seconds, and ``chat-tenant disable``
takes effect within that time. When the remembered answer runs out, the calls that arrive while
it is read again share that one read (at 1,000 calls/s of one tenant, each call that found the
entry stale used to read the registry itself: a read per call for as long as a read took, 8 %
of the API's CPU under the isolation bench's abusive client).

Limits: a tenant's registry entry may set ``max_members`` (members of a conversation, the
creator included) and ``max_message_length`` (characters); a name it does not set takes the
service's setting. The rate limits read theirs (``rate_limit.send.rate`` ...) through
``Tenant.limit`` (chat_api.transport.dispatch).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from chat_api.models import TenantRecord
from chat_api.storage.tenants import TenantRepository
from chat_shared.errors import PermissionDenied
from chat_shared.ratelimit import LIMIT_NAMES as RATE_LIMIT_NAMES
from chat_shared.ratelimit import registry_lookup

LIMIT_NAMES = ("max_members", "max_message_length", "max_attachment_bytes", *RATE_LIMIT_NAMES)
"""The limits the API enforces (``chat-tenant set-limit`` accepts these): the rate limits are
``rate_limit.<class>.rate|burst`` per user and ``rate_limit.tenant.<class>.rate|burst`` for
the tenant's ceiling (docs/rate-limits.md)."""

_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class TenantDefaults:
    """The settings' limits, for every tenant that does not set its own."""

    max_members: int
    max_message_length: int


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    max_members: int
    max_message_length: int
    record: TenantRecord

    def limit(self, name: str, default: int) -> int:
        """The tenant's own value of the limit ``name``, else ``default``."""
        return _limit(self.record, name, default)


def _limit(record: TenantRecord, name: str, default: int) -> int:
    # The gateway reads the registry's values the same way (its connect limit).
    return registry_lookup(record.limits)(name, default)


class TenantDirectory:
    def __init__(self, repo: TenantRepository, defaults: TenantDefaults, *,
                 ttl: float, auto_create: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._repo = repo
        self._defaults = defaults
        self._ttl = ttl
        self._auto_create = auto_create
        self._clock = clock
        self._known: dict[str, tuple[float, Tenant | None]] = {}
        self._reading: dict[str, asyncio.Task[Tenant | None]] = {}

    async def admit(self, tenant_id: str) -> Tenant:
        """The caller's tenant when it may call.

        Raises:
            PermissionDenied: the tenant is not registered (and not created) or is disabled.
            Unavailable: the registry could not be read.
        """
        cached = self._known.get(tenant_id)
        if cached is not None and cached[0] > self._clock():
            tenant = cached[1]
        else:
            tenant = await self._read(tenant_id)
        if tenant is None:
            raise PermissionDenied("tenant is not registered", reason="TENANT_UNKNOWN")
        if not tenant.record.active:
            raise PermissionDenied("tenant is disabled", reason="TENANT_DISABLED")
        return tenant

    async def _read(self, tenant_id: str) -> Tenant | None:
        """The registry's entry, read once for all the calls that want it at the same time.

        The read runs in a task of its own, so a caller that goes away does not cancel it for
        the others; it carries the context (deadline) of the call that started it.
        """
        reading = self._reading.get(tenant_id)
        if reading is None:
            reading = asyncio.create_task(self._fetch(tenant_id), name="tenant-read")
            self._reading[tenant_id] = reading
            reading.add_done_callback(functools.partial(self._read_done, tenant_id))
        return await asyncio.shield(reading)

    def _read_done(self, tenant_id: str, reading: asyncio.Task[Tenant | None]) -> None:
        self._reading.pop(tenant_id, None)
        if not reading.cancelled():
            reading.exception()  # retrieved: its callers may all have gone away

    async def _fetch(self, tenant_id: str) -> Tenant | None:
        now = self._clock()
        record = await self._repo.get(tenant_id)
        if record is None and self._auto_create:
            record = await self._repo.create(tenant_id)
        tenant = None if record is None else self._tenant(record)
        if len(self._known) >= _CACHE_SIZE:
            self._known.clear()
        self._known[tenant_id] = (now + self._ttl, tenant)
        return tenant

    def _tenant(self, record: TenantRecord) -> Tenant:
        d = self._defaults
        return Tenant(record.id, _limit(record, "max_members", d.max_members),
                      _limit(record, "max_message_length", d.max_message_length), record)
