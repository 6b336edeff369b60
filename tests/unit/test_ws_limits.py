"""The frame budget's and the typing throttle's arithmetic, with their clock in hand; the
typing frame's parsing."""

from __future__ import annotations

import pytest

from chat_ws_gateway import protocol
from chat_ws_gateway.limits import FrameBudget, TypingThrottle


def test_a_second_worth_at_once_then_the_rate() -> None:
    now = [0.0]
    budget = FrameBudget(5, clock=lambda: now[0])
    assert [budget.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] = 0.2  # one token back
    assert [budget.take(), budget.take()] == [True, False]
    now[0] = 100.0  # never more than one second's worth held
    assert sum(budget.take() for _ in range(10)) == 5


def test_zero_means_no_limit() -> None:
    budget = FrameBudget(0, clock=lambda: 0.0)
    assert all(budget.take() for _ in range(10_000))


def test_typing_passes_once_per_key_and_window() -> None:
    now = [0.0]
    throttle = TypingThrottle(3.0, clock=lambda: now[0])
    assert [throttle.allow(("alice", "c1")) for _ in range(4)] == [True, False, False, False]
    assert throttle.allow(("alice", "c2")) and throttle.allow(("bob", "c1"))
    now[0] = 2.999
    assert not throttle.allow(("alice", "c1"))
    now[0] = 3.0  # the window is over: the next signal opens a new one
    assert [throttle.allow(("alice", "c1")), throttle.allow(("alice", "c1"))] == [True, False]


def test_the_typing_table_forgets_passed_windows_when_full() -> None:
    now = [0.0]
    throttle = TypingThrottle(1.0, clock=lambda: now[0], max_keys=3)
    for key in ("a", "b", "c"):
        assert throttle.allow(key)
    now[0] = 5.0
    assert throttle.allow("d")
    assert len(throttle._until) == 1  # a, b and c had passed
    assert not throttle.allow("d")


def test_a_typing_frame_names_a_conversation() -> None:
    cid = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
    frame = protocol.parse_client_frame(
        f'{{"type": "typing", "conversation_id": "{cid}"}}', max_positions=10)
    assert frame == protocol.Typing(cid.lower())
    for bad in ('{"type": "typing"}', '{"type": "typing", "conversation_id": 7}',
                '{"type": "typing", "conversation_id": "x"}'):
        with pytest.raises(protocol.FrameError, match="typing.conversation_id") as err:
            protocol.parse_client_frame(bad, max_positions=10)
        assert err.value.code == protocol.BAD_FRAME
