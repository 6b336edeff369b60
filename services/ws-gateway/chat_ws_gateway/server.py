"""The gateway's HTTP face: the /v1/ws endpoint, the demo web client, and its dev-token endpoint.

Authentication happens before the upgrade, so a bad token is an HTTP 401 and never a socket.
A token is taken from, in this order: ``Authorization: Bearer <token>`` (programs), the
subprotocols ``["bearer", "<token>"]`` (browsers; the server echoes ``bearer``), or the
``access_token`` query parameter (browsers; it may end up in proxy logs, so prefer the
subprotocol).

``device_id`` (query parameter, optional) names one of the user's registered devices: the socket
then also receives that device's to-device messages (docs/e2ee.md). A malformed one is an HTTP
400 before the upgrade; one that is not the user's device closes the socket with 4404 once the
first read of its mailbox has said so.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import hdrs, web

from chat_shared.auth import Principal, TokenVerifier, issue_token
from chat_shared.errors import Unauthenticated
from chat_shared.http_serving import BodyTimeout, read_body
from chat_shared.observability.logging import get_logger
from chat_shared.ratelimit import (
    ClassLimits,
    Decision,
    RateLimiter,
    registry_lookup,
    tenant_overrides,
)
from chat_ws_gateway import graphql_protocol as gp
from chat_ws_gateway import protocol
from chat_ws_gateway.connection import Connection
from chat_ws_gateway.graphql_connection import GraphQLConnection
from chat_ws_gateway.history import History
from chat_ws_gateway.hub import Hub
from chat_ws_gateway.limits import FrameBudget
from chat_ws_gateway.metrics import WS_CLOSES
from chat_ws_gateway.settings import GatewaySettings
from chat_ws_gateway.tenants import TenantWatch
from chat_ws_gateway.typing_indicators import TypingRelay

log = get_logger(__name__)

STATIC = resources.files("chat_ws_gateway") / "static"
_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml"}
DEV_TOKEN_TTL = 3600.0
GRAPHQL_INIT_WAIT = 10.0
"""Seconds a GraphQL socket may wait before its ``connection_init`` (then 4408)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


def offered_subprotocols(request: web.Request) -> list[str]:
    header = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
    return [p.strip() for p in header.split(",") if p.strip()]


def authenticate(verifier: TokenVerifier, request: web.Request) -> Principal:
    """The caller of a /v1/ws request; raises Unauthenticated."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        return verifier.verify_authorization(header)
    offered = offered_subprotocols(request)
    if protocol.SUBPROTOCOL in offered:
        i = offered.index(protocol.SUBPROTOCOL)
        if i + 1 >= len(offered):
            raise Unauthenticated("subprotocol 'bearer' must be followed by the token")
        return verifier.verify(offered[i + 1])
    token = request.query.get("access_token")
    if token is not None:
        return verifier.verify(token)
    raise Unauthenticated("missing token: send 'Authorization: Bearer <token>', the "
                          "subprotocols ['bearer', '<token>'], or ?access_token=<token>")


class GatewayServer:
    def __init__(self, settings: GatewaySettings, verifier: TokenVerifier, hub: Hub,
                 history: History, tenants: TenantWatch | None = None,
                 limiter: RateLimiter | None = None, typing: TypingRelay | None = None
                 ) -> None:
        """
        Args:
            limiter: the shared rate limiter (class ``connect`` for each new socket); None =
                RATE_LIMIT_ENABLED is false.
            typing: the typing relay (it limits typing signals itself, one per user and
                conversation every RATE_LIMIT_TYPING_INTERVAL, atomically with the publish);
                None = typing frames are accepted and dropped.
        """
        self._settings = settings
        self._limiter = limiter
        self._verifier = verifier
        self._hub = hub
        self._history = history
        self._tenants = tenants
        self._typing = typing
        self.accepting = True
        self.app = web.Application()
        self.app.router.add_get("/v1/ws", self._ws)
        if settings.graphql_enabled:
            self.app.router.add_get("/graphql", self._graphql)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/demo/config.json", self._config)
        self.app.router.add_post("/demo/token", self._dev_token)
        self.app.router.add_get("/demo/{name}", self._static)
        self.app.router.add_get("/favicon.ico", self._favicon)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not self.accepting:
            return _error(503, "unavailable", "the gateway is shutting down")
        try:
            principal = authenticate(self._verifier, request)
        except Unauthenticated as exc:
            return _error(401, "unauthenticated", str(exc))
        try:
            device_id = protocol.device_id(request.query.get("device_id"))
        except ValueError as exc:
            return _error(400, "invalid_argument", str(exc))
        s = self._settings
        echo = (protocol.SUBPROTOCOL,) if protocol.SUBPROTOCOL in offered_subprotocols(
            request) else ()
        ws = web.WebSocketResponse(
            protocols=echo, heartbeat=s.ws_heartbeat or None, max_msg_size=s.ws_max_frame_bytes,
            compress=False,  # a deflate context per socket costs far more memory than it saves
            timeout=s.ws_close_timeout)
        # Read before the handshake: from the handshake on, counting the user's sockets and
        # adding this one happen with no await in between (below).
        admitted, tenant_limits = await self._tenant_admitted(principal.tenant_id)
        connect = await self._connect_allowed(principal, tenant_limits) if admitted else None
        await ws.prepare(request)
        if not await self._admit(ws, principal, admitted, connect):
            return ws
        conn = Connection(ws, principal.user_id, history=self._history,
                          queue_size=s.ws_send_queue_size, close_timeout=s.ws_close_timeout,
                          max_positions=s.ws_max_resume_positions,
                          transport=request.transport, tenant_id=principal.tenant_id,
                          typing=self._typing, device_id=device_id,
                          device_check_interval=s.ws_device_check_interval)
        await self._serve(ws, conn, principal, conn.on_text)
        return ws

    async def _admit(self, ws: web.WebSocketResponse, principal: Principal, admitted: bool,
                     connect: Decision | None) -> bool:
        """Whether an open socket may stay: its tenant, the connect rate and the per-user
        cap; a refused one is closed with the code saying why."""
        s = self._settings
        if not admitted:
            WS_CLOSES.labels("tenant_denied").inc()
            log.info("ws_refused", user_id=principal.user_id, tenant=principal.tenant_id,
                     reason="tenant_denied")
            await ws.close(code=protocol.CLOSE_TENANT_DENIED,
                           message=b"tenant is not registered or is disabled")
            return False
        if connect is not None and not connect.allowed:
            WS_CLOSES.labels("connect_rate_limited").inc()
            await ws.close(code=protocol.CLOSE_CONNECT_RATE_LIMITED,
                           message=f"connect rate limit; retry after "
                                   f"{connect.retry_after:.3f} s".encode())
            return False
        # Counted here and added in _serve with no await in between, so that concurrent
        # opens cannot all pass the check. The socket is accepted and then closed, not
        # refused with an HTTP status, because browsers do not show a failed upgrade's
        # status to the page.
        if (self._hub.connections_of(principal.tenant_id, principal.user_id)
                >= s.ws_max_connections_per_user):
            WS_CLOSES.labels("too_many_connections").inc()
            log.info("ws_refused", user_id=principal.user_id, reason="too_many_connections",
                     limit=s.ws_max_connections_per_user)
            await ws.close(code=protocol.CLOSE_TOO_MANY_CONNECTIONS,
                           message=b"too many connections for this user")
            return False
        return True

    async def _serve(self, ws: web.WebSocketResponse, conn: Connection, principal: Principal,
                     on_text: Callable[[str], Awaitable[None]]) -> None:
        """Registers the connection with the hub and reads the client's frames until the
        socket closes (the inbound frame budget applies to every protocol)."""
        s = self._settings
        self._hub.add(conn)
        conn.start(expires_at=principal.expires_at, resume_wait=s.ws_resume_wait)
        log.debug("ws_connected", user_id=principal.user_id)
        budget = FrameBudget(s.ws_max_inbound_frames_per_second)
        try:
            async for msg in ws:
                if msg.type in (web.WSMsgType.TEXT, web.WSMsgType.BINARY) and not budget.take():
                    log.info("ws_frame_rate_exceeded", user_id=principal.user_id,
                             limit=s.ws_max_inbound_frames_per_second)
                    conn.close(protocol.CLOSE_TOO_MANY_FRAMES, "too many frames",
                               "too_many_frames")
                    break
                if msg.type == web.WSMsgType.TEXT:
                    await on_text(msg.data)
                elif msg.type == web.WSMsgType.BINARY:
                    conn.send_error(protocol.BAD_FRAME, "binary frames are not accepted; "
                                                        "send JSON text frames")
        finally:
            self._hub.remove(conn)
            await conn.finish()
            log.debug("ws_disconnected", user_id=principal.user_id, code=ws.close_code)

    async def _graphql(self, request: web.Request) -> web.StreamResponse:
        """GraphQL subscriptions over graphql-transport-ws (graphql_connection): the token in
        the Authorization header (refused before the upgrade, as /v1/ws) or in
        ``connection_init``'s payload (browsers cannot set headers)."""
        if not self.accepting:
            return _error(503, "unavailable", "the gateway is shutting down")
        if gp.SUBPROTOCOL not in offered_subprotocols(request):
            return _error(400, "bad_request", f"offer the {gp.SUBPROTOCOL} subprotocol")
        principal: Principal | None = None
        if request.headers.get(hdrs.AUTHORIZATION) is not None:
            try:
                principal = self._verifier.verify_authorization(
                    request.headers[hdrs.AUTHORIZATION])
            except Unauthenticated as exc:
                return _error(401, "unauthenticated", str(exc))
        s = self._settings
        ws = web.WebSocketResponse(
            protocols=(gp.SUBPROTOCOL,), heartbeat=s.ws_heartbeat or None,
            max_msg_size=s.ws_max_frame_bytes, compress=False, timeout=s.ws_close_timeout)
        await ws.prepare(request)
        principal = await self._graphql_init(ws, principal)
        if principal is None:
            return ws
        admitted, tenant_limits = await self._tenant_admitted(principal.tenant_id)
        connect = await self._connect_allowed(principal, tenant_limits) if admitted else None
        if not await self._admit(ws, principal, admitted, connect):
            return ws
        conn = GraphQLConnection(
            ws, principal.user_id, history=self._history, queue_size=s.ws_send_queue_size,
            close_timeout=s.ws_close_timeout, max_positions=s.ws_max_resume_positions,
            transport=request.transport, tenant_id=principal.tenant_id, typing=self._typing,
            graphql=s, introspection=s.graphql_switch(s.graphql_introspection, s.development))
        conn.send_message({"type": "connection_ack"})
        await self._serve(ws, conn, principal, conn.on_message)
        return ws

    async def _graphql_init(self, ws: web.WebSocketResponse,
                            principal: Principal | None) -> Principal | None:
        """Waits for ``connection_init``; the caller, or None once the socket is closed."""
        try:
            msg = await ws.receive(timeout=GRAPHQL_INIT_WAIT)
        except TimeoutError:
            await ws.close(code=gp.CLOSE_INIT_TIMEOUT,
                           message=b"Connection initialisation timeout")
            return None
        if msg.type != web.WSMsgType.TEXT:
            if not ws.closed:
                await ws.close(code=gp.CLOSE_BAD_MESSAGE, message=b"expected connection_init")
            return None
        try:
            init = gp.parse_message(msg.data)
        except gp.BadMessage as exc:
            await ws.close(code=gp.CLOSE_BAD_MESSAGE, message=str(exc).encode())
            return None
        if init.type != "connection_init":
            await ws.close(code=gp.CLOSE_UNAUTHORIZED, message=b"Unauthorized")
            return None
        if principal is not None:
            return principal
        token = gp.token_of(init.payload)
        try:
            if token is None:
                raise Unauthenticated("connection_init's payload carries no token")
            return self._verifier.verify(token)
        except Unauthenticated as exc:
            WS_CLOSES.labels("unauthenticated").inc()
            await ws.close(code=gp.CLOSE_FORBIDDEN, message=f"Forbidden: {exc}"[:120].encode())
            return None

    async def _connect_allowed(self, principal: Principal, tenant_limits: dict[str, object]
                               ) -> Decision | None:
        """The limiter's decision for a new socket (class ``connect``, with the tenant's own
        values from the registry over the settings'); None when off. The limiter logs each
        limited user once a minute."""
        if self._limiter is None:
            return None
        limits: ClassLimits | None = None
        if tenant_limits:
            limits = tenant_overrides(self._limiter.policy,
                                      registry_lookup(tenant_limits))["connect"]
        return await self._limiter.check("connect", principal.tenant_id, principal.user_id,
                                         limits)

    async def _tenant_admitted(self, tenant: str) -> tuple[bool, dict[str, object]]:
        """Whether the tenant is registered and active, and its registry limits. A registry
        that cannot be read admits the socket with the settings' limits (PostgreSQL down
        must not close the gateway to everyone): the tenant watch checks it again within
        WS_TENANT_CHECK_INTERVAL once the registry answers."""
        if self._tenants is None:
            return True, {}
        try:
            limits = await self._tenants.admit(tenant)
        except Exception:  # noqa: BLE001 - see the docstring; the watch closes it later
            log.warning("ws_tenant_check_failed", tenant=tenant, exc_info=True)
            return True, {}
        return limits is not None, limits or {}

    async def _index(self, _: web.Request) -> web.Response:
        return self._file("index.html")

    async def _favicon(self, _: web.Request) -> web.Response:
        # Browsers ask every page's origin for this; the demo has no icon, and "none" (204,
        # cached for a day) keeps a 404 out of the console and the logs.
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

    async def _static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.Response:
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES:
            raise web.HTTPNotFound()
        path = STATIC / name
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=_STATIC_TYPES[suffix],
                            headers={"Cache-Control": "no-cache"})

    async def _config(self, request: web.Request) -> web.Response:
        api = self._settings.api_public_url or f"{request.scheme}://{request.url.host}:8080"
        return _json({"api_url": api, "ws_path": "/v1/ws",
                      "dev_tokens": self._dev_tokens_allowed()})

    def _dev_tokens_allowed(self) -> bool:
        s = self._settings
        return s.development and any(
            a.startswith("HS") for a in s.algorithm_list)

    async def _dev_token(self, request: web.Request) -> web.Response:
        """A token for any user id, signed with the configured HS secret: development only.
        Elsewhere the same 404 as any unknown path, so a deployment that forgets ENVIRONMENT
        neither mints tokens nor advertises that it could."""
        if not self._dev_tokens_allowed():
            raise web.HTTPNotFound()
        try:
            body = orjson.loads(await read_body(request, self._settings.http_body_timeout))
            user = body["user_id"].strip()
        except BodyTimeout as exc:
            response = _error(408, "request_timeout", str(exc))
            response.force_close()
            return response
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return _error(400, "invalid_argument", 'body must be {"user_id": "<id>"}')
        if not user or len(user) > 128:
            return _error(400, "invalid_argument", "user_id must be 1..128 characters")
        s = self._settings
        alg = next(a for a in s.algorithm_list if a.startswith("HS"))
        now = time.time()
        token = issue_token(user, secret=s.jwt_secret, ttl_seconds=DEV_TOKEN_TTL,
                            issuer=s.jwt_issuer, audience=s.jwt_audience, algorithm=alg, now=now)
        return _json({"user_id": user, "access_token": token,
                      "expires_at": int(now + DEV_TOKEN_TTL)})
