"""The replica recommendation: pure, clock passed in, so the HPA semantics can be unit-tested.

The rules follow the HorizontalPodAutoscaler's ``behavior`` so operators of the cluster meet no
surprises: a tolerance band around the target, scale-up stabilization taking the lowest and
scale-down stabilization taking the highest recommendation seen in the window, scale-up rate
limited to "double or +4 pods per 15 s, whichever is more", min/max clamps. On top of that, the
source-failure fallback is KEDA's ``fallback`` with ``currentReplicasIfHigher``: never scale
down on missing data, and after N consecutive failures go to the fallback count unless the
Deployment already runs more.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reading:
    """One backlog observation: rows waiting and the age of the oldest one (seconds)."""

    backlog: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class ScalingSpec:
    """The knobs of one RelayAutoscaler (its ``spec``), already defaulted and checked."""

    min_replicas: int = 1
    max_replicas: int = 10
    target_backlog_per_replica: int = 100
    oldest_age_threshold_seconds: float | None = None
    tolerance: float = 0.1
    scale_up_window_seconds: float = 0.0
    scale_down_window_seconds: float = 300.0
    fallback_replicas: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class RatePolicy:
    """The HPA's default scale-up policies: +``percent``% or +``pods`` per ``period_seconds``."""

    period_seconds: float = 15.0
    percent: int = 100
    pods: int = 4


@dataclass(frozen=True)
class Decision:
    """What to do now. ``limited`` names the bound that held the count back, if any."""

    desired: int
    reason: str
    limited: str | None = None

    @property
    def message(self) -> str:
        return self.reason if self.limited is None else f"{self.reason}; {self.limited}"


def raw_recommendation(reading: Reading, current: int, spec: ScalingSpec) -> int:
    """The count the backlog alone asks for, before stabilization, rate limits and clamps.

    ceil(backlog / target); within ``tolerance`` of the current load nothing changes (as the
    HPA's usage ratio); an oldest event above the age threshold asks for more replicas in
    proportion to how far over it is, at least one more (the backlog count alone misses a
    relay that is stuck or too slow for small but old backlogs).
    """
    target = spec.target_backlog_per_replica
    by_backlog = math.ceil(reading.backlog / target)
    if current > 0:
        ratio = reading.backlog / (target * current)
        if abs(ratio - 1.0) <= spec.tolerance:
            by_backlog = current
    by_age = 0
    threshold = spec.oldest_age_threshold_seconds
    if threshold and reading.oldest_age_seconds > threshold:
        by_age = max(current + 1, math.ceil(current * reading.oldest_age_seconds / threshold))
    return max(by_backlog, by_age)


@dataclass
class Recommender:
    """Per-autoscaler memory: recommendations and scale-ups within their windows.

    Kept in memory as the HPA does. A fresh recommender (new process, new leader) seeds its
    window with the current count at first sight, so a restart can never cause an immediate
    scale-down: it waits one full window like a long-running one would.
    """

    rate: RatePolicy = field(default_factory=RatePolicy)
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    scale_ups: deque[tuple[float, int]] = field(default_factory=deque)
    seeded: bool = False

    def decide(self, now: float, current: int, reading: Reading | None, failures: int,
               spec: ScalingSpec) -> Decision:
        """The replica count to run; ``reading`` None means the source failed ``failures``
        times in a row (this time included)."""
        if not self.seeded:
            self.recommendations.append((now, current))
            self.seeded = True
        self._prune(now, spec)
        if reading is None:
            return self._on_failure(current, failures, spec)

        raw = raw_recommendation(reading, current, spec)
        up_cut = now - spec.scale_up_window_seconds
        down_cut = now - spec.scale_down_window_seconds
        up, down = raw, raw
        for at, rec in self.recommendations:
            if at > up_cut:
                up = min(up, rec)
            if at > down_cut:
                down = max(down, rec)
        self.recommendations.append((now, raw))

        stabilized = current
        reason = f"backlog asks for {raw}"
        if stabilized < up:
            stabilized = up
        if stabilized > down:
            stabilized = down
        if raw < stabilized and stabilized == current:
            reason += f"; scale-down held by the {spec.scale_down_window_seconds:g}s window"
        elif raw > stabilized and stabilized == current:
            reason += f"; scale-up held by the {spec.scale_up_window_seconds:g}s window"
        return self._limit(current, stabilized, spec, reason)

    def record_scale(self, now: float, old: int, new: int) -> None:
        """Remembers a scale-up made, for the rate limit of the next ones."""
        if new > old:
            self.scale_ups.append((now, new - old))

    def _on_failure(self, current: int, failures: int, spec: ScalingSpec) -> Decision:
        hold = max(current, spec.min_replicas)
        if failures < spec.failure_threshold:
            return Decision(hold, f"backlog unavailable ({failures}/{spec.failure_threshold}); "
                                  "holding")
        fallback = _clamp(spec.fallback_replicas, spec)
        if hold >= fallback:
            return Decision(hold, f"backlog unavailable {failures} times; keeping {current} "
                                     f"(not below fallback {fallback})")
        return Decision(fallback, f"backlog unavailable {failures} times; fallback to {fallback}")

    def _limit(self, current: int, want: int, spec: ScalingSpec,
               reason: str) -> Decision:
        if want > current:
            added = sum(delta for _, delta in self.scale_ups)
            start = max(current - added, 0)
            rate_cap = max(math.ceil(start * (1 + self.rate.percent / 100)),
                           start + self.rate.pods, current)
            cap, why = (spec.max_replicas, f"capped at maxReplicas {spec.max_replicas}")
            if rate_cap < cap:
                cap, why = rate_cap, (f"scale-up rate limit: {rate_cap} within "
                                      f"{self.rate.period_seconds:g}s")
            if want > cap:
                return Decision(max(cap, spec.min_replicas), reason, why)
            return Decision(max(want, spec.min_replicas), reason)
        floor = spec.min_replicas
        if want < floor:
            return Decision(floor, reason, f"raised to minReplicas {floor}")
        if want > spec.max_replicas:
            return Decision(spec.max_replicas, reason, f"capped at maxReplicas {spec.max_replicas}")
        return Decision(want, reason)

    def _prune(self, now: float, spec: ScalingSpec) -> None:
        keep = max(spec.scale_up_window_seconds, spec.scale_down_window_seconds)
        while self.recommendations and self.recommendations[0][0] < now - keep:
            self.recommendations.popleft()
        while self.scale_ups and self.scale_ups[0][0] <= now - self.rate.period_seconds:
            self.scale_ups.popleft()


def _clamp(n: int, spec: ScalingSpec) -> int:
    return min(max(n, spec.min_replicas), spec.max_replicas)
