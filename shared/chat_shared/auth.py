"""JWT bearer authentication shared by the API and the WebSocket gateway.

The tenant: a token names its tenant in the claim JWT_TENANT_CLAIM (default ``tid``). A token
without it belongs to the default tenant (``DEFAULT_TENANT``), so a deployment without tenants
keeps working, unless REQUIRE_TENANT=true, which refuses it. Whether the tenant exists and is
active is the registry's question (the API's ``tenants`` module), not the token's.

HS256 (a shared secret) for simple installs; RS256/ES256 with a PEM public key or a JWKS URL
for an external identity provider. Only the configured algorithms are accepted, so a token
with ``alg: none`` or an algorithm-confusion attempt (HS256 signed with a public key) fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from chat_shared.config import AuthSettings
from chat_shared.errors import Unauthenticated
from chat_shared.tenancy import DEFAULT_TENANT, TENANT_ID

MAX_TOKEN_LENGTH = 8192
_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject, its tenant, and when the token stops being valid.
    A user id means a person only within its tenant."""

    user_id: str
    expires_at: float | None
    tenant_id: str = DEFAULT_TENANT


class TokenVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self._algorithms = settings.algorithm_list
        self._leeway = settings.jwt_leeway
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._secret = settings.jwt_secret
        self._public_key = settings.jwt_public_key
        self._tenant_claim = settings.jwt_tenant_claim
        self._require_tenant = settings.require_tenant
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        # A client sends the same token on every call: remember verified tokens until they
        # expire, so the signature is checked once per token, not once per call (~50 µs each).
        self._verified: dict[str, Principal] = {}

    def _key_for(self, token: str, alg: str) -> Any:
        if alg.startswith("HS"):
            return self._secret
        if self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as exc:
                raise Unauthenticated("signing key not found") from exc
        if self._public_key:
            return self._public_key
        raise Unauthenticated(f"algorithm {alg} is not configured")

    def verify(self, token: str) -> Principal:
        """Returns the principal of a valid token; raises Unauthenticated with a safe message."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at is not None and time.time() > cached.expires_at + self._leeway:
                del self._verified[token]
                raise Unauthenticated("token expired")
            return cached
        principal = self._verify_uncached(token)
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = principal
        return principal

    def _verify_uncached(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("missing or oversized bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("malformed token") from exc
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise Unauthenticated(f"token algorithm {alg!r} is not accepted")
        try:
            claims = jwt.decode(
                token,
                self._key_for(token, alg),
                algorithms=[alg],
                leeway=self._leeway,
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise Unauthenticated("token subject is missing or invalid")
        exp = claims.get("exp")
        return Principal(user_id=sub, expires_at=float(exp) if exp is not None else None,
                         tenant_id=self._tenant_of(claims))

    def _tenant_of(self, claims: dict[str, Any]) -> str:
        tenant = claims.get(self._tenant_claim)
        if tenant is None:
            if self._require_tenant:
                raise Unauthenticated(f"token has no tenant claim {self._tenant_claim!r}")
            return DEFAULT_TENANT
        if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
            raise Unauthenticated("token tenant is invalid: expected 1..63 of a-z 0-9 - _")
        return tenant

    def verify_authorization(self, header_value: str | None) -> Principal:
        """Verifies an ``Authorization: Bearer <token>`` value."""
        if not header_value:
            raise Unauthenticated("missing authorization: expected 'Bearer <token>'")
        scheme, _, token = header_value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        return self.verify(token.strip())


def issue_token(
    user_id: str,
    *,
    secret: str,
    ttl_seconds: float = 3600.0,
    issuer: str = "",
    audience: str = "",
    algorithm: str = "HS256",
    now: float | None = None,
    tenant: str = "",
    tenant_claim: str = "tid",
) -> str:
    """Signs a token for ``user_id`` (development and tests; production uses an IdP); with
    ``tenant``, the token names it in ``tenant_claim``."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user_id, "iat": int(issued), "exp": int(issued + ttl_seconds)}
    if tenant:
        claims[tenant_claim] = tenant
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)
