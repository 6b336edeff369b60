"""When a device's socket reads its mailbox: the decision logic of to-device pushes, no I/O.

A socket opened with ``?device_id=`` receives that device's to-device messages (docs/e2ee.md):
first everything waiting in its mailbox, then each new one as it is stored. The stream event
(``to_device.created``) only *announces* a message by its mailbox id; the body is read from
PostgreSQL, so that it exists in one place only and is gone once the device acknowledges it
(AckToDeviceMessages, through the API: the gateway never writes). The connection reads
"after its cursor", page by page, and this state machine says when.

Why a cursor is enough: a device's mailbox ids grow in the order their messages commit (the
API locks the device's row before a message takes its id), and an announcement is published
only after its message committed. So

- a read that starts after message N was announced sees N and every earlier message of the
  device that still exists (the others were acknowledged meanwhile): afterwards the cursor can
  stand at N even when the read returned nothing;
- nothing committed is skipped: a message committed before the socket was registered is found
  by the first read (which starts after registration), one committed later is announced to it;
- nothing is sent twice on one socket: the cursor only moves forward, and a duplicate
  announcement (the relay publishes at least once) is at or below it.

Across sockets delivery is at least once: a reconnecting device receives again what it had
not acknowledged, and clients drop ids they have already taken.
"""

from __future__ import annotations


class Mailbox:
    """One device socket's position in its mailbox, and whether a read is due."""

    def __init__(self) -> None:
        self.sent_up_to = 0
        """Every message of the device with an id up to this one has been sent (or was
        acknowledged before it could be)."""
        self._announced = 0
        self._covered = 0
        self.reading = True
        """A read is running or due; the first one, of everything waiting, is due at once."""

    def announce(self, message_id: int) -> bool:
        """A live event announced message ``message_id``; whether to start a read now (False:
        it was sent already, or the running read, or the one it starts next, will send it)."""
        if message_id <= self.sent_up_to:
            return False
        self._announced = max(self._announced, message_id)
        if self.reading:
            return False
        self.reading = True
        return True

    def recheck(self) -> bool:
        """The periodic check of the device is due (``WS_DEVICE_CHECK_INTERVAL``): whether to
        start a read now (False: one is running, and it reads the device row too). The read
        finds a removed device (the socket closes) and anything whose announcement was lost."""
        if self.reading:
            return False
        self.reading = True
        return True

    def failed(self) -> None:
        """A periodic check's read failed (PostgreSQL unavailable): none is running now, and
        the next check or announcement reads again from the same cursor, covering whatever
        was announced meanwhile."""
        self.reading = False

    def next_read(self) -> int:
        """A read (one page) is starting; the id to read after. Every message announced by
        now has committed, so this read covers them."""
        self._covered = self._announced
        return self.sent_up_to

    def page_read(self, last_id: int | None, full: bool) -> bool:
        """The page has been sent: ``last_id`` its last message's id (None when it was
        empty), ``full`` whether it held a whole page. Whether to read again."""
        if last_id is not None:
            self.sent_up_to = max(self.sent_up_to, last_id)
        if full:
            return True
        # The page reached the end of the mailbox as it was when the read started: every
        # message announced before that was in it, or has been acknowledged since.
        self.sent_up_to = max(self.sent_up_to, self._covered)
        if self._announced > self.sent_up_to:
            return True  # announced while this page was being read
        self.reading = False
        return False
