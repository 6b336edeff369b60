"""The limiter's Redis side on a Redis Cluster: each check goes to the master of its slot.

The limiter keeps its own RESP connections (``_resp.py`` says why not redis-py; its cluster
client adds slot routing on top of the same per-command cost), so it routes by itself, the way
a cluster client does:

- the slot map comes from ``CLUSTER SLOTS``, asked of a known node (the startup nodes of
  REDIS_ADDR at first, then any master it knows);
- a check goes to the master of its keys' slot (the keys share the ``{tenant}`` hash tag, so
  the script touches one slot), over one ``RedisGcra`` (one pipelined socket) per master;
- MOVED: the slot is served elsewhere now (a failover, a resharding); the map is patched, the
  check is sent there once, and the whole map is read again in the background;
- ASK: the slot is migrating; the check is sent once to the named node after ASKING;
- a master that does not answer fails its checks at once for a moment (``RedisGcra``, the
  limiter decides locally meanwhile) and the map is read again, at most every
  ``REFRESH_EVERY`` seconds, so once the cluster promotes a replica the checks reach it.

Every check stays bounded as on a single server: one timeout for the first answer and, after a
redirection, one more for the node it names; nothing waits on a map refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot

from chat_shared.ratelimit._redis import Redirected, RedisGcra, RedisUnavailable
from chat_shared.ratelimit._resp import Reply

__all__ = ["ClusterGcra", "parse_cluster_slots"]

SLOTS = 16384
REFRESH_EVERY = 0.25
"""Seconds between two reads of the slot map while nodes fail or redirect."""

Address = tuple[str, int]


def parse_cluster_slots(reply: Reply, asked: Address) -> list[tuple[int, int, Address]]:
    """(first slot, last slot, master address) of each range of a CLUSTER SLOTS reply. A
    master that does not know its own address says "" (then it is the node asked)."""
    if not isinstance(reply, list):
        raise ValueError(f"unexpected CLUSTER SLOTS reply {reply!r:.80}")
    ranges = []
    for item in reply:
        first, last, master = int(item[0]), int(item[1]), item[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        ranges.append((first, last, (host or asked[0], int(master[1]))))
    return ranges


class ClusterGcra:
    """``RedisGcra``'s interface (check, submit, answer, close) over a cluster's masters."""

    def __init__(self, startup_nodes: Sequence[Address], *, timeout: float, password: str = "",
                 down_for: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._startup = list(startup_nodes)
        self._timeout = timeout
        self._password = password
        self._down_for = down_for
        self._clock = clock
        self._nodes: dict[Address, RedisGcra] = {}
        self._slots: list[Address | None] = [None] * SLOTS
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")

    @property
    def timeout(self) -> float:
        return self._timeout

    def _node(self, address: Address) -> RedisGcra:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = RedisGcra(
                address[0], address[1], timeout=self._timeout, password=self._password,
                down_for=self._down_for, clock=self._clock)
        return node

    def _owner(self, key: str | int) -> RedisGcra | None:
        address = self._slots[key_slot(str(key).encode())]
        return None if address is None else self._node(address)

    async def check(self, *args: str | int) -> list[int]:
        """As ``RedisGcra.check``, on the master of ``args[0]``'s slot.

        Raises:
            RedisUnavailable: no answer in time, the master is down, or no map yet.
        """
        node = self._owner(args[0])
        if node is None:
            await self._refresh_now()
            node = self._owner(args[0])
            if node is None:
                raise RedisUnavailable("no master known for the key's slot")
        try:
            return await node.check(*args)
        except Redirected as redirect:
            return await self._follow(redirect, args)
        except RedisUnavailable:
            self._refresh_soon()
            raise

    def submit(self, *args: str | int) -> tuple[RedisGcra, Any] | None:
        """As ``RedisGcra.submit``: sent now on the slot's master's open connection, or None."""
        node = self._owner(args[0])
        if node is None:
            return None
        pending = node.submit(*args)
        return None if pending is None else (node, pending)

    @staticmethod
    def reply_future(pending: tuple[RedisGcra, Any]) -> asyncio.Future[Reply]:
        """As ``RedisGcra.reply_future``."""
        return RedisGcra.reply_future(pending[1])

    @staticmethod
    def settled(pending: tuple[RedisGcra, Any]) -> list[int] | None:
        """As ``RedisGcra.settled`` (a redirection is not settled: ``answer`` follows it)."""
        return RedisGcra.settled(pending[1])

    async def answer(self, pending: tuple[RedisGcra, Any], args: tuple[str | int, ...]
                     ) -> list[int]:
        node, inner = pending
        try:
            return await node.answer(inner, args)
        except Redirected as redirect:
            return await self._follow(redirect, args)
        except RedisUnavailable:
            self._refresh_soon()
            raise

    async def _follow(self, redirect: Redirected, args: tuple[str | int, ...]) -> list[int]:
        """Sends a redirected check where the cluster said, once."""
        if not redirect.ask:
            self._slots[redirect.slot] = redirect.address
            self._refresh_soon()
        try:
            return await self._node(redirect.address).check(*args, asking=redirect.ask)
        except Redirected as again:
            self._refresh_soon()
            raise RedisUnavailable(f"redirected twice: {again}") from again

    def _refresh_soon(self) -> None:
        """Reads the slot map again in the background (at most every REFRESH_EVERY)."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        if self._clock() - self._refreshed_at < REFRESH_EVERY:
            return
        self._refreshing = asyncio.create_task(self._refresh(), name="ratelimit-cluster-slots")

    async def _refresh_now(self) -> None:
        """The first map (or one after losing it): waited for, bounded by the timeout."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(),
                                                   name="ratelimit-cluster-slots")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._refreshing), self._timeout * 4)

    async def _refresh(self) -> None:
        self._refreshed_at = self._clock()
        known = [a for a in dict.fromkeys(a for a in self._slots if a is not None)]
        for address in [*known, *(s for s in self._startup if s not in known)]:
            try:
                reply = await self._node(address).call("CLUSTER", "SLOTS")
                ranges = parse_cluster_slots(reply, address)
            except (RedisUnavailable, ValueError, IndexError, TypeError):
                continue
            slots: list[Address | None] = [None] * SLOTS
            for first, last, master in ranges:
                slots[first:last + 1] = [master] * (last - first + 1)
            self._slots = slots
            # Connections to nodes that are no longer masters of anything are closed.
            masters = {m for _, _, m in ranges}
            for address_gone in [a for a in self._nodes if a not in masters]:
                await self._nodes.pop(address_gone).close()
            return

    async def close(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(BaseException):
                await self._refreshing
        for node in self._nodes.values():
            await node.close()
        self._nodes.clear()
