"""`chat-token`: the development token printer, run as the installed console script.

Its tokens must be exactly what the services accept with the same secret, so a developer's
`grpcurl -H "authorization: Bearer $(chat-token --user alice)"` works.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

import jwt
import pytest
from chat_shared.auth import TokenVerifier
from chat_shared.config import AuthSettings
from chat_shared.errors import Unauthenticated

SECRET = "cli-test-secret-long-enough-for-hs256!"


def chat_token(venv_bin: pathlib.Path, cwd: pathlib.Path, *args: str,
               **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("JWT_")}
    # cwd is an empty directory so that no app.env is read.
    return subprocess.run([str(venv_bin / "chat-token"), *args],
                          env={**base, "JWT_SECRET": SECRET, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def verifier(**overrides: str) -> TokenVerifier:
    return TokenVerifier(AuthSettings(_env_file=None, jwt_secret=SECRET, **overrides))


def test_token_is_accepted_by_the_verifier_with_the_same_secret(venv_bin, tmp_path) -> None:
    result = chat_token(venv_bin, tmp_path, "--user", "alice")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1
    assert verifier().verify(token).user_id == "alice"


def test_token_is_refused_with_another_secret(venv_bin, tmp_path) -> None:
    token = chat_token(venv_bin, tmp_path, "--user", "alice").stdout.strip()
    other = TokenVerifier(AuthSettings(_env_file=None, jwt_secret="x" * 40))
    with pytest.raises(Unauthenticated):
        other.verify(token)


def test_default_lifetime_is_one_hour(venv_bin, tmp_path) -> None:
    before = time.time()
    token = chat_token(venv_bin, tmp_path, "--user", "alice").stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert before + 3600 - 5 <= claims["exp"] <= time.time() + 3600 + 1


def test_ttl_sets_the_expiry(venv_bin, tmp_path) -> None:
    before = time.time()
    result = chat_token(venv_bin, tmp_path, "--user", "bob", "--ttl", "5m")
    after = time.time()
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob"
    assert int(before) + 300 - 1 <= claims["exp"] <= int(after) + 300
    assert claims["exp"] - claims["iat"] == 300


def test_issuer_and_audience_come_from_the_environment(venv_bin, tmp_path) -> None:
    result = chat_token(venv_bin, tmp_path, "--user", "carol",
                        JWT_ISSUER="https://idp.test", JWT_AUDIENCE="chat")
    token = result.stdout.strip()
    assert verifier(jwt_issuer="https://idp.test", jwt_audience="chat").verify(
        token).user_id == "carol"


def test_bad_ttl_exits_2(venv_bin, tmp_path) -> None:
    result = chat_token(venv_bin, tmp_path, "--user", "alice", "--ttl", "forever")
    assert result.returncode == 2
    assert "not a duration" in result.stderr
    assert result.stdout == ""


def test_missing_user_exits_2(venv_bin, tmp_path) -> None:
    result = chat_token(venv_bin, tmp_path)
    assert result.returncode == 2
    assert "--user" in result.stderr


def test_blank_user_exits_2(venv_bin, tmp_path) -> None:
    result = chat_token(venv_bin, tmp_path, "--user", "   ")
    assert result.returncode == 2 and result.stdout == ""


def test_rs256_only_configuration_exits_2(venv_bin, tmp_path) -> None:
    result = chat_token(venv_bin, tmp_path, "--user", "alice", JWT_ALGORITHMS="RS256")
    assert result.returncode == 2
    assert "JWT_ALGORITHMS" in result.stderr
