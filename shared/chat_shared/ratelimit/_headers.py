"""The IETF rate-limit headers of a decision (draft-ietf-httpapi-ratelimit-headers).

Structured-field form, one item per policy, named after the class::

    RateLimit-Policy: "send";q=30;w=3     quota 30 (the burst), refilled in 3 seconds
    RateLimit: "send";r=12;t=1            12 left now; the whole quota is back in 1 second

Sent on allowed and refused answers alike; a refusal adds ``Retry-After`` (whole seconds,
rounded up, so a client that waits that long is let through).
"""

from __future__ import annotations

from chat_shared.ratelimit._gcra import Decision, Limit, ceil_seconds

__all__ = ["headers", "policy_header", "state_header"]


def policy_header(cls: str, decision: Decision) -> str:
    limit = decision.limit
    key = (cls, limit.rate, limit.burst)
    text = _POLICIES.get(key)
    if text is None:
        if len(_POLICIES) >= 1024:
            _POLICIES.clear()
        text = _POLICIES[key] = _policy(cls, limit)
    return text


_POLICIES: dict[tuple[str, float, int], str] = {}
"""The policy of a class's limit is the same for every call under it: rendered once (looked
up by plain values: a ``Limit`` hashes in Python, 0.4 us)."""


def _policy(cls: str, limit: Limit) -> str:
    return f'"{cls}";q={limit.burst};w={max(ceil_seconds(limit.window), 1)}'


def state_header(cls: str, decision: Decision) -> str:
    return f'"{cls}";r={max(decision.remaining, 0)};t={ceil_seconds(decision.reset)}'


def headers(cls: str, decision: Decision) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (and ``Retry-After`` for a refusal)."""
    out = {"RateLimit-Policy": policy_header(cls, decision),
           "RateLimit": state_header(cls, decision)}
    if not decision.allowed:
        out["Retry-After"] = str(max(ceil_seconds(decision.retry_after), 1))
    return out
