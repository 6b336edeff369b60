"""The gateway's to-device pushes decided without I/O: ``chat_ws_gateway.to_device.Mailbox`` (when a
device's socket reads its mailbox, from where) and the hub's routing of ``to_device.created``.

The examples pin each rule; the property test plays random interleavings of what the system can
produce (messages committing in id order, their announcements delayed, duplicated or lost,
acknowledgements deleting messages at any moment, reads seeing the mailbox as it was when they
started, page by page) and checks what the device's socket receives: each message at most
once, in id order, and, once the announcements are in and the reads done, every message that
was not acknowledged before a read could see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from chat_shared.events import TO_DEVICE_CREATED, Event
from chat_ws_gateway.hub import Hub
from chat_ws_gateway.to_device import Mailbox

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_first_read_is_due_at_once_and_reads_everything():
    box = Mailbox()
    assert box.reading
    assert box.announce(3) is False  # the first read will see it
    assert box.next_read() == 0
    assert box.page_read(3, full=False) is False
    assert (box.sent_up_to, box.reading) == (3, False)


def test_an_announcement_starts_a_read_unless_one_is_running_or_it_was_sent():
    box = Mailbox()
    box.next_read()
    box.page_read(None, full=False)
    assert box.announce(5) is True
    assert box.announce(6) is False  # the running read (or the next) covers it
    assert box.next_read() == 0
    assert box.page_read(6, full=False) is False
    assert box.announce(6) is False  # a duplicate publication
    assert box.announce(4) is False  # below the cursor: sent already
    assert not box.reading


def test_an_announcement_during_a_read_reads_again():
    box = Mailbox()
    assert box.next_read() == 0
    assert box.announce(9) is False  # the read started before 9 committed
    assert box.page_read(8, full=False) is True
    assert box.next_read() == 8
    assert box.page_read(9, full=False) is False


def test_an_announced_message_acknowledged_before_the_read_ends_the_reading():
    # Message 7 was acknowledged (deleted) before the read: the page is empty, and the cursor
    # moves past 7 anyway instead of reading forever.
    box = Mailbox()
    box.next_read()
    box.page_read(None, full=False)
    assert box.announce(7) is True
    box.next_read()
    assert box.page_read(None, full=False) is False
    assert box.sent_up_to == 7


def test_a_periodic_check_reads_unless_a_read_is_running_and_finds_unannounced_messages():
    box = Mailbox()
    assert box.recheck() is False  # the first read is running: it checks the device too
    box.next_read()
    box.page_read(None, full=False)
    assert box.recheck() is True
    assert box.recheck() is False  # that read is running now
    assert box.announce(4) is False  # and covers what is announced meanwhile
    assert box.next_read() == 0
    # The read found 3 and 4, whose announcements had not arrived (or were lost).
    assert box.page_read(4, full=False) is False
    assert (box.sent_up_to, box.reading) == (4, False)
    assert box.announce(3) is False  # a late announcement: sent already
    assert box.recheck() is True
    # That read fails (PostgreSQL away) after 5 was announced: the next check reads from the
    # same cursor and covers 5.
    box.next_read()
    assert box.announce(5) is False
    box.failed()
    assert box.recheck() is True
    assert box.next_read() == 4
    assert box.page_read(5, full=False) is False
    assert (box.sent_up_to, box.reading) == (5, False)


def test_a_full_page_is_followed_by_the_next():
    box = Mailbox()
    assert box.next_read() == 0
    assert box.page_read(100, full=True) is True
    assert box.next_read() == 100
    assert box.page_read(130, full=False) is False


@dataclass
class _World:
    """The mailbox of one device as PostgreSQL holds it, and what its socket received."""

    page: int
    committed: list[int] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)
    announcements: list[int] = field(default_factory=list)
    """Published, not yet read by the gateway."""
    lost: set[int] = field(default_factory=set)
    """Announcements the stream lost (Redis lost entries)."""
    received: list[int] = field(default_factory=list)
    snapshot: list[int] | None = None
    """The rows the running read returns (the mailbox when it started), None: no read running."""

    def rows_after(self, after: int) -> list[int]:
        return [i for i in self.committed if i > after and i not in self.deleted][:self.page]


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 3), st.lists(st.tuples(st.sampled_from(
    ["commit", "announce", "duplicate", "lose", "start", "finish", "ack"]),
    st.integers(0, 50)), max_size=80))
def test_every_message_reaches_the_socket_once_in_order_unless_acknowledged(page, steps):
    w = _World(page)
    box = Mailbox()
    due = True  # the connection starts the first read at connect

    def finish() -> None:
        nonlocal due
        assert w.snapshot is not None
        rows, w.snapshot = w.snapshot, None
        w.received.extend(rows)
        due = box.page_read(rows[-1] if rows else None, len(rows) >= w.page)

    for kind, n in steps:
        if kind == "commit":
            w.committed.append(len(w.committed) + 1)
            w.announcements.append(len(w.committed))
        elif kind in ("announce", "duplicate", "lose") and w.announcements:
            i = w.announcements.pop(n % len(w.announcements))
            if kind == "duplicate":
                w.announcements.append(i)
            if kind == "lose":
                w.lost.add(i)
            elif box.announce(i):
                assert not due and w.snapshot is None, "a second read while one runs"
                due = True
        elif kind == "start" and due and w.snapshot is None:
            w.snapshot = w.rows_after(box.next_read())
            due = False
        elif kind == "finish" and w.snapshot is not None:
            finish()
        elif kind == "ack" and w.committed:
            # The client acknowledges up to a message it has seen, or (through another
            # socket of the device) up to any committed one.
            up_to = w.committed[n % len(w.committed)]
            w.deleted.update(i for i in w.committed if i <= up_to)

    # Settle: every announcement still in flight arrives, and the reads run to their end.
    for i in list(w.announcements):
        w.announcements.remove(i)
        if box.announce(i):
            due = True
    for _ in range(1000):
        if w.snapshot is not None:
            finish()
        elif due:
            w.snapshot = w.rows_after(box.next_read())
            due = False
        else:
            break
    assert w.received == sorted(set(w.received)), "a duplicate or out of order"
    waiting = [i for i in w.committed if i not in w.received and i not in w.deleted]
    # Still waiting only when the stream lost its announcement (and no later read passed it):
    # the next connection's first read delivers it.
    assert set(waiting) <= w.lost, waiting
    assert not box.reading


class _Socket:
    """What the hub sees of a connection."""

    def __init__(self, tenant: str, user: str, device: str | None) -> None:
        self.tenant_id, self.user_id, self.device_id = tenant, user, device
        self.announced: list[int] = []
        self.delivered: list[str] = []

    def announce_to_device(self, message_id: int) -> None:
        self.announced.append(message_id)

    def deliver(self, event: Event, frame: str) -> None:
        self.delivered.append(event.type)


def test_the_hub_announces_a_to_device_message_to_its_devices_sockets_only():
    hub = Hub()
    target = _Socket("default", "bob", "phone")
    twin = _Socket("default", "bob", "phone")  # the same device on a second socket
    sockets = [target, twin, _Socket("default", "bob", "laptop"), _Socket("default", "bob", None),
               _Socket("default", "alice", "phone"), _Socket("acme", "bob", "phone")]
    for s in sockets:
        hub.add(s)  # type: ignore[arg-type]
    event = Event("e1", TO_DEVICE_CREATED, "c" * 8 + "-0000-4000-8000-" + "0" * 12, 41, NOW,
                  ["bob"], {"id": 41, "recipient_id": "bob", "recipient_device": "phone"})
    assert hub.dispatch(event) == 2
    assert hub.dispatch(event) == 0  # the same event_id again: dropped
    for s in sockets:
        assert s.announced == ([41] if s in (target, twin) else []), (s.tenant_id, s.user_id,
                                                                     s.device_id)
        assert s.delivered == []
