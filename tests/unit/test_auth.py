"""TokenVerifier: which bearer tokens are accepted, and that every other one is refused.

The attacks that matter for JWT are tested with hand-made tokens (``alg: none``, HS256 signed
with the RS256 public key), since a library would refuse to produce them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from chat_shared.auth import MAX_TOKEN_LENGTH, TokenVerifier, issue_token
from chat_shared.config import AuthSettings
from chat_shared.errors import Unauthenticated
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "unit-test-secret-long-enough-for-hs256"


def verifier(**overrides: Any) -> TokenVerifier:
    values: dict[str, Any] = {"jwt_secret": SECRET, "jwt_algorithms": "HS256", "jwt_leeway": 30}
    values.update(overrides)
    return TokenVerifier(AuthSettings(_env_file=None, **values))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT assembled by hand, so it can be anything a library would refuse to sign."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def claims(sub: str = "alice", ttl: float = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + int(ttl), **extra}


def pem_public(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rejected(v: TokenVerifier, token: str) -> str:
    """The Unauthenticated message for a refused token (fails the test if it is accepted)."""
    with pytest.raises(Unauthenticated) as exc:
        v.verify(token)
    return exc.value.message


def test_valid_hs256_token_gives_its_subject_and_expiry() -> None:
    token = issue_token("alice", secret=SECRET, ttl_seconds=120)
    principal = verifier().verify(token)
    assert principal.user_id == "alice"
    assert principal.expires_at == pytest.approx(time.time() + 120, abs=5)


def test_authorization_header_with_bearer_scheme_is_accepted() -> None:
    token = issue_token("bob", secret=SECRET)
    assert verifier().verify_authorization(f"Bearer {token}").user_id == "bob"
    assert verifier().verify_authorization(f"bearer  {token} ").user_id == "bob"


@pytest.mark.parametrize("header", [None, ""])
def test_missing_authorization_header_is_refused(header: str | None) -> None:
    with pytest.raises(Unauthenticated, match="missing authorization"):
        verifier().verify_authorization(header)


@pytest.mark.parametrize(
    "header", ["Basic YWxpY2U6cHc=", "Token abc.def.ghi", "Bearer", "Bearer   ", "abc.def.ghi"]
)
def test_authorization_without_bearer_token_is_refused(header: str) -> None:
    with pytest.raises(Unauthenticated, match="Bearer <token>"):
        verifier().verify_authorization(header)


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.%%%.x"])
def test_malformed_token_is_refused(token: str) -> None:
    assert rejected(verifier(), token)


def test_oversized_token_is_refused_before_parsing() -> None:
    token = issue_token("a" * 10, secret=SECRET) + "A" * MAX_TOKEN_LENGTH
    assert "oversized" in rejected(verifier(), token)


def test_token_expired_beyond_the_leeway_is_refused() -> None:
    token = jwt.encode(claims(ttl=-60), SECRET, algorithm="HS256")
    assert rejected(verifier(jwt_leeway=30), token) == "token expired"


def test_token_expired_within_the_leeway_is_accepted() -> None:
    token = jwt.encode(claims(ttl=-10), SECRET, algorithm="HS256")
    assert verifier(jwt_leeway=30).verify(token).user_id == "alice"


def test_token_not_yet_valid_is_refused() -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 300), SECRET, algorithm="HS256")
    assert "not yet valid" in rejected(verifier(jwt_leeway=30), token)


def test_token_signed_with_another_secret_is_refused() -> None:
    token = jwt.encode(claims(), "another-secret-of-enough-length!", algorithm="HS256")
    assert "signature" in rejected(verifier(), token).lower()


def test_token_with_tampered_claims_is_refused() -> None:
    head, _, sig = jwt.encode(claims(sub="alice"), SECRET, algorithm="HS256").split(".")
    forged = f"{head}.{b64url(json.dumps(claims(sub='mallory')).encode())}.{sig}"
    assert rejected(verifier(), forged)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_token_is_refused(alg: str) -> None:
    token = raw_token({"alg": alg, "typ": "JWT"}, claims())
    assert "not accepted" in rejected(verifier(), token)


def test_unsigned_token_is_refused_even_when_header_claims_hs256() -> None:
    token = raw_token({"alg": "HS256", "typ": "JWT"}, claims())
    assert rejected(verifier(), token)


def test_token_without_subject_is_refused() -> None:
    body = claims()
    del body["sub"]
    assert rejected(verifier(), jwt.encode(body, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("sub", ["", "x" * 129])
def test_token_with_empty_or_oversized_subject_is_refused(sub: str) -> None:
    assert rejected(verifier(), jwt.encode(claims(sub=sub), SECRET, algorithm="HS256"))


def test_token_without_expiry_is_refused() -> None:
    token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    assert "exp" in rejected(verifier(), token)


def test_hs256_token_is_refused_when_only_rs256_is_configured(rsa_key) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    v = verifier(jwt_algorithms="RS256", jwt_public_key=pem_public(rsa_key))
    assert "not accepted" in rejected(v, token)


def test_hs256_token_signed_with_the_public_key_is_refused(rsa_key) -> None:
    # Algorithm confusion: the attacker knows the public key and uses it as an HMAC secret.
    public = pem_public(rsa_key)
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    sig = hmac.new(public.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{b64url(sig)}"
    v = verifier(jwt_algorithms="RS256", jwt_public_key=public)
    assert "not accepted" in rejected(v, token)


def test_rs256_token_verified_with_pem_public_key(rsa_key) -> None:
    token = jwt.encode(claims(sub="carol"), rsa_key, algorithm="RS256")
    v = verifier(jwt_algorithms="RS256", jwt_public_key=pem_public(rsa_key))
    assert v.verify(token).user_id == "carol"


def test_rs256_token_from_another_key_is_refused(rsa_key) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256")
    v = verifier(jwt_algorithms="RS256", jwt_public_key=pem_public(rsa_key))
    assert "signature" in rejected(v, token).lower()


def test_es256_token_verified_with_pem_public_key(ec_key) -> None:
    token = jwt.encode(claims(sub="dave"), ec_key, algorithm="ES256")
    v = verifier(jwt_algorithms="ES256", jwt_public_key=pem_public(ec_key))
    assert v.verify(token).user_id == "dave"


def test_rs256_without_a_configured_key_is_refused(rsa_key) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert "not configured" in rejected(verifier(jwt_algorithms="RS256"), token)


def test_issuer_is_checked_when_configured() -> None:
    v = verifier(jwt_issuer="https://idp.example")
    good = jwt.encode(claims(iss="https://idp.example"), SECRET, algorithm="HS256")
    wrong = jwt.encode(claims(iss="https://evil.example"), SECRET, algorithm="HS256")
    missing = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert v.verify(good).user_id == "alice"
    assert "issuer" in rejected(v, wrong).lower()
    assert rejected(v, missing)


def test_audience_is_checked_when_configured() -> None:
    v = verifier(jwt_audience="chat")
    good = jwt.encode(claims(aud="chat"), SECRET, algorithm="HS256")
    wrong = jwt.encode(claims(aud="billing"), SECRET, algorithm="HS256")
    missing = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert v.verify(good).user_id == "alice"
    assert "audience" in rejected(v, wrong).lower()
    assert rejected(v, missing)


def test_audience_is_ignored_when_not_configured() -> None:
    token = jwt.encode(claims(aud="anything"), SECRET, algorithm="HS256")
    assert verifier().verify(token).user_id == "alice"


def test_refusal_messages_do_not_contain_the_secret_or_the_token() -> None:
    token = jwt.encode(claims(), "another-secret-of-enough-length!", algorithm="HS256")
    message = rejected(verifier(), token)
    assert SECRET not in message and token not in message
