"""The pure recommendation algorithm: HPA behaviour semantics with a clock we pass in."""

from __future__ import annotations

from chat_relay_operator.scaling import (
    RatePolicy,
    Reading,
    Recommender,
    ScalingSpec,
    raw_recommendation,
)

SPEC = ScalingSpec(min_replicas=1, max_replicas=50, target_backlog_per_replica=100,
                   scale_down_window_seconds=60, fallback_replicas=3, failure_threshold=3)


def r(backlog: int, age: float = 0.0) -> Reading:
    return Reading(backlog=backlog, oldest_age_seconds=age)


def test_raw_is_ceil_of_backlog_over_target() -> None:
    assert raw_recommendation(r(450), current=1, spec=SPEC) == 5
    assert raw_recommendation(r(0), current=3, spec=SPEC) == 0
    assert raw_recommendation(r(1), current=3, spec=SPEC) == 1


def test_tolerance_band_keeps_current() -> None:
    # 4 replicas x 100 = 400 is the target load; 430 is 7.5% over: inside the 10% band
    assert raw_recommendation(r(430), current=4, spec=SPEC) == 4
    assert raw_recommendation(r(370), current=4, spec=SPEC) == 4
    # 450 is 12.5% over: outside, ceil(450/100) = 5
    assert raw_recommendation(r(450), current=4, spec=SPEC) == 5
    tight = ScalingSpec(target_backlog_per_replica=100, tolerance=0.0)
    assert raw_recommendation(r(430), current=4, spec=tight) == 5


def test_old_events_ask_for_more_replicas() -> None:
    spec = ScalingSpec(target_backlog_per_replica=100, oldest_age_threshold_seconds=30)
    assert raw_recommendation(r(10, age=20), current=2, spec=spec) == 1  # young: backlog rules
    assert raw_recommendation(r(10, age=31), current=2, spec=spec) == 3  # at least one more
    assert raw_recommendation(r(10, age=90), current=2, spec=spec) == 6  # 3x over -> 3x


def test_scale_up_is_immediate_but_rate_limited_per_period() -> None:
    rec = Recommender(rate=RatePolicy(period_seconds=15))
    # from 1: max(2 x 1, 1 + 4) = 5
    d = rec.decide(now=0, current=1, reading=r(3000), failures=0, spec=SPEC)
    assert (d.desired, d.limited is not None) == (5, True)
    assert "rate limit" in (d.limited or "")
    rec.record_scale(0, 1, 5)
    # within the same 15 s the period still started at 1 replica: no further growth
    assert rec.decide(now=5, current=5, reading=r(3000), failures=0, spec=SPEC).desired == 5
    # a new period starts from 5: max(10, 9) = 10
    d = rec.decide(now=15.5, current=5, reading=r(3000), failures=0, spec=SPEC)
    assert d.desired == 10
    rec.record_scale(15.5, 5, 10)
    d = rec.decide(now=31, current=10, reading=r(3000), failures=0, spec=SPEC)
    assert d.desired == 20


def test_plus_four_beats_doubling_for_small_counts_and_doubling_for_large() -> None:
    rec = Recommender()
    assert rec.decide(now=0, current=2, reading=r(9000), failures=0, spec=SPEC).desired == 6
    rec = Recommender()
    assert rec.decide(now=0, current=10, reading=r(9000), failures=0, spec=SPEC).desired == 20


def test_clamped_to_max_and_min() -> None:
    spec = ScalingSpec(min_replicas=2, max_replicas=4, target_backlog_per_replica=100,
                       scale_down_window_seconds=0)
    d = Recommender().decide(now=0, current=3, reading=r(10_000), failures=0, spec=spec)
    assert d.desired == 4 and "maxReplicas" in (d.limited or "")
    rec = Recommender()
    rec.decide(now=0, current=3, reading=r(0), failures=0, spec=spec)
    d = rec.decide(now=1, current=3, reading=r(0), failures=0, spec=spec)
    assert d.desired == 2 and "minReplicas" in (d.limited or "")
    # below min already (someone scaled it by hand): raised even with an empty backlog
    d = Recommender().decide(now=0, current=1, reading=r(0), failures=0, spec=spec)
    assert d.desired == 2


def test_scale_down_waits_for_window_and_takes_its_highest_recommendation() -> None:
    rec = Recommender()
    assert rec.decide(now=0, current=8, reading=r(800), failures=0, spec=SPEC).desired == 8
    # the backlog drains: 300, then 500, then 0 -> nothing moves inside the 60 s window
    for t, backlog in ((10, 300), (20, 500), (30, 0)):
        d = rec.decide(now=t, current=8, reading=r(backlog), failures=0, spec=SPEC)
        assert d.desired == 8, t
        assert "held" in d.reason
    # at 61 s the 8 from t=0 left the window; the highest left is 5 (t=20)
    assert rec.decide(now=61, current=8, reading=r(0), failures=0, spec=SPEC).desired == 5
    # at 81 s only 0s remain in the window (t=30, 61, 81) -> min
    assert rec.decide(now=81, current=5, reading=r(0), failures=0, spec=SPEC).desired == 1


def test_a_fresh_recommender_never_scales_down_at_once() -> None:
    # a restarted operator (or a new leader) seeds its window with the current count
    rec = Recommender()
    assert rec.decide(now=100, current=6, reading=r(0), failures=0, spec=SPEC).desired == 6
    assert rec.decide(now=159, current=6, reading=r(0), failures=0, spec=SPEC).desired == 6
    assert rec.decide(now=161, current=6, reading=r(0), failures=0, spec=SPEC).desired == 1


def test_scale_up_window_takes_lowest_recommendation() -> None:
    spec = ScalingSpec(target_backlog_per_replica=100, scale_up_window_seconds=30,
                       scale_down_window_seconds=0, max_replicas=20)
    rec = Recommender()
    rec.decide(now=0, current=2, reading=r(200), failures=0, spec=spec)
    # a brief spike inside the window does not scale up: the window's lowest is 2
    assert rec.decide(now=5, current=2, reading=r(900), failures=0, spec=spec).desired == 2
    assert rec.decide(now=20, current=2, reading=r(900), failures=0, spec=spec).desired == 2
    # once the low readings left the window, the lowest of the remaining is 9 (rate: 2 -> 6)
    assert rec.decide(now=31, current=2, reading=r(900), failures=0, spec=spec).desired == 6


def test_source_failure_never_scales_down_then_falls_back() -> None:
    rec = Recommender()
    assert rec.decide(now=0, current=2, reading=None, failures=1, spec=SPEC).desired == 2
    assert rec.decide(now=1, current=2, reading=None, failures=2, spec=SPEC).desired == 2
    d = rec.decide(now=2, current=2, reading=None, failures=3, spec=SPEC)
    assert d.desired == 3 and "fallback" in d.reason
    # currentReplicasIfHigher: above the fallback stays where it is
    assert rec.decide(now=3, current=9, reading=None, failures=7, spec=SPEC).desired == 9
