"""Authentication over gRPC: every bad credential is UNAUTHENTICATED and reveals no internals.

The same TokenVerifier runs in front of every RPC (tests/unit/test_auth.py covers its rules);
here the point is what a real client sees on the wire, for HS256 (the fixtures' app) and for
RS256/ES256/JWKS apps built through the composition root.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import jwt
import pytest
from chat_api.app import build_app
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import TEST_SECRET, make_token

LIST = chat_pb2.GetConversationsRequest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def claims(sub: str = "alice", ttl: float = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + int(ttl), **extra}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def pem_public(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@contextlib.asynccontextmanager
async def running_api(settings: Any) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
    """An API app built from ``settings``, started on a free port, stopped afterwards."""
    app = build_app(settings)
    await app.start()
    try:
        await app.probe_once()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            yield chat_pb2_grpc.ChatServiceStub(ch)
    finally:
        await app.stop(grace=1.0)


async def refused(stub: Any, metadata: tuple[tuple[str, str], ...] | None,
                  *secrets: str) -> grpc.aio.AioRpcError:
    """Calls GetConversations expecting UNAUTHENTICATED with no internals in the details."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.GetConversations(LIST, metadata=metadata)
    err = exc.value
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    details = err.details() or ""
    for leak in ("Traceback", 'File "', ".py", "Exception", TEST_SECRET, *secrets):
        assert leak not in details, f"{leak!r} leaked in {details!r}"
    return err


async def test_valid_token_is_accepted(stub) -> None:
    resp = await stub.GetConversations(LIST, metadata=bearer(make_token("alice")))
    assert list(resp.conversations) == []


async def test_missing_authorization_is_unauthenticated(stub) -> None:
    err = await refused(stub, None)
    assert "Bearer" in err.details()


@pytest.mark.parametrize("value", ["Basic YWxpY2U6cHc=", "Bearer", "Token abc", "abc.def.ghi"])
async def test_non_bearer_authorization_is_unauthenticated(stub, value: str) -> None:
    await refused(stub, (("authorization", value),))


async def test_malformed_token_is_unauthenticated(stub) -> None:
    err = await refused(stub, bearer("not-a-jwt"), "not-a-jwt")
    assert err.details() == "malformed token"


async def test_token_expired_beyond_leeway_is_unauthenticated(stub) -> None:
    token = jwt.encode(claims(ttl=-120), TEST_SECRET, algorithm="HS256")
    err = await refused(stub, bearer(token), token)
    assert err.details() == "token expired"


async def test_token_expired_within_leeway_is_accepted(stub) -> None:
    # The default leeway is 30 s: a token 5 s past exp still works (clock skew).
    token = jwt.encode(claims(ttl=-5), TEST_SECRET, algorithm="HS256")
    resp = await stub.GetConversations(LIST, metadata=bearer(token))
    assert resp.next_page_token == ""


async def test_token_not_yet_valid_is_unauthenticated(stub) -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 600), TEST_SECRET, algorithm="HS256")
    await refused(stub, bearer(token), token)


async def test_token_with_wrong_signature_is_unauthenticated(stub) -> None:
    token = jwt.encode(claims(), "some-other-secret-entirely-0123456789", algorithm="HS256")
    await refused(stub, bearer(token), token, "some-other-secret")


async def test_alg_none_token_is_unauthenticated(stub) -> None:
    token = ".".join([b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode()),
                      b64url(json.dumps(claims()).encode()), ""])
    await refused(stub, bearer(token), token)


async def test_token_without_subject_is_unauthenticated(stub) -> None:
    body = claims()
    del body["sub"]
    token = jwt.encode(body, TEST_SECRET, algorithm="HS256")
    await refused(stub, bearer(token), token)


async def test_unauthenticated_call_is_not_executed(stub) -> None:
    # A refused CreateConversation must not create anything the real user can later see.
    forged = jwt.encode(claims(sub="bob"), "wrong-secret-xxxxxxxxxxxxxxxxxxxxxxxxxx", "HS256")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.CreateConversation(
            chat_pb2.CreateConversationRequest(member_ids=["bob"], title="sneaky"),
            metadata=bearer(forged))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    resp = await stub.GetConversations(LIST, metadata=bearer(make_token("bob")))
    assert list(resp.conversations) == []


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def test_rs256_token_is_accepted_with_pem_public_key(
    api_settings_factory: Callable[..., Any], rsa_key
) -> None:
    settings = api_settings_factory(jwt_algorithms="RS256", jwt_public_key=pem_public(rsa_key))
    async with running_api(settings) as stub:
        token = jwt.encode(claims(sub="carol"), rsa_key, algorithm="RS256")
        conv = await stub.CreateConversation(
            chat_pb2.CreateConversationRequest(member_ids=["dave"]), metadata=bearer(token))
        assert list(conv.conversation.member_ids) == ["carol", "dave"]


async def test_hs256_token_is_unauthenticated_when_only_rs256_is_configured(
    api_settings_factory: Callable[..., Any], rsa_key
) -> None:
    settings = api_settings_factory(jwt_algorithms="RS256", jwt_public_key=pem_public(rsa_key))
    async with running_api(settings) as stub:
        await refused(stub, bearer(make_token("alice")))


async def test_es256_token_is_accepted_with_pem_public_key(
    api_settings_factory: Callable[..., Any], ec_key
) -> None:
    settings = api_settings_factory(jwt_algorithms="ES256", jwt_public_key=pem_public(ec_key))
    async with running_api(settings) as stub:
        token = jwt.encode(claims(sub="erin"), ec_key, algorithm="ES256")
        resp = await stub.GetConversations(LIST, metadata=bearer(token))
        assert list(resp.conversations) == []
        other = ec.generate_private_key(ec.SECP256R1())
        await refused(stub, bearer(jwt.encode(claims(), other, algorithm="ES256")))


async def test_issuer_and_audience_are_checked_when_configured(
    api_settings_factory: Callable[..., Any]
) -> None:
    settings = api_settings_factory(jwt_issuer="https://idp.test", jwt_audience="chat")
    async with running_api(settings) as stub:
        good = make_token("alice", issuer="https://idp.test", audience="chat")
        assert (await stub.GetConversations(LIST, metadata=bearer(good))).next_page_token == ""
        await refused(stub, bearer(make_token("alice", issuer="https://evil.test",
                                              audience="chat")))
        await refused(stub, bearer(make_token("alice", issuer="https://idp.test",
                                              audience="billing")))
        await refused(stub, bearer(make_token("alice")))


@pytest.fixture
def jwks_url(rsa_key) -> Iterator[str]:
    """A JWKS endpoint on loopback publishing ``rsa_key``'s public half as kid 'k1'."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass  # keep test output clean

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_rs256_token_is_checked_against_a_jwks_url(
    api_settings_factory: Callable[..., Any], rsa_key, jwks_url: str
) -> None:
    settings = api_settings_factory(jwt_algorithms="RS256", jwt_jwks_url=jwks_url)
    async with running_api(settings) as stub:
        good = jwt.encode(claims(sub="frank"), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        assert (await stub.GetConversations(LIST, metadata=bearer(good))).next_page_token == ""
        unknown = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k2"})
        err = await refused(stub, bearer(unknown))
        assert err.details() == "signing key not found"
