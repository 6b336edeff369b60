"""The tenant registry (``tenants``, migration 0006): read by the API on every new tenant it
sees, written by ``chat-tenant`` (and, with TENANT_AUTO_CREATE, by the API itself)."""

from __future__ import annotations

from typing import Any

from chat_api.models import TenantRecord
from chat_shared.db import Database

_GET = "SELECT id, status, limits FROM tenants WHERE id = %(id)s"

# chat_app may insert a tenant's id only (a column grant): status and limits take their
# defaults, so an automatically created tenant is active with the settings' limits.
_CREATE = """
    INSERT INTO tenants (id) VALUES (%(id)s) ON CONFLICT (id) DO NOTHING RETURNING id
    """


def _tenant(row: tuple[Any, ...]) -> TenantRecord:
    limits = row[2] if isinstance(row[2], dict) else {}
    return TenantRecord(id=row[0], active=row[1] == "active", limits=dict(limits))


class TenantRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant_id: str) -> TenantRecord | None:
        """The registry's entry for ``tenant_id``; None when there is none."""
        row = await self._db.fetchone("db.tenant_get", _GET, {"id": tenant_id})
        return _tenant(row) if row is not None else None

    async def create(self, tenant_id: str) -> TenantRecord | None:
        """Registers ``tenant_id`` (active, default limits) unless it exists; its entry."""
        await self._db.fetchone("db.tenant_create", _CREATE, {"id": tenant_id})
        return await self.get(tenant_id)
