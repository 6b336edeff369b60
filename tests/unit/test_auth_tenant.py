"""The tenant of a token: its JWT_TENANT_CLAIM claim, the default tenant without one, and the
refusals (REQUIRE_TENANT, a malformed tenant id)."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from chat_shared.auth import TokenVerifier, issue_token
from chat_shared.config import AuthSettings
from chat_shared.errors import Unauthenticated
from chat_shared.tenancy import DEFAULT_TENANT
from chat_shared.token_cli import main as token_main

SECRET = "unit-test-secret-long-enough-for-hs256"


def verifier(**overrides: Any) -> TokenVerifier:
    values: dict[str, Any] = {"jwt_secret": SECRET, "jwt_algorithms": "HS256"}
    values.update(overrides)
    return TokenVerifier(AuthSettings(_env_file=None, **values))


def test_tenant_claim_names_the_tenant() -> None:
    principal = verifier().verify(issue_token("alice", secret=SECRET, tenant="acme"))
    assert (principal.user_id, principal.tenant_id) == ("alice", "acme")


def test_token_without_claim_is_default_tenant() -> None:
    assert verifier().verify(issue_token("alice", secret=SECRET)).tenant_id == DEFAULT_TENANT


def test_require_tenant_refuses_token_without_claim() -> None:
    with pytest.raises(Unauthenticated, match="no tenant claim 'tid'"):
        verifier(require_tenant=True).verify(issue_token("alice", secret=SECRET))


def test_custom_claim_name() -> None:
    token = issue_token("alice", secret=SECRET, tenant="globex", tenant_claim="org")
    assert verifier(jwt_tenant_claim="org").verify(token).tenant_id == "globex"
    # The default claim name does not read another claim.
    assert verifier().verify(token).tenant_id == DEFAULT_TENANT


@pytest.mark.parametrize("tenant", ["", "Acme", "a b", "x" * 64, "-lead", "acme:1"])
def test_malformed_tenant_is_refused(tenant: str) -> None:
    token = issue_token("alice", secret=SECRET)
    # A token with any claim value, which issue_token would not make.
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    claims["tid"] = tenant
    with pytest.raises(Unauthenticated, match="tenant is invalid"):
        verifier().verify(jwt.encode(claims, SECRET, algorithm="HS256"))


def test_non_string_tenant_is_refused() -> None:
    claims = jwt.decode(issue_token("alice", secret=SECRET), SECRET, algorithms=["HS256"])
    claims["tid"] = 7
    with pytest.raises(Unauthenticated, match="tenant is invalid"):
        verifier().verify(jwt.encode(claims, SECRET, algorithm="HS256"))


def test_chat_token_mints_tenant(capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    assert token_main(["--user", "alice", "--tenant", "acme"]) == 0
    token = capsys.readouterr().out.strip()
    assert verifier().verify(token).tenant_id == "acme"


def test_chat_token_refuses_bad_tenant(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    assert token_main(["--user", "alice", "--tenant", "Not Valid"]) == 2
    assert "--tenant must be" in capsys.readouterr().err
