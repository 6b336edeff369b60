"""Which tenants may keep their sockets: the registry, checked at connect and every few seconds.

A token's tenant must be registered and active for its socket to open (else the socket is
accepted and closed with ``CLOSE_TENANT_DENIED``, 4403: browsers show a page the close code,
not a refused upgrade's status). ``TenantWatch`` re-reads the registry for the tenants with
sockets on this replica every WS_TENANT_CHECK_INTERVAL seconds and closes the sockets of any
that was disabled (or removed) meanwhile with the same code, so ``chat-tenant disable`` reaches
open sockets within that interval plus a close handshake.
"""

from __future__ import annotations

import asyncio

from chat_shared.db import Database
from chat_shared.observability.logging import get_logger
from chat_ws_gateway import protocol
from chat_ws_gateway.hub import Hub

log = get_logger(__name__)

_ACTIVE = "SELECT id FROM tenants WHERE id = ANY(%(ids)s) AND status = 'active'"
_ADMIT = "SELECT limits FROM tenants WHERE id = %(id)s AND status = 'active'"


class TenantWatch:
    def __init__(self, db: Database, hub: Hub, interval: float) -> None:
        self._db = db
        self._hub = hub
        self.interval = interval

    async def active(self, tenants: list[str]) -> set[str]:
        """The subset of ``tenants`` that is registered and active."""
        if not tenants:
            return set()
        rows = await self._db.fetchall("db.ws_active_tenants", _ACTIVE, {"ids": tenants})
        return {r[0] for r in rows}

    async def admit(self, tenant: str) -> dict[str, object] | None:
        """The registry's ``limits`` of ``tenant`` when it is registered and active (its rate
        limit overrides: ``chat-tenant set-limit``), else None."""
        row = await self._db.fetchone("db.ws_admit_tenant", _ADMIT, {"id": tenant})
        return dict(row[0] or {}) if row is not None else None

    async def check_once(self) -> int:
        """Closes the sockets of every tenant here that is no longer active; how many."""
        present = sorted(self._hub.tenants())
        if not present:
            return 0
        active = await self.active(present)
        closed = 0
        for tenant in present:
            if tenant not in active:
                count = self._hub.close_tenant(tenant, protocol.CLOSE_TENANT_DENIED,
                                               "tenant disabled", "tenant_disabled")
                log.info("ws_tenant_disabled", tenant=tenant, closed=count)
                closed += count
        return closed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - a registry read that failed is retried next round
                log.warning("ws_tenant_check_failed", exc_info=True)
