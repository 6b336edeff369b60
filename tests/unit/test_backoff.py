"""The shared retry policy: exponential, capped, jittered, started over on success."""

from __future__ import annotations

import pytest

from chat_shared.backoff import Backoff


def test_without_jitter_the_delays_double_up_to_the_cap() -> None:
    retry = Backoff(0.1, 1.0, jitter=False)
    assert [retry.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_reset_starts_the_delays_over() -> None:
    retry = Backoff(0.1, 1.0, jitter=False)
    for _ in range(5):
        retry.next_delay()
    retry.reset()
    assert retry.failures == 0
    assert retry.next_delay() == pytest.approx(0.1)


def test_jittered_delays_stay_between_half_the_initial_delay_and_the_ceiling() -> None:
    retry = Backoff(0.2, 3.0)
    seen = []
    for _ in range(500):
        ceiling = retry.ceiling()
        delay = retry.next_delay()
        assert 0.1 <= delay <= ceiling
        seen.append(delay)
    # Spread, not a constant: replicas that failed together do not retry together.
    assert len({round(d, 3) for d in seen[20:]}) > 50
    assert max(seen) > 2.0


def test_a_very_long_outage_does_not_overflow() -> None:
    retry = Backoff(0.1, 5.0, jitter=False)
    retry.failures = 10_000
    assert retry.next_delay() == 5.0


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1.0), (-1, 1.0), (2.0, 1.0)])
def test_nonsense_bounds_are_refused(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial, maximum)
