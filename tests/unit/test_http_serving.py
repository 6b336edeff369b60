"""The rate limit of the parse-error log line, with its clock in hand."""

from __future__ import annotations

from chat_shared.http_serving import RateLimit


def test_at_most_burst_per_interval_and_the_next_one_counts_the_rest() -> None:
    now = [100.0]
    limit = RateLimit(3, 60.0, clock=lambda: now[0])
    assert [limit.allow() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] = 159.9
    assert limit.allow() == (False, 0)  # still the same window
    now[0] = 160.0
    assert limit.allow() == (True, 3)
    assert limit.allow() == (True, 0)


def test_nothing_refused_means_nothing_to_count() -> None:
    now = [0.0]
    limit = RateLimit(2, 1.0, clock=lambda: now[0])
    for step in range(10):
        now[0] = step * 1.0
        assert limit.allow() == (True, 0)
