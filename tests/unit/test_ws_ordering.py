"""The WebSocket gateway's per-conversation ordering and resume (chat_ws_gateway.ordering), driven
directly: no sockets, no PostgreSQL, no event loop.

The examples pin each rule; the property test plays random interleavings of what the system can
produce (commits, stream entries with drops and re-publications, conversation.read events,
history reads racing live events, the resume frame before or after the resume wait) and checks
what a client sees: per conversation each seq once, in order, from its resume position, and
after the dust settles everything it was told about and everything committed before it resumed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from chat_shared.events import (
    CONVERSATION_READ,
    CONVERSATION_UPDATED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    MEMBER_ROLE_CHANGED,
    MESSAGE_CREATED,
    MESSAGE_DELETED,
    MESSAGE_UPDATED,
    REACTION_ADDED,
    REACTION_REMOVED,
    Event,
)
from chat_ws_gateway.ordering import (
    MAX_FILL_ROUNDS,
    RETRY_DELAY,
    SEND_NOW,
    SLOW_CONSUMER,
    Action,
    CatchUpFailed,
    Fetch,
    Ordering,
    Resumed,
    Send,
)

A, B = "a" * 8 + "-0000-4000-8000-" + "0" * 12, "b" * 8 + "-0000-4000-8000-" + "0" * 12
NOW = datetime(2026, 11, 27, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    seq: int


def msg(cid: str, seq: int) -> Event:
    return Event(str(uuid.uuid4()), MESSAGE_CREATED, cid, seq, NOW, ["u"])


def read_event(cid: str, seq: int = 1) -> Event:
    return Event(str(uuid.uuid4()), CONVERSATION_READ, cid, seq, NOW, ["u"])


def frame(event: Event) -> str:
    return f"{event.type}:{event.conversation_id[:1]}:{event.seq}"


def live(order: Ordering, event: Event) -> object:
    return order.live(event, frame(event))


def sent_seqs(actions: list[Action]) -> list[int]:
    return [a.event.seq for a in actions if isinstance(a, Send)]


def started(hold_limit: int = 100) -> Ordering:
    order = Ordering(hold_limit=hold_limit)
    assert order.end_pending() == []
    return order


# --- the rules, one by one --------------------------------------------------------------------

def test_in_order_events_go_out_at_once_and_duplicates_are_dropped() -> None:
    order = started()
    first = msg(A, 5)
    assert live(order, first) is SEND_NOW  # no position given: the conversation starts here
    assert live(order, msg(A, 6)) is SEND_NOW
    assert live(order, first) is None
    assert live(order, msg(A, 6)) is None  # same seq, another event id: still a duplicate
    assert live(order, msg(B, 1)) is SEND_NOW  # conversations are independent
    assert order.cursor(A).delivered == 6  # type: ignore[union-attr]


def test_every_ordered_change_type_shares_the_conversations_positions() -> None:
    order = started()
    kinds = [MESSAGE_CREATED, REACTION_ADDED, MESSAGE_UPDATED, MEMBER_ADDED, MEMBER_REMOVED,
             MEMBER_ROLE_CHANGED, CONVERSATION_UPDATED, REACTION_REMOVED, MESSAGE_DELETED]
    for pos, kind in enumerate(kinds, 1):
        assert live(order, Event(str(uuid.uuid4()), kind, A, pos, NOW, ["u"])) is SEND_NOW
    # A change of any type beyond the next position is a gap, a repeated one a duplicate.
    assert live(order, Event(str(uuid.uuid4()), REACTION_ADDED, A, 9, NOW, ["u"])) is None
    assert live(order, Event(str(uuid.uuid4()), MEMBER_ADDED, A, 11, NOW, ["u"])) == Fetch(A, 9)


def test_a_conversation_left_starts_afresh_at_the_first_event_of_a_return() -> None:
    order = started()
    live(order, msg(A, 1))
    order.forget(A)
    assert live(order, Event(str(uuid.uuid4()), MEMBER_ADDED, A, 7, NOW, ["u"])) is SEND_NOW
    assert live(order, msg(A, 8)) is SEND_NOW


def test_a_gap_holds_live_events_reads_history_then_releases_them_in_seq_order() -> None:
    order = started()
    live(order, msg(A, 1))
    assert live(order, msg(A, 4)) == Fetch(A, 1)
    assert live(order, msg(A, 6)) is None
    assert live(order, msg(A, 5)) is None
    assert live(order, msg(A, 2)) is None  # even the next one waits: history is being read
    assert order.history_page(A, [Row(2), Row(3)], more=False) == [Row(2), Row(3)]
    assert live(order, msg(A, 7)) is None  # rows still queueing: live events still wait
    actions = order.history_sent(A)
    assert sent_seqs(actions) == [4, 5, 6, 7] and len(actions) == 4  # no Resumed for a gap
    assert live(order, msg(A, 8)) is SEND_NOW


def test_full_pages_are_read_one_after_another_before_anything_is_released() -> None:
    order = started()
    live(order, msg(A, 1))
    assert live(order, msg(A, 6)) == Fetch(A, 1)
    assert order.history_page(A, [Row(2), Row(3)], more=True) == [Row(2), Row(3)]
    assert order.history_sent(A) == [Fetch(A, 3)]
    assert order.history_page(A, [Row(4), Row(5), Row(6)], more=False) == [Row(4), Row(5),
                                                                            Row(6)]
    assert order.history_sent(A) == []  # the held 6 came from PostgreSQL already
    assert live(order, msg(A, 7)) is SEND_NOW


def test_rows_at_or_below_what_was_delivered_are_left_out() -> None:
    order = started()
    order.resume({A: 3})
    assert order.history_page(A, [Row(2), Row(3), Row(4)], more=False) == [Row(4)]


def test_events_beyond_what_history_had_start_another_round_after_a_delay_then_give_up() -> None:
    order = started()
    live(order, msg(A, 1))
    assert live(order, msg(A, 4)) == Fetch(A, 1)
    for round_ in range(1, MAX_FILL_ROUNDS):
        order.history_page(A, [], more=False)  # 2 and 3 not visible yet
        assert order.history_sent(A) == [Fetch(A, 1, RETRY_DELAY * round_)]
    order.history_page(A, [], more=False)
    assert order.history_sent(A) == [CatchUpFailed(A, 4)]


def test_a_later_round_finds_the_rows_that_were_committing() -> None:
    order = started()
    live(order, msg(A, 1))
    live(order, msg(A, 4))
    order.history_page(A, [Row(2)], more=False)
    assert order.history_sent(A) == [Fetch(A, 2, RETRY_DELAY)]
    order.history_page(A, [Row(3)], more=False)
    assert sent_seqs(order.history_sent(A)) == [4]


def test_events_beyond_the_hold_limit_are_dropped_and_read_from_history_instead() -> None:
    order = started(hold_limit=2)
    live(order, msg(A, 1))
    assert live(order, msg(A, 3)) == Fetch(A, 1)
    for seq in (4, 5, 6):  # 5 and 6 do not fit
        assert live(order, msg(A, seq)) is None
    order.history_page(A, [Row(2)], more=False)  # read before 3.. were committed
    actions = order.history_sent(A)
    assert sent_seqs(actions) == [3, 4]
    assert actions[-1] == Fetch(A, 4, RETRY_DELAY)  # 5 and 6 were seen: read them
    assert order.history_page(A, [Row(5), Row(6)], more=False) == [Row(5), Row(6)]
    assert order.history_sent(A) == []
    assert live(order, msg(A, 7)) is SEND_NOW


def test_resume_catches_up_from_the_position_and_announces_the_seam() -> None:
    order = Ordering(hold_limit=10)
    assert live(order, msg(A, 9)) is None  # pending: held until the client's first frame
    assert order.resume({A: 5, B: 0}) == [Fetch(A, 5), Fetch(B, 0)]
    assert order.history_page(A, [Row(6), Row(7), Row(8)], more=False) == [Row(6), Row(7),
                                                                            Row(8)]
    assert live(order, msg(A, 10)) is None
    actions = order.history_sent(A)
    assert sent_seqs(actions) == [9, 10]
    assert actions[-1] == Resumed(A, 10)
    order.history_page(B, [], more=False)
    assert order.history_sent(B) == [Resumed(B, 0)]
    assert live(order, msg(B, 1)) is SEND_NOW


def test_a_resume_after_delivery_started_moves_forward_only_and_not_while_filling() -> None:
    order = started()
    live(order, msg(A, 3))
    assert order.resume({A: 1}) == []  # behind what was sent: the order sent is kept
    assert live(order, msg(A, 4)) is SEND_NOW
    assert order.resume({A: 8}) == []  # ahead: the client has those already
    assert live(order, msg(A, 8)) is None
    assert live(order, msg(A, 9)) is SEND_NOW
    assert live(order, msg(A, 12)) == Fetch(A, 9)
    assert order.resume({A: 20}) == []  # filling: the fill decides
    assert order.cursor(A).delivered == 9  # type: ignore[union-attr]


def test_the_pending_phase_holds_everything_in_arrival_order_up_to_the_limit() -> None:
    order = Ordering(hold_limit=3)
    events = [msg(A, 1), read_event(A), msg(A, 2)]
    for event in events:
        assert live(order, event) is None
    assert order.pending
    assert live(order, msg(A, 3)) is SLOW_CONSUMER  # a fourth: the client is not reading
    assert order.end_pending() == [Send(e, frame(e)) for e in events]
    assert not order.pending
    assert order.end_pending() == []


def test_the_pending_phase_routes_a_gap_like_a_live_one() -> None:
    order = Ordering(hold_limit=10)
    for seq in (1, 3, 4):
        live(order, msg(A, seq))
    actions = order.end_pending()
    assert sent_seqs(actions) == [1] and actions[1:] == [Fetch(A, 1)]


def test_conversation_read_events_are_not_ordered_and_never_held_after_pending() -> None:
    order = started()
    live(order, msg(A, 1))
    live(order, msg(A, 3))  # A is filling
    assert live(order, read_event(A, 2)) is SEND_NOW
    assert live(order, read_event(A, 2)) is SEND_NOW  # no dedupe here: the hub does it by id
    assert live(order, read_event(B)) is SEND_NOW  # and no cursor for them
    assert order.cursor(B) is None


# --- random interleavings ---------------------------------------------------------------------

@dataclass
class Task:
    """A catch-up task of the driver: a fetch to read, a page to resume with, rows to queue."""

    cid: str
    fetch: Fetch
    rows: list[Row] | None = None
    to_send: list[Row] | None = None


@dataclass
class Conversation:
    committed: int
    next_entry: int
    """The next seq the stream will carry (entries before it were published before connect)."""
    entries: list[int] = field(default_factory=list)
    reads: int = 0


@dataclass
class Client:
    """What the socket's peer has seen, checked frame by frame."""

    last: dict[str, int] = field(default_factory=dict)
    """Per conversation: the last seq received, or the resume position it started from."""
    reads: dict[str, int] = field(default_factory=dict)
    resumed: dict[str, int] = field(default_factory=dict)
    frames: int = 0

    def message(self, cid: str, seq: int) -> None:
        if cid in self.last:
            assert seq == self.last[cid] + 1, f"{cid[:1]}: got {seq} after {self.last[cid]}"
        self.last[cid] = seq
        self.frames += 1


class Simulation:
    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.hold_limit = data.draw(st.integers(1, 6), "hold_limit")
        self.page_size = data.draw(st.integers(1, 4), "page_size")
        # Rounds without a limit: in this world every catch-up completes once commits stop, so
        # a catch-up that gives up would hide a fault (the limit has its own example above).
        self.order = Ordering(hold_limit=self.hold_limit, max_rounds=10**9)
        self.convs: dict[str, Conversation] = {}
        for cid in (A, B):
            committed = data.draw(st.integers(0, 6))
            self.convs[cid] = Conversation(committed, data.draw(st.integers(1, committed + 1)))
        self.client = Client()
        self.tasks: list[Task] = []
        self.timer_armed = True
        self.fresh_resumes: dict[str, int] = {}
        """Conversations caught up from a resume position: the committed seq at resume time."""
        self.closed = ""

    # --- the world ---

    def commit(self) -> None:
        self.convs[self.pick_conversation()].committed += 1

    def publish(self) -> None:
        """The stream's next entry: in seq order, possibly after dropped ones (trimmed, lost)."""
        cid = self.pick_conversation()
        conv = self.convs[cid]
        seq = conv.next_entry + self.data.draw(st.sampled_from([0, 0, 0, 1, 2]), "dropped")
        if seq > conv.committed:
            return  # only committed messages are published
        conv.next_entry = seq + 1
        conv.entries.append(seq)
        self.deliver(msg(cid, seq))

    def replay(self) -> None:
        """A dead-lettered entry replayed: its first publication, after newer ones."""
        cid = self.pick_conversation()
        conv = self.convs[cid]
        skipped = sorted(set(range(1, conv.next_entry)) - set(conv.entries))
        if skipped:
            seq = self.data.draw(st.sampled_from(skipped), "replayed")
            conv.entries.append(seq)
            self.deliver(msg(cid, seq))

    def republish(self) -> None:
        """At-least-once: an entry already published, again, after newer ones."""
        cid = self.pick_conversation()
        if self.convs[cid].entries:
            self.deliver(msg(cid, self.data.draw(st.sampled_from(self.convs[cid].entries))))

    def read_position(self) -> None:
        cid = self.pick_conversation()
        self.convs[cid].reads += 1
        self.deliver(read_event(cid))

    def pick_conversation(self) -> str:
        return self.data.draw(st.sampled_from([A, B]), "conversation")

    # --- the client and its timer ---

    def resume_wait_ends(self) -> None:
        if self.timer_armed:
            self.timer_armed = False
            self.act(self.order.end_pending())

    def send_resume(self) -> None:
        """A resume frame: usually the first frame, but a client may send one at any time."""
        positions = self.data.draw(st.dictionaries(st.sampled_from([A, B]), st.integers(0, 8),
                                                   max_size=2), "positions")
        self.timer_armed = False
        for cid, position in positions.items():
            cursor = self.order.cursor(cid)
            if cursor is None:
                self.client.last[cid] = position
                self.fresh_resumes[cid] = self.convs[cid].committed
            elif not cursor.filling and position > cursor.delivered:
                self.client.last[cid] = position  # the client said it has those
        self.act(self.order.resume(positions))

    # --- the driver ---

    def deliver(self, event: Event) -> None:
        step = self.order.live(event, frame(event))
        if step is SEND_NOW:
            self.sent(event)
        elif step is not None:
            self.act([step])

    def act(self, actions: list[Action]) -> None:
        for action in actions:
            if self.closed:
                return
            match action:
                case Send(event, _):
                    self.sent(event)
                case Fetch():
                    self.tasks.append(Task(action.conversation_id, action))
                case Resumed(cid, seq):
                    assert self.client.last[cid] == seq, "resumed before the catch-up was sent"
                    assert cid not in self.client.resumed
                    self.client.resumed[cid] = seq
                case CatchUpFailed():
                    raise AssertionError(f"catch-up failed: {action}")
                case _:
                    self.closed = "slow consumer"

    def sent(self, event: Event) -> None:
        if event.type == MESSAGE_CREATED:
            self.client.message(event.conversation_id, event.seq)
        else:
            self.client.reads[event.conversation_id] = \
                self.client.reads.get(event.conversation_id, 0) + 1

    def advance_task(self) -> None:
        """One step of one catch-up task: read, resume with the page, queue a row, or finish."""
        if not self.tasks:
            return
        task = self.tasks[self.data.draw(st.integers(0, len(self.tasks) - 1), "task")]
        self.step(task)

    def step(self, task: Task) -> None:
        if task.rows is None and task.to_send is None:
            # The read's snapshot: the committed rows after the position, one page.
            end = min(task.fetch.after + self.page_size, self.convs[task.cid].committed)
            task.rows = [Row(s) for s in range(task.fetch.after + 1, end + 1)]
        elif task.to_send is None:
            assert task.rows is not None
            task.to_send = self.order.history_page(task.cid, task.rows,
                                                   len(task.rows) >= self.page_size)
        elif task.to_send:
            self.client.message(task.cid, task.to_send.pop(0).seq)
        else:
            self.tasks.remove(task)
            actions = self.order.history_sent(task.cid)
            self.act(actions)

    # --- checks ---

    def check_settled(self) -> None:
        """Nothing left to do: what the client has must be complete."""
        assert not self.tasks
        for cid, conv in self.convs.items():
            cursor = self.order.cursor(cid)
            assert cursor is None or not cursor.filling
            told = max(conv.entries, default=0)
            if cid in self.client.last:
                assert self.client.last[cid] >= told, f"{cid[:1]}: {told} never arrived"
            else:
                assert not conv.entries  # a conversation with events has a cursor
            if cid in self.fresh_resumes:
                assert self.client.last[cid] >= self.fresh_resumes[cid]
                assert cid in self.client.resumed
            assert self.client.reads.get(cid, 0) == conv.reads


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_interleavings_deliver_each_seq_once_and_in_order(data: st.DataObject) -> None:
    sim = Simulation(data)
    ops = [sim.commit, sim.commit, sim.publish, sim.publish, sim.publish, sim.republish,
           sim.replay, sim.read_position, sim.advance_task, sim.advance_task, sim.advance_task,
           sim.resume_wait_ends, sim.send_resume]
    for _ in range(data.draw(st.integers(0, 60), "steps")):
        data.draw(st.sampled_from(ops), "op")()
        if sim.closed:
            return  # too much held before the first frame: closed, the client resumes
    # Quiet: the resume wait ends, the catch-up tasks finish (each step is bounded).
    sim.resume_wait_ends()
    for _ in range(10_000):
        if not sim.tasks:
            break
        sim.step(sim.tasks[0])
    sim.check_settled()
