"""chat-dev's restart delays: 1 s, 2 s, 4 s ... capped, starting over after a healthy run."""

from __future__ import annotations

from chat_devtools.supervisor import Backoff


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(first=1.0, cap=30.0)
    assert [backoff.delay(ran_for=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_run_as_long_as_the_cap_starts_the_sequence_over() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    assert [backoff.delay(ran_for=1.0) for _ in range(3)] == [1, 2, 4]
    assert backoff.delay(ran_for=8.0) == 1
    assert backoff.delay(ran_for=7.9) == 2
