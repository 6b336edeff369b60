"""Partition ownership: which outbox partitions this relay may claim, via advisory locks.

Every conversation hashes into one of PARTITIONS partitions (a stored column, see migration
0002). A relay owns a partition while its work connection holds the session advisory lock
(LOCK_CLASS, partition); only the owner claims that partition's rows, so a conversation's events
are published by one relay at a time, in outbox id order. A relay that dies loses its
connection and with it its locks, so the survivors pick its partitions up at the next check.

Balance: live relays are the sessions named RELAY_APPLICATION_NAME in pg_stat_activity (a dead
relay disappears with its connection, so no heartbeat table can go stale). Each relay aims at
ceil(PARTITIONS / live): it releases the excess (between batches, after commit) and tries to
lock free partitions up to its share. The shares add up to at least PARTITIONS, so every
partition finds an owner.
"""

from __future__ import annotations

import math
import random

from psycopg import AsyncConnection

from chat_shared.db import interaction

PARTITIONS = 64
"""Fixed by migration 0002's generated column (``... % 64``)."""

LOCK_CLASS = 0x6F757462
"""First key of the two-key advisory locks (ASCII 'outb'); the partition is the second."""

RELAY_APPLICATION_NAME = "chat-outbox-relay"
"""application_name of each relay's work connection: one per live relay."""

_LIVE_RELAYS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = %(application_name)s
"""
_HELD = """
    SELECT objid::int FROM pg_locks
    WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database
                                                WHERE datname = current_database())
      AND classid = %(lock_class)s::bigint::oid AND objsubid = 2 AND granted
"""

# Two int4 keys: psycopg would send Python ints as bigint, matching no two-key overload.
_TRY_LOCK = "SELECT pg_try_advisory_lock(%(lock_class)s::int, %(partition)s::int)"
_UNLOCK = "SELECT pg_advisory_unlock(%(lock_class)s::int, %(partition)s::int)"


class PartitionOwnership:
    """The partitions held by one connection's session advisory locks."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.partitions = partitions
        self.owned: set[int] = set()
        # Start the search for free partitions at a random place, so relays starting together
        # do not all race for partition 0 first.
        self._offset = random.randrange(partitions)

    async def rebalance(self, conn: AsyncConnection) -> tuple[set[int], set[int]]:
        """Moves ownership toward this relay's fair share; returns (gained, released).

        Must run between batches (never while one is unsettled): releasing a partition in
        the middle of a batch would let another relay publish its rows concurrently.
        """
        with interaction("db.partitions_rebalance"):
            async with conn.cursor() as cur:
                await cur.execute(_LIVE_RELAYS, {"application_name": RELAY_APPLICATION_NAME})
                row = await cur.fetchone()
                live = max(1, int(row[0]) if row else 1)
                target = math.ceil(self.partitions / live)
                released: set[int] = set()
                if len(self.owned) > target:
                    excess = sorted(self.owned)[target:]
                    for p in excess:
                        await cur.execute(_UNLOCK, {"lock_class": LOCK_CLASS, "partition": p})
                    released = set(excess)
                    self.owned -= released
                gained: set[int] = set()
                if len(self.owned) < target:
                    await cur.execute(_HELD, {"lock_class": LOCK_CLASS})
                    held = {int(r[0]) for r in await cur.fetchall()}
                    order = [(self._offset + i) % self.partitions for i in range(self.partitions)]
                    for p in order:
                        if len(self.owned) >= target:
                            break
                        if p in held or p in self.owned:
                            continue
                        await cur.execute(_TRY_LOCK, {"lock_class": LOCK_CLASS, "partition": p})
                        got = await cur.fetchone()
                        if got and got[0]:
                            self.owned.add(p)
                            gained.add(p)
        return gained, released

    async def release_all(self, conn: AsyncConnection) -> None:
        with interaction("db.partitions_release"):
            await conn.execute("SELECT pg_advisory_unlock_all()")
        self.owned.clear()

    def forget(self) -> None:
        """The connection died: its locks are gone with it."""
        self.owned.clear()
