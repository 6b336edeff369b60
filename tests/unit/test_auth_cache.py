"""Verified tokens are remembered, but never past their expiry."""

import time

import pytest

from chat_shared.auth import TokenVerifier, issue_token
from chat_shared.config import AuthSettings
from chat_shared.errors import Unauthenticated

SECRET = "unit-test-secret-long-enough-for-hs256"


def verifier(leeway: float = 0.0) -> TokenVerifier:
    return TokenVerifier(AuthSettings(_env_file=None, jwt_secret=SECRET, jwt_leeway=leeway))


def test_a_cached_token_still_expires() -> None:
    v = verifier()
    token = issue_token("alice", secret=SECRET, ttl_seconds=1)
    assert v.verify(token).user_id == "alice"
    assert v.verify(token).user_id == "alice"  # answered from the cache
    time.sleep(max(0.0, int(time.time()) + 2 - time.time()) + 0.05)  # past exp (whole seconds)
    with pytest.raises(Unauthenticated, match="expired"):
        v.verify(token)
    with pytest.raises(Unauthenticated, match="expired"):
        v.verify(token)  # and stays refused once evicted


def test_a_refused_token_is_not_cached() -> None:
    v = verifier()
    bad = issue_token("alice", secret="another-secret-that-is-long-enough")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            v.verify(bad)


def test_the_cache_is_bounded() -> None:
    v = verifier()
    tokens = [issue_token(f"user{i}", secret=SECRET) for i in range(5000)]
    assert [v.verify(t).user_id for t in tokens] == [f"user{i}" for i in range(5000)]
    assert len(v._verified) <= 4096
