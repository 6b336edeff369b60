"""Which server answers a read (chat_shared.replica_reads), with in-memory stand-ins for the two
pools: positions, the replica's cached replay location, failures and the retry window."""

from __future__ import annotations

from typing import Any

import pytest

from chat_shared import deadlines
from chat_shared.errors import Unavailable
from chat_shared.replica_reads import (
    ReplicaReads,
    format_position,
    parse_position,
    replica_read,
)


class FakeDb:
    """Answers every statement with its own name; the replica also answers its replay location."""

    def __init__(self, name: str, replayed: str | None = "0/0") -> None:
        self.name = name
        self.replayed = replayed
        self.down = False
        self.calls: list[str] = []
        self.deadlines: list[float | None] = []

    async def fetchone(self, name: str, query: Any, params: Any = None, *,
                       tenant: str | None = None) -> tuple[Any, ...] | None:
        self.calls.append(name)
        self.deadlines.append(deadlines.remaining())
        if self.down:
            raise Unavailable("database unavailable")
        if name == "db.replica_position":
            return (self.replayed,)
        if name == "db.write_position":
            return ("1/10",)
        return (self.name,)

    async def fetchall(self, name: str, query: Any, params: Any = None, *,
                       tenant: str | None = None) -> list[tuple[Any, ...]]:
        row = await self.fetchone(name, query, params, tenant=tenant)
        return [] if row is None else [row]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def router(replayed: str | None = "0/0") -> tuple[ReplicaReads, FakeDb, FakeDb, Clock]:
    primary, replica, clock = FakeDb("primary"), FakeDb("replica", replayed), Clock()
    return ReplicaReads(primary, replica, retry_after=5.0, clock=clock), primary, replica, clock  # type: ignore[arg-type]


def test_positions_round_trip_as_postgresql_writes_lsns() -> None:
    for text in ("0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"):
        assert format_position(parse_position(text)) == text
    assert parse_position("1/0") > parse_position("0/FFFFFFFF")
    for bad in ("", "16", "16/", "x/1", "1/2/3", "123456789/0"):
        with pytest.raises(ValueError):
            parse_position(bad)


async def test_outside_a_replica_read_everything_runs_on_the_primary() -> None:
    reads, primary, replica, _ = router()
    assert await reads.fetchone("db.q", "SELECT") == ("primary",)
    assert replica.calls == []


async def test_a_read_without_a_position_goes_to_the_replica_without_asking_its_lag() -> None:
    reads, _, replica, _ = router()
    with replica_read(None):
        assert await reads.fetchall("db.q", "SELECT") == [("replica",)]
    assert replica.calls == ["db.q"]


async def test_a_position_past_the_replica_goes_to_the_primary_until_it_is_replayed() -> None:
    reads, primary, replica, _ = router(replayed="1/0")
    with replica_read(parse_position("1/10")):
        assert await reads.fetchone("db.q", "SELECT") == ("primary",)
        replica.replayed = "1/10"
        assert await reads.fetchone("db.q", "SELECT") == ("replica",)
        # Known replayed now: no further question for the same position.
        assert await reads.fetchone("db.q", "SELECT") == ("replica",)
    assert replica.calls == ["db.replica_position", "db.replica_position", "db.q", "db.q"]


async def test_a_replica_that_is_not_in_recovery_serves_no_position() -> None:
    reads, _, _, _ = router(replayed=None)
    with replica_read(1):
        assert await reads.fetchone("db.q", "SELECT") == ("primary",)


async def test_a_failed_replica_read_runs_on_the_primary_and_the_replica_rests() -> None:
    reads, primary, replica, clock = router()
    replica.down = True
    with replica_read(None):
        assert await reads.fetchone("db.q", "SELECT") == ("primary",)
        assert await reads.fetchone("db.q", "SELECT") == ("primary",)
        assert replica.calls == ["db.q"]  # skipped while it rests
        assert reads.status()["down"]
        replica.down = False
        clock.now += 5.0
        assert await reads.fetchone("db.q", "SELECT") == ("replica",)


async def test_the_replica_gets_half_of_the_callers_deadline() -> None:
    reads, primary, replica, _ = router()
    with deadlines.deadline_after(2.0), replica_read(None):
        await reads.fetchone("db.q", "SELECT")
    assert replica.deadlines[0] is not None and replica.deadlines[0] <= 1.0


async def test_write_positions_come_from_the_primary_and_only_with_a_replica() -> None:
    reads, primary, _, _ = router()
    assert await reads.write_position() == "1/10"
    assert await ReplicaReads(primary).write_position() is None  # type: ignore[arg-type]
    primary.down = True
    assert await reads.write_position() is None


def test_the_replica_reads_are_reads_and_every_other_read_hands_out_no_position() -> None:
    from chat_api.transport.dispatch import NO_POSITION, REPLICA_READS

    assert REPLICA_READS == {"GetMessages", "GetThread", "GetConversations", "GetConversation",
                             "SearchMessages"}
    assert NO_POSITION == REPLICA_READS | {"GetAttachmentUrl", "ListDevices",
                                           "GetToDeviceMessages"}
    # End-to-end encryption's reads stay on the primary (dispatch.REPLICA_READS says why).
    assert not REPLICA_READS & {"ListDevices", "GetToDeviceMessages"}
