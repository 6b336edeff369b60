"""The rate-limit arithmetic (GCRA), the tenant overrides and the headers, without I/O."""

from __future__ import annotations

import pytest

from chat_shared.ratelimit import (
    ClassLimits,
    Decision,
    Limit,
    LocalLimiter,
    RateLimitSettings,
    gcra_step,
    headers,
    policy_from_settings,
    tenant_overrides,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_at_once_then_the_rate_holds() -> None:
    clock = Clock()
    local = LocalLimiter(clock)
    send = Limit(10, 30)
    results = [local.check("k", send) for _ in range(31)]
    assert [d.allowed for d in results] == [True] * 30 + [False]
    assert [d.remaining for d in results[:3]] == [29, 28, 27]
    assert results[-1].retry_after == pytest.approx(0.1)
    clock.now += 0.099
    assert not local.check("k", send).allowed
    clock.now += 0.001
    assert local.check("k", send).allowed
    assert not local.check("k", send).allowed  # one request per 0.1 s from here on


def test_over_a_long_run_the_rate_is_exact() -> None:
    clock = Clock()
    local = LocalLimiter(clock)
    limit = Limit(50, 100)
    allowed = 0
    start = clock.now
    for i in range(10_001):  # 1,000 requests per second for 10 s
        clock.now = start + i / 1000
        allowed += local.check("k", limit).allowed
    assert allowed == 100 + 50 * 10  # the burst plus 10 s at 50/s


def test_a_refusal_changes_nothing() -> None:
    tat = 2000.0
    ok, new_tat, retry, _ = gcra_step(tat, 1000.0, Limit(1, 1))
    assert not ok and new_tat == tat and retry == pytest.approx(1000.0)


def test_the_tenant_ceiling_binds_all_its_users_and_refuses_as_tenant() -> None:
    clock = Clock()
    local = LocalLimiter(clock)
    user, ceiling = Limit(10, 5), Limit(1, 8)
    decisions = [local.check(f"u{i % 4}", user, "tenant", ceiling) for i in range(10)]
    assert [d.allowed for d in decisions] == [True] * 8 + [False] * 2
    assert decisions[-1].scope == "tenant"
    assert decisions[-1].retry_after == pytest.approx(1.0)


def test_the_local_table_is_bounded() -> None:
    clock = Clock()
    local = LocalLimiter(clock, max_keys=100)
    for i in range(1000):
        local.check(f"k{i}", Limit(1, 1))
    assert len(local) <= 100


def test_tenant_registry_values_override_the_defaults() -> None:
    defaults = policy_from_settings(RateLimitSettings(_env_file=None))  # type: ignore[call-arg]
    own = {"rate_limit.send.rate": 2, "rate_limit.tenant.read.burst": 7}
    limits = tenant_overrides(defaults, lambda name, default: own.get(name, default))
    assert limits["send"].user == Limit(2, 30)
    assert limits["read"].user == defaults["read"].user
    assert limits["read"].tenant == Limit(5000, 7)
    assert limits["anon"] == defaults["anon"]


def test_defaults_are_what_the_docs_say() -> None:
    policy = policy_from_settings(RateLimitSettings(_env_file=None))  # type: ignore[call-arg]
    assert policy["send"] == ClassLimits(Limit(10, 30), Limit(1000, 2000))
    assert policy["read"].user == Limit(50, 100)
    assert set(policy) == {"send", "read", "write-other", "connect", "anon"}


def test_headers_in_structured_field_form() -> None:
    allowed = Decision(True, Limit(10, 30), remaining=12, reset=1.8)
    assert headers("send", allowed) == {"RateLimit-Policy": '"send";q=30;w=3',
                                        "RateLimit": '"send";r=12;t=2'}
    refused = Decision(False, Limit(10, 30), remaining=0, reset=3.0, retry_after=0.1,
                       scope="user")
    assert headers("send", refused)["Retry-After"] == "1"  # rounded up: never too early
    assert headers("send", refused)["RateLimit"] == '"send";r=0;t=3'
