"""TenantDirectory: who may call, remembered for TENANT_CACHE_TTL, with the tenants' limits
(an in-memory registry in place of PostgreSQL, a hand-moved clock in place of time)."""

from __future__ import annotations

import asyncio

import pytest

from chat_api.models import TenantRecord
from chat_api.service.tenants import TenantDefaults, TenantDirectory
from chat_shared.errors import PermissionDenied

DEFAULTS = TenantDefaults(max_members=1000, max_message_length=4096)


class Registry:
    """The repository's two operations over a dict, counting reads."""

    def __init__(self, **tenants: TenantRecord) -> None:
        self.tenants = dict(tenants)
        self.reads = 0

    async def get(self, tenant_id: str) -> TenantRecord | None:
        self.reads += 1
        return self.tenants.get(tenant_id)

    async def create(self, tenant_id: str) -> TenantRecord | None:
        self.tenants.setdefault(tenant_id, TenantRecord(tenant_id, True))
        return await self.get(tenant_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def directory(registry: Registry, clock: Clock, *, auto_create: bool = False) -> TenantDirectory:
    return TenantDirectory(registry, DEFAULTS, ttl=2.0, auto_create=auto_create,  # type: ignore[arg-type]
                           clock=clock)


async def test_an_active_tenant_is_admitted_and_remembered_for_the_ttl() -> None:
    registry, clock = Registry(acme=TenantRecord("acme", True)), Clock()
    tenants = directory(registry, clock)
    assert (await tenants.admit("acme")).id == "acme"
    clock.now += 1.9
    await tenants.admit("acme")
    assert registry.reads == 1
    clock.now += 0.2
    await tenants.admit("acme")
    assert registry.reads == 2


async def test_a_disabled_tenant_is_denied_once_the_ttl_has_passed() -> None:
    registry, clock = Registry(acme=TenantRecord("acme", True)), Clock()
    tenants = directory(registry, clock)
    await tenants.admit("acme")
    registry.tenants["acme"] = TenantRecord("acme", False)
    clock.now += 2.1
    with pytest.raises(PermissionDenied, match="disabled") as denied:
        await tenants.admit("acme")
    assert denied.value.reason == "TENANT_DISABLED"


async def test_an_unknown_tenant_is_denied_and_the_answer_remembered() -> None:
    registry, clock = Registry(), Clock()
    tenants = directory(registry, clock)
    for _ in range(3):
        with pytest.raises(PermissionDenied) as denied:
            await tenants.admit("initech")
        assert denied.value.reason == "TENANT_UNKNOWN"
    assert registry.reads == 1


async def test_auto_create_registers_an_unknown_tenant() -> None:
    registry, clock = Registry(), Clock()
    tenant = await directory(registry, clock, auto_create=True).admit("initech")
    assert tenant.id == "initech" and "initech" in registry.tenants


async def test_limits_come_from_the_registry_else_the_settings() -> None:
    registry, clock = Registry(
        acme=TenantRecord("acme", True, {"max_members": 5, "rate": 10}),
        bad=TenantRecord("bad", True, {"max_members": "5", "max_message_length": -1}),
    ), Clock()
    tenants = directory(registry, clock)
    acme = await tenants.admit("acme")
    assert (acme.max_members, acme.max_message_length) == (5, 4096)
    assert acme.limit("rate", 1) == 10 and acme.limit("burst", 3) == 3
    bad = await tenants.admit("bad")  # not positive integers: the settings' values
    assert (bad.max_members, bad.max_message_length) == (1000, 4096)


class SlowRegistry(Registry):
    """A registry whose reads wait until the test lets them answer."""

    def __init__(self, **tenants: TenantRecord) -> None:
        super().__init__(**tenants)
        self.answer = asyncio.Event()

    async def get(self, tenant_id: str) -> TenantRecord | None:
        self.reads += 1
        await self.answer.wait()
        return self.tenants.get(tenant_id)


async def test_calls_that_find_the_entry_stale_share_one_read() -> None:
    registry, clock = SlowRegistry(acme=TenantRecord("acme", True)), Clock()
    tenants = directory(registry, clock)
    calls = [asyncio.create_task(tenants.admit("acme")) for _ in range(50)]
    await asyncio.sleep(0)
    registry.answer.set()
    admitted = await asyncio.gather(*calls)
    assert registry.reads == 1
    assert {t.id for t in admitted} == {"acme"}
    assert admitted[0] is admitted[-1]  # one Tenant per read, not one per call


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_read() -> None:
    registry, clock = SlowRegistry(acme=TenantRecord("acme", True)), Clock()
    tenants = directory(registry, clock)
    first = asyncio.create_task(tenants.admit("acme"))
    second = asyncio.create_task(tenants.admit("acme"))
    await asyncio.sleep(0)
    first.cancel()
    registry.answer.set()
    assert (await second).id == "acme"
    assert first.cancelled() and registry.reads == 1
