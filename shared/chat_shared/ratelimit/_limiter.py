"""The limiter the services call: Redis first, this process's memory when Redis cannot answer.

``RateLimiter.check(class, tenant, subject)`` returns a ``Decision`` for one request. Keys:

- ``chat:rl:{<tenant>}:u:<user>:<class>``: one user's budget for a class;
- ``chat:rl:{<tenant>}:t:<class>``: the tenant's ceiling for a class (all its users), checked
  in the same script; the ``{tenant}`` hash tag keeps both in one Redis Cluster slot;
- ``chat:rl:{ip:<address>}:anon``: requests from one client address whose credentials were
  missing or refused (``anonymous``), so guessing tokens is slow.

Allowed requests rarely wait for Redis: when a key's last answer left budget to spare, the
next request goes ahead and the script runs beside it (``RateLimiter._ahead`` says why that
stays within one request per process of exact); near the limit every request waits for
Redis's answer. Refusals are cheap: a refusal says when the key lets a request through again,
and until then this process refuses the same key from memory without asking Redis (nothing
but time can change a GCRA refusal). Limited clients are logged at most once a minute each;
every decision is counted in ``chat_ratelimit_requests_total{class,result}`` (allowed,
limited, fail_open) and a tenant's ceiling refusals in
``chat_ratelimit_tenant_ceiling_total{tenant,class}``. When Redis does not answer in time the
local limiter decides, starting from what Redis last said about the key.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from chat_shared.observability.logging import get_logger
from chat_shared.ratelimit._cluster import ClusterGcra
from chat_shared.ratelimit._gcra import Decision, Limit, LocalLimiter
from chat_shared.ratelimit._redis import RedisGcra, RedisUnavailable
from chat_shared.ratelimit.settings import RateLimitSettings

__all__ = ["ANONYMOUS", "CLASSES", "LIMIT_NAMES", "ClassLimits", "RateLimiter",
           "policy_from_settings", "registry_lookup", "tenant_overrides"]

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

_KNOWN_FOR = 10.0
"""Seconds a key's last answer from Redis may decide a request without waiting (``_ahead``)."""
LOG_EVERY = 60.0
"""Seconds between two log lines about the same limited client."""
_MAX_REMEMBERED = 100_000


@dataclass(slots=True)
class _Known:
    """What Redis last said about a key: requests left, seconds to a whole budget, when."""

    remaining: int
    reset: float
    at: float
    ahead: bool = False
    """A request of the key went ahead and its script's answer has not come yet."""


@dataclass(slots=True)
class _Plan:
    """What ``check`` works out once per subject and limits (``RateLimiter._plan``): its keys
    and the script's arguments (an f-string and a float division each, 2 us a call)."""

    limits: ClassLimits
    user: Limit
    ceiling: Limit | None
    key: str
    ceiling_key: str
    """"" without a ceiling (``anon``, or an unlimited one)."""
    keys: tuple[str, ...]
    args: tuple[str, str, int, int, int, int]
    unlimited: bool


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


def registry_lookup(limits: Mapping[str, object]) -> Callable[[str, int], int]:
    """``tenant_overrides``'s lookup over a registry entry's ``limits`` (``tenants.limits``):
    a positive whole number there, else the default."""
    def lookup(name: str, default: int) -> int:
        value = limits.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return default
    return lookup


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

    def __init__(self, policy: Mapping[str, ClassLimits], redis: RedisGcra | ClusterGcra | None,
                 local: LocalLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """
        Args:
            policy: the default limits by class (``policy_from_settings``).
            redis: the shared budget (one server, or a cluster's masters by slot); None =
                this process's memory only (one replica).
            local: the fallback, with the same rates.
        """
        self.policy = dict(policy)
        self._redis = redis
        self._local = local or LocalLimiter(clock)
        self._clock = clock
        self._refused: dict[str, tuple[float, Decision]] = {}
        self._logged: dict[str, float] = {}
        self._refusing: dict[str, float] = {}
        self._known: dict[str, _Known] = {}
        self._plans: dict[tuple[str, str, str], _Plan] = {}
        self._in_flight: dict[str, int] = {}
        self._confirming: set[asyncio.Task[None]] = set()
        self._closed = False
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
        plan = self._plans.get((cls, tenant, subject))
        if plan is None or plan.limits is not limits:
            plan = self._plan(cls, tenant, subject, limits)
        user = plan.user
        if plan.unlimited:
            return Decision(True, user, user.burst, 0.0)
        key, ceiling_key = plan.key, plan.ceiling_key
        now = self._clock()
        if self._refused:  # (empty while nobody is refused: the usual case)
            for remembered_key in plan.keys:
                remembered = self._refused.get(remembered_key)
                if remembered is not None and remembered[0] > now:
                    d = remembered[1]
                    decision = Decision(False, user, 0, d.reset, remembered[0] - now, d.scope)
                    self._refusal(cls, tenant, subject, decision, now)
                    return decision
        if self._redis is None:
            decision = self._local.check(key, user, ceiling_key, plan.ceiling)
        else:
            args = plan.args
            ahead = self._ahead(key, ceiling_key, user, now)
            pending: Any = self._redis.submit(*args) if ahead is not None else None
            if ahead is not None and pending is not None:
                decision = ahead
                self._known[key].ahead = True
                self._flight(key, ceiling_key, 1)
                self._redis.reply_future(pending).add_done_callback(
                    functools.partial(self._replied, cls, pending, args, user, plan.ceiling))
            else:
                decision = await self._ask(args, user, plan.ceiling)
        return self._decided(cls, tenant, subject, key, ceiling_key, decision, now)

    def _plan(self, cls: str, tenant: str, subject: str, limits: ClassLimits) -> _Plan:
        """Works out (and keeps) a subject's keys and script arguments under ``limits``."""
        user = limits.user
        key, ceiling_key = _keys(cls, tenant, subject)
        ceiling = limits.tenant if ceiling_key else None
        if ceiling is None or ceiling.unlimited:
            ceiling, ceiling_key = None, ""
        c_t = c_tau = 0
        if ceiling is not None:
            c_t, c_tau = _us(ceiling.interval), _us(ceiling.interval * ceiling.burst)
        unlimited = user.unlimited
        args = ((key, ceiling_key, 0, 0, 0, 0) if unlimited else
                (key, ceiling_key, _us(user.interval), _us(user.interval * user.burst),
                 c_t, c_tau))
        plan = _Plan(limits, user, ceiling, key, ceiling_key,
                     (key, ceiling_key) if ceiling_key else (key,), args, unlimited)
        if len(self._plans) >= _MAX_REMEMBERED:
            self._plans.clear()
        self._plans[cls, tenant, subject] = plan
        return plan

    def _ahead(self, key: str, ceiling_key: str, user: Limit, now: float) -> Decision | None:
        """An allowed decision without waiting for Redis, when Redis's last answers left room
        for this request beside every script of the key still in flight, and no earlier such
        decision of the key is unconfirmed; else None (then the request waits for Redis).

        Why: a round trip to Redis on every call costs each call its latency. The script of a
        request decided ahead is sent at once (queued on the one connection, written at the
        event loop's next turn), so Redis runs this process's scripts in the order of its
        decisions: one process alone stays exact. Several processes spending
        one budget at once may each let one request through on an answer another process
        made stale (at most one unconfirmed request per key and process), after which the
        refusal is remembered. Near the limit (no room to spare) every request waits.
        """
        known = self._known.get(key)
        if known is None or known.ahead or now - known.at > _KNOWN_FOR:
            return None
        left = known.remaining - self._in_flight.get(key, 0) - 1
        if left < 0:
            return None
        if ceiling_key:
            tenant_known = self._known.get(ceiling_key)
            if (tenant_known is None or now - tenant_known.at > _KNOWN_FOR
                    or tenant_known.remaining - self._in_flight.get(ceiling_key, 0) < 1):
                return None
        return Decision(True, user, left,
                        max(known.reset - (now - known.at), 0.0) + user.interval, ahead=True)

    def _flight(self, key: str, ceiling_key: str, delta: int) -> None:
        """Counts the scripts of a key sent and not yet answered."""
        for k in (key, ceiling_key) if ceiling_key else (key,):
            count = self._in_flight.get(k, 0) + delta
            if count > 0:
                self._in_flight[k] = count
            else:
                self._in_flight.pop(k, None)

    async def _ask(self, args: tuple[str, str, int, int, int, int], user: Limit,
                   ceiling: Limit | None) -> Decision:
        """Redis's decision, or the local one (fail open) when Redis does not answer in time."""
        assert self._redis is not None
        key, ceiling_key = args[0], args[1]
        self._flight(key, ceiling_key, 1)
        try:
            answer = await self._redis.check(*args)
        except RedisUnavailable:
            self._seed_local(key, ceiling_key, user, ceiling)
            d = self._local.check(key, user, ceiling_key, ceiling)
            return Decision(d.allowed, user, d.remaining, d.reset, d.retry_after, d.scope,
                            fail_open=True)
        finally:
            self._flight(key, ceiling_key, -1)
        return self._learn(key, ceiling_key, answer, user)

    def _learn(self, key: str, ceiling_key: str, answer: list[int], user: Limit) -> Decision:
        """The decision in Redis's answer, remembered for ``_ahead``."""
        self._note(key, ceiling_key, answer)
        allowed, scope, retry_us, remaining, reset_us, _ = answer
        return Decision(bool(allowed), user, remaining, reset_us / 1e6, retry_us / 1e6,
                        ("", "user", "tenant")[scope])

    def _note(self, key: str, ceiling_key: str, answer: list[int]) -> None:
        """Remembers Redis's answer for ``_ahead``."""
        now = self._clock()
        self._remember(key, answer[3], answer[4] / 1e6, now)
        left = answer[5]
        if ceiling_key and left >= 0:
            self._remember(ceiling_key, left, 0.0, now)

    def _replied(self, cls: str, pending: Any, args: tuple[str, str, int, int, int, int],
                 user: Limit, ceiling: Limit | None, _: object) -> None:
        """Redis's reply (or its failure) to a request that went ahead (``_ahead``), from the
        reply future's callback: a plain answer is learnt here at once, anything else (no
        answer in time, an error or a redirection to follow) in ``_confirm``'s task. A
        callback, not a task for every request: a task costs its creation and two more turns
        of the event loop (10 us more than a callback, fastest of 15 timings at load 10)."""
        assert self._redis is not None
        answer = self._redis.settled(pending)  # (retrieves a failure, so none goes unheard)
        if self._closed:
            return
        if answer is None:
            task = asyncio.create_task(self._confirm(cls, pending, args, user, ceiling))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)
            return
        key, ceiling_key = args[0], args[1]
        self._settle(key, ceiling_key)
        self._confirmed(cls, key, ceiling_key, answer, user)

    async def _confirm(self, cls: str, pending: Any, args: tuple[str, str, int, int, int, int],
                       user: Limit, ceiling: Limit | None) -> None:
        """Reads Redis's answer for a request that went ahead (``_ahead``) when the reply was
        not a plain answer (``_replied``). If Redis did not answer, the local limiter counts
        the request (as it does every fail-open one)."""
        assert self._redis is not None
        key, ceiling_key = args[0], args[1]
        try:
            answer = await self._redis.answer(pending, args)
        except RedisUnavailable:
            self._seed_local(key, ceiling_key, user, ceiling)
            self._local.check(key, user, ceiling_key, ceiling)
            self._counters[cls, "fail_open"].inc()
            return
        finally:
            self._settle(key, ceiling_key)
        self._confirmed(cls, key, ceiling_key, answer, user)

    def _settle(self, key: str, ceiling_key: str) -> None:
        """A request that went ahead has its answer (or never will): no longer in flight."""
        self._flight(key, ceiling_key, -1)
        known = self._known.get(key)
        if known is not None:
            known.ahead = False

    def _confirmed(self, cls: str, key: str, ceiling_key: str, answer: list[int],
                   user: Limit) -> None:
        """Learns Redis's answer for a request that went ahead. If Redis refused it (other
        processes spent the budget), later requests of the key are refused from here until the
        refusal's retry time; the request itself has gone through."""
        if answer[0]:  # allowed, as the request was: nothing to do but remember the budget
            self._note(key, ceiling_key, answer)
            return
        decision = self._learn(key, ceiling_key, answer, user)
        self._remember_refusal(ceiling_key if decision.scope == "tenant" else key, cls,
                               decision, self._clock())

    def _seed_local(self, key: str, ceiling_key: str, user: Limit,
                    ceiling: Limit | None) -> None:
        """Hands the local limiter what Redis last said (the budget left then, less the checks
        still in flight), so a fail-open decision continues the shared budget rather than
        starting a fresh one."""
        for k, limit in ((key, user), (ceiling_key, ceiling)):
            known = self._known.get(k) if k else None
            if known is None or limit is None:
                continue
            # In flight: the checks sent after that answer, less this one (counted below).
            spent = limit.burst - known.remaining + max(self._in_flight.get(k, 0) - 1, 0)
            self._local.seed(k, known.at + spent * limit.interval)

    def _remember(self, key: str, remaining: int, reset: float, now: float) -> None:
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= _MAX_REMEMBERED:
                self._known.clear()
            self._known[key] = _Known(remaining, reset, now)
        else:
            known.remaining, known.reset, known.at = remaining, reset, now

    def _remember_refusal(self, key: str, cls: str, decision: Decision, now: float) -> None:
        if len(self._refused) >= _MAX_REMEMBERED:
            self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
            if len(self._refused) >= _MAX_REMEMBERED:
                self._refused.clear()
        until = now + decision.retry_after
        self._refused[key] = (until, decision)
        if until > self._refusing.get(cls, 0.0):
            self._refusing[cls] = until

    def _decided(self, cls: str, tenant: str, subject: str, key: str, ceiling_key: str,
                 decision: Decision, now: float) -> Decision:
        if decision.fail_open:
            self._counters[cls, "fail_open"].inc()
        if decision.allowed:
            self._counters[cls, "allowed"].inc()
            return decision
        self._remember_refusal(ceiling_key if decision.scope == "tenant" else key, cls,
                               decision, now)
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
        self._closed = True
        for task in list(self._confirming):
            task.cancel()
        await asyncio.gather(*self._confirming, return_exceptions=True)
        if self._redis is not None:
            await self._redis.close()
