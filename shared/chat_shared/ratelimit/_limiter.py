"""The limiter the services call: Redis first, this process's memory when Redis cannot answer.

``RateLimiter.check(class, tenant, subject)`` returns a ``Decision`` for one request. Keys:

- ``chat:rl:{<tenant>}:u:<user>:<class>``: one user's budget for a class;
- ``chat:rl:{<tenant>}:t:<class>``: the tenant's ceiling for a class (all its users), checked
  in the same script; the ``{tenant}`` hash tag keeps both in one Redis Cluster slot;
- ``chat:rl:{ip:<address>}:anon``: requests from one client address whose credentials were
  missing or refused (``anonymous``), so guessing tokens is slow.

Refusals are cheap: a refusal says when the key lets a request through again, and until then
this process refuses the same key from memory without asking Redis (nothing but time can change
a GCRA refusal). Limited clients are logged at most once a minute each; every decision is
counted in ``chat_ratelimit_requests_total{class,result}`` (allowed, limited, fail_open) and a
tenant's ceiling refusals in ``chat_ratelimit_tenant_ceiling_total{tenant,class}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Counter

from chat_shared.observability.logging import get_logger
from chat_shared.ratelimit._gcra import Decision, Limit, LocalLimiter
from chat_shared.ratelimit._redis import RedisGcra, RedisUnavailable
from chat_shared.ratelimit.settings import RateLimitSettings

__all__ = ["ANONYMOUS", "CLASSES", "LIMIT_NAMES", "ClassLimits", "RateLimiter",
           "policy_from_settings", "tenant_overrides"]

log = get_logger("chat_shared.ratelimit")

CLASSES = ("send", "read", "write-other", "connect")
"""The classes of authenticated requests; each has a per-user limit and a tenant ceiling."""
ANONYMOUS = "anon"
"""The class of requests whose credentials were missing or refused, limited per client IP."""

DECISIONS = Counter("chat_ratelimit_requests_total",
                    "Rate-limit decisions by class and result: allowed, limited, and also "
                    "fail_open when the decision was made in the process because Redis did "
                    "not answer in time",
                    ["class", "result"])
CEILING = Counter("chat_ratelimit_tenant_ceiling_total",
                  "Requests refused because the tenant as a whole reached its ceiling",
                  ["tenant", "class"])

LOG_EVERY = 60.0
"""Seconds between two log lines about the same limited client."""
_MAX_REMEMBERED = 100_000


@dataclass(frozen=True, slots=True)
class ClassLimits:
    """One class's limits: per user (or per IP) and for the tenant as a whole."""

    user: Limit
    tenant: Limit | None = None


def policy_from_settings(s: RateLimitSettings) -> dict[str, ClassLimits]:
    """The default limits of every class, from the settings."""
    def pair(name: str) -> ClassLimits:
        attr = name.replace("-", "_")
        return ClassLimits(
            Limit(getattr(s, f"rate_limit_{attr}_rate"), getattr(s, f"rate_limit_{attr}_burst")),
            Limit(getattr(s, f"rate_limit_tenant_{attr}_rate"),
                  getattr(s, f"rate_limit_tenant_{attr}_burst")))

    policy = {name: pair(name) for name in CLASSES}
    policy[ANONYMOUS] = ClassLimits(Limit(s.rate_limit_anon_rate, s.rate_limit_anon_burst))
    return policy


def tenant_overrides(defaults: Mapping[str, ClassLimits],
                     lookup: Callable[[str, int], int]) -> dict[str, ClassLimits]:
    """The limits of one tenant: its registry values over the defaults.

    ``lookup(name, default)`` is the registry's (``Tenant.limit``), which answers ``default``
    for a name the tenant does not set; the names are ``rate_limit.<class>.rate`` and
    ``.burst`` (per user) and ``rate_limit.tenant.<class>.rate`` and ``.burst`` (ceiling).
    """
    def own(name: str, default: float) -> float:
        value = lookup(name, 0)
        return value if value > 0 else default

    out: dict[str, ClassLimits] = {}
    for name, limits in defaults.items():
        if name == ANONYMOUS:  # per IP, before any tenant is known
            out[name] = limits
            continue
        user = Limit(own(f"rate_limit.{name}.rate", limits.user.rate),
                     int(own(f"rate_limit.{name}.burst", limits.user.burst)))
        tenant = limits.tenant
        if tenant is not None:
            tenant = Limit(own(f"rate_limit.tenant.{name}.rate", tenant.rate),
                           int(own(f"rate_limit.tenant.{name}.burst", tenant.burst)))
        out[name] = ClassLimits(user, tenant)
    return out


LIMIT_NAMES = tuple(f"rate_limit.{scope}{name}.{part}" for scope in ("", "tenant.")
                    for name in CLASSES for part in ("rate", "burst"))
"""The names a tenant's registry entry may set (``chat-tenant set-limit``)."""


def _keys(cls: str, tenant: str, subject: str) -> tuple[str, str]:
    """The subject's key and its tenant's ceiling key ("" for ``anon``): module docstring."""
    if cls == ANONYMOUS:
        return f"chat:rl:{{ip:{subject}}}:anon", ""
    return f"chat:rl:{{{tenant}}}:u:{subject}:{cls}", f"chat:rl:{{{tenant}}}:t:{cls}"


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


class RateLimiter:
    """Checks one request at a time against the shared budget (module docstring)."""

    def __init__(self, policy: Mapping[str, ClassLimits], redis: RedisGcra | None,
                 local: LocalLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """
        Args:
            policy: the default limits by class (``policy_from_settings``).
            redis: the shared budget; None = this process's memory only (one replica).
            local: the fallback, with the same rates.
        """
        self.policy = dict(policy)
        self._redis = redis
        self._local = local or LocalLimiter(clock)
        self._clock = clock
        self._refused: dict[str, tuple[float, Decision]] = {}
        self._logged: dict[str, float] = {}
        self._refusing: dict[str, float] = {}
        self._counters = {(c, r): DECISIONS.labels(c, r)
                          for c in (*CLASSES, ANONYMOUS, "typing")
                          for r in ("allowed", "limited", "fail_open")}

    async def check(self, cls: str, tenant: str, subject: str,
                    limits: ClassLimits | None = None) -> Decision:
        """The decision for one request of ``subject`` (a user; an IP for ``anon``).

        Args:
            limits: this tenant's limits for the class; None = the defaults.
        """
        limits = limits or self.policy[cls]
        key, ceiling_key = _keys(cls, tenant, subject)
        ceiling = limits.tenant if ceiling_key else None
        user = limits.user
        if user.unlimited:
            return Decision(True, user, user.burst, 0.0)
        now = self._clock()
        for remembered_key in (key, ceiling_key) if ceiling_key else (key,):
            remembered = self._refused.get(remembered_key)
            if remembered is not None and remembered[0] > now:
                d = remembered[1]
                decision = Decision(False, user, 0, d.reset, remembered[0] - now, d.scope)
                self._refusal(cls, tenant, subject, decision, now)
                return decision
        if self._redis is None:
            decision = self._local.check(key, user, ceiling_key, ceiling)
        else:
            c_t = c_tau = 0
            if ceiling is not None and not ceiling.unlimited:
                c_t, c_tau = _us(ceiling.interval), _us(ceiling.interval * ceiling.burst)
            try:
                allowed, scope, retry_us, remaining, reset_us = await self._redis.check(
                    key, ceiling_key, _us(user.interval), _us(user.interval * user.burst),
                    c_t, c_tau)
            except RedisUnavailable:
                decision = self._local.check(key, user, ceiling_key, ceiling)
                decision = Decision(decision.allowed, user, decision.remaining, decision.reset,
                                    decision.retry_after, decision.scope, fail_open=True)
            else:
                decision = Decision(bool(allowed), user, remaining, reset_us / 1e6,
                                    retry_us / 1e6, ("", "user", "tenant")[scope])
        if decision.fail_open:
            self._counters[cls, "fail_open"].inc()
        if decision.allowed:
            self._counters[cls, "allowed"].inc()
            return decision
        refused_key = ceiling_key if decision.scope == "tenant" else key
        if len(self._refused) >= _MAX_REMEMBERED:
            self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
            if len(self._refused) >= _MAX_REMEMBERED:
                self._refused.clear()
        until = now + decision.retry_after
        self._refused[refused_key] = (until, decision)
        if until > self._refusing.get(cls, 0.0):
            self._refusing[cls] = until
        self._refusal(cls, tenant, subject, decision, now)
        return decision

    def refusing(self, cls: str) -> bool:
        """Whether this process remembers a refusal of ``cls`` that still holds (cheap: lets
        a caller skip working out a subject, such as a client address, in the usual case)."""
        return self._refusing.get(cls, 0.0) > self._clock()

    def remembered_refusal(self, cls: str, tenant: str, subject: str) -> Decision | None:
        """The refusal this process remembers for the subject, without asking Redis and
        without counting a new request; None when there is none (then call ``check``)."""
        key, _ = _keys(cls, tenant, subject)
        remembered = self._refused.get(key)
        now = self._clock()
        if remembered is None or remembered[0] <= now:
            return None
        d = remembered[1]
        decision = Decision(False, d.limit, 0, d.reset, remembered[0] - now, d.scope)
        self._refusal(cls, tenant, subject, decision, now)
        return decision

    def _refusal(self, cls: str, tenant: str, subject: str, decision: Decision,
                 now: float) -> None:
        self._counters[cls, "limited"].inc()
        if decision.scope == "tenant":
            CEILING.labels(tenant, cls).inc()
        who = f"{tenant}/{subject}/{cls}"
        if self._logged.get(who, -LOG_EVERY) + LOG_EVERY > now:
            return
        if len(self._logged) >= _MAX_REMEMBERED:
            self._logged.clear()
        self._logged[who] = now
        log.info("rate_limited", cls=cls, tenant=tenant or None,
                 **({"ip": subject} if cls == ANONYMOUS else {"user": subject}),
                 scope=decision.scope, retry_after_s=round(decision.retry_after, 3),
                 rate=decision.limit.rate, burst=decision.limit.burst)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
