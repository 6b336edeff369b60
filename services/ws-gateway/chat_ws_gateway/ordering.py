"""Per-conversation ordering and resume of one connection, as a state machine without I/O.

The connection (``connection.py``) feeds it what happens and carries out what it answers:

============================================  ===============================================
input                                         answer
============================================  ===============================================
``live(event, frame)``: an event from the     ``SEND_NOW`` (queue its frame), None (held or
stream, for this connection's user            a duplicate), ``Fetch`` (a gap: read history),
                                              ``SlowConsumer`` (too much held before the
                                              client's first frame)
``end_pending()``: the client's first frame   the actions for the events held until then
(or WS_RESUME_WAIT) came
``resume(positions)``: the client's last      ``Fetch`` for each conversation to catch up,
seen seq per conversation it is a member of   then what ``end_pending`` answers
``history_page(cid, rows, more)``: a page     the rows to send (with back-pressure), in order
read after ``Fetch.after``
``history_sent(cid)``: that page's rows are   the next ``Fetch``; or the held events (``Send``)
queued                                        and ``Resumed``; or ``CatchUpFailed``
============================================  ===============================================

The rules, per conversation (a ``Cursor``):

- Positions are the conversation's change positions (``pos``; the entry's ``seq`` of an
  ordered event, see chat_shared.events "Positions"), called ``seq`` here.
- ``delivered`` is the last pos this connection has sent (or the client's resume position).
  An ordered event at or below it is a duplicate and dropped; exactly the next one is sent.
- A seq beyond the next one is a gap: the conversation *fills*. Live events are held, the missing
  messages are read from PostgreSQL page by page (``Fetch``, ``history_page``), and once the
  last page (one that is not full) has been queued (``history_sent``) the held events above
  ``delivered`` are released in seq order. Events still beyond a gap after that (their rows were
  not committed yet when the page was read) start another round after a short delay; after
  ``MAX_FILL_ROUNDS`` rounds the catch-up fails (the connection closes, the client resumes).
  Resume is the same mechanism started from the client's position, and it ends with
  ``Resumed``: live events follow it.
- The release waits for ``history_sent``, not ``history_page``: the driver queues a page's rows
  with back-pressure (it may wait for room), and a live event released before they are all
  queued would overtake them.
- Until ``end_pending``, every live event is held, so a resume sent right after connecting is
  applied before anything is delivered: no gap at the seam. More than ``hold_limit`` events in
  that phase means the client does not read: ``SlowConsumer``.
- Events of other types (``conversation.read``) are not ordered: they are sent as they come,
  held only in the pending phase.

``live`` is on the fan-out hot path (every event, every socket): its usual answer is the
constant ``SEND_NOW``, so routing an event allocates nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar

from chat_shared.events import ORDERED_TYPES, Event

MAX_FILL_ROUNDS = 5
"""Rounds of catch-up (each reads history until a short page) before giving up."""
RETRY_DELAY = 0.05
"""Seconds before round n+1 (times n): the gap's rows are still committing."""


class Row(Protocol):
    """A message read from PostgreSQL, as far as ordering is concerned."""

    @property
    def seq(self) -> int: ...


R = TypeVar("R", bound=Row)


# --- answers ----------------------------------------------------------------------------------

class _SendNow(enum.Enum):
    SEND_NOW = "send now"


SEND_NOW: Final = _SendNow.SEND_NOW
"""``live``'s answer when the event's frame goes out now (a constant: nothing is allocated)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Queue a live event's frame (no waiting: a full queue means a slow consumer)."""

    event: Event
    frame: str


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read the page of ``conversation_id``'s messages after ``after`` (in ``delay`` seconds),
    then call ``history_page`` and ``history_sent``."""

    conversation_id: str
    after: int
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Resumed:
    """The conversation's catch-up is complete up to ``seq``; live events follow."""

    conversation_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class CatchUpFailed:
    """PostgreSQL never returned the messages up to ``missing_up_to``: close the connection."""

    conversation_id: str
    missing_up_to: int


class SlowConsumer:
    """Too many events held before the client's first frame: close with 4008."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SLOW_CONSUMER"


SLOW_CONSUMER: Final = SlowConsumer()

Action = Send | Fetch | Resumed | CatchUpFailed | SlowConsumer
LiveAnswer = Literal[_SendNow.SEND_NOW] | Fetch | SlowConsumer | None


# --- state ------------------------------------------------------------------------------------

class Cursor:
    """Delivery state of one conversation on one connection."""

    __slots__ = ("announce", "delivered", "filling", "held", "high_water", "more", "rounds")

    def __init__(self, delivered: int, filling: bool = False, announce: bool = False) -> None:
        self.delivered = delivered
        self.filling = filling
        self.held: list[tuple[Event, str]] = []
        self.high_water = delivered
        """The highest seq seen while filling (held, or dropped because ``held`` was full)."""
        self.announce = announce
        """Whether the fill ends with ``Resumed`` (a resume's fill does, a gap's does not)."""
        self.more = False
        """The last page was full: read the next before releasing the held events."""
        self.rounds = 0


class Ordering:
    """The ordering state of one connection: the pending phase and a cursor per conversation."""

    __slots__ = ("_cursors", "_hold_limit", "_max_rounds", "_pending")

    def __init__(self, *, hold_limit: int, max_rounds: int = MAX_FILL_ROUNDS) -> None:
        self._hold_limit = hold_limit
        self._max_rounds = max_rounds
        self._cursors: dict[str, Cursor] = {}
        self._pending: list[tuple[Event, str]] | None = []

    @property
    def pending(self) -> bool:
        """Whether live events are still held for the client's first frame."""
        return self._pending is not None

    def cursor(self, conversation_id: str) -> Cursor | None:
        return self._cursors.get(conversation_id)

    # --- inputs -------------------------------------------------------------------------------

    def live(self, event: Event, frame: str) -> LiveAnswer:
        """A live event for this connection; ``frame`` is its encoded frame."""
        pending = self._pending
        if pending is not None:
            if len(pending) >= self._hold_limit:
                return SLOW_CONSUMER
            pending.append((event, frame))
            return None
        if event.type not in ORDERED_TYPES:
            return SEND_NOW
        cid = event.conversation_id
        cursor = self._cursors.get(cid)
        if cursor is None:
            # First event of a conversation the client gave no position for: start here.
            self._cursors[cid] = Cursor(event.seq)
            return SEND_NOW
        if cursor.filling:
            self._hold(cursor, event, frame)
            return None
        seq = event.seq
        if seq <= cursor.delivered:
            return None  # duplicate (at-least-once publishing, or already sent from PostgreSQL)
        if seq == cursor.delivered + 1:
            cursor.delivered = seq
            return SEND_NOW
        cursor.filling = True
        cursor.rounds = 0
        self._hold(cursor, event, frame)
        return Fetch(cid, cursor.delivered)

    def end_pending(self) -> list[Action]:
        """The client's first frame came (or the wait for it ended): route what was held."""
        pending, self._pending = self._pending, None
        actions: list[Action] = []
        for event, frame in pending or ():
            step = self.live(event, frame)
            if step is SEND_NOW:
                actions.append(Send(event, frame))
            elif isinstance(step, Fetch):  # (never SlowConsumer: nothing is pending any more)
                actions.append(step)
        return actions

    def resume(self, positions: Mapping[str, int]) -> list[Action]:
        """The client's last seen seqs (of conversations it is a member of); ends pending.

        A conversation this connection has not delivered yet is caught up from its position.
        For one already being delivered, a position ahead of it moves it forward, and a
        position behind it changes nothing: the order already sent on this connection is kept.
        """
        actions: list[Action] = []
        for cid, position in positions.items():
            cursor = self._cursors.get(cid)
            if cursor is None:
                self._cursors[cid] = Cursor(position, filling=True, announce=True)
                actions.append(Fetch(cid, position))
            elif not cursor.filling and position > cursor.delivered:
                cursor.delivered = cursor.high_water = position
        actions += self.end_pending()
        return actions

    def forget(self, conversation_id: str) -> None:
        """The user left the conversation: a later return to it starts from its first event
        then (no catch-up across the time away)."""
        cursor = self._cursors.get(conversation_id)
        if cursor is not None and not cursor.filling:
            del self._cursors[conversation_id]

    def abandon(self, conversation_id: str) -> None:
        """The user is no longer a member: drop the conversation, held events included."""
        self._cursors.pop(conversation_id, None)

    def history_page(self, conversation_id: str, rows: Sequence[R], more: bool) -> list[R]:
        """The rows of a page to send now, in order; live events stay held meanwhile.

        ``more``: the page was full, so another may follow. Rows come after the ``Fetch``'s
        position in seq order (the query's promise); one at or below what was delivered since
        is left out.
        """
        cursor = self._cursors[conversation_id]
        cursor.more = more
        out: list[R] = []
        for row in rows:
            if row.seq > cursor.delivered:
                cursor.delivered = row.seq
                out.append(row)
        return out

    def history_sent(self, conversation_id: str) -> list[Action]:
        """The page's rows are queued: the next page, or the held events and the outcome."""
        cursor = self._cursors[conversation_id]
        if cursor.more:
            return [Fetch(conversation_id, cursor.delivered)]
        actions: list[Action] = []
        held = sorted(cursor.held, key=_seq_of)
        cursor.held = []
        for i, (event, frame) in enumerate(held):
            if event.seq <= cursor.delivered:
                continue
            if event.seq != cursor.delivered + 1:
                cursor.held = held[i:]
                break
            cursor.delivered = event.seq
            actions.append(Send(event, frame))
        if not cursor.held and cursor.delivered >= cursor.high_water:
            cursor.filling = False
            if cursor.announce:
                cursor.announce = False
                actions.append(Resumed(conversation_id, cursor.delivered))
            return actions
        cursor.rounds += 1
        if cursor.rounds >= self._max_rounds:
            actions.append(CatchUpFailed(conversation_id, cursor.high_water))
        else:
            actions.append(Fetch(conversation_id, cursor.delivered,
                                 RETRY_DELAY * cursor.rounds))
        return actions

    def _hold(self, cursor: Cursor, event: Event, frame: str) -> None:
        if event.seq > cursor.high_water:
            cursor.high_water = event.seq
        if len(cursor.held) < self._hold_limit:
            cursor.held.append((event, frame))
        # else: dropped here, and read from PostgreSQL instead (high_water says how far).


def _seq_of(item: tuple[Event, str]) -> int:
    return item[0].seq
