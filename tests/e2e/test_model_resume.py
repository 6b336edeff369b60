"""Model-based test of resume: random operations by several clients that disconnect at random
points, and after every sequence each client's state, rebuilt from WebSocket frames alone,
equals what GetMessages and GetConversations show it. Real chat-api, relay and gateway.

A seeded random driver (not hypothesis' stateful machine: every sequence needs a running
stack and real sockets, and a failing sequence is reproduced from its printed seed instead of
being shrunk). Each sequence is a fresh conversation of four users (an owner, two members, one
outsider who may be added), ``OPERATIONS`` random operations among sends, thread replies,
edits, deletions, reactions, member additions, removals, leaving, role changes, title changes,
disconnects and reconnects (with a resume from the client's last positions), some issued
concurrently. Then every client reconnects or waits for its live frames, and is compared.

A client does what a real one does: it applies every ordered frame in pos order (a frame out of
order is a divergence), keeps its last pos per conversation, resumes from it on reconnect,
and on reconnect asks GetConversations for conversations it does not know (it was added while
away, or added again after leaving) and resumes those from 0.

``CHAT_MODEL_SEQUENCES`` sets the number of sequences (default 1,000; CI runs the default),
``CHAT_MODEL_SEED`` the first seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

from tests.conftest import auth
from tests.helpers import create_conversation, send
from tests.support.client_state import ConversationView, server_view
from tests.support.ws_stack import Api, Gateway, Relay, base_env, ws_connect

SEQUENCES = int(os.environ.get("CHAT_MODEL_SEQUENCES", "1000"))
FIRST_SEED = int(os.environ.get("CHAT_MODEL_SEED", "1"))
OPERATIONS = 10
PARALLEL = 4
"""Sequences run at once (each its own conversation and users)."""
EMOJI = ("👍", "🎉", "❤️")
SETTLE = 20.0
"""Seconds a client may take to receive the changes committed before a check."""

# The default run takes about two minutes on a 2-core machine: above the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@dataclass
class Client:
    user: str
    views: dict[str, ConversationView] = field(default_factory=dict)
    replaying: set[str] = field(default_factory=set)
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task[None] | None = None
    problems: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    needs_sync: bool = False
    """A live frame said it was added to a conversation it does not follow: reconnect."""
    """One (re)connection at a time: a client has one socket (operations run concurrently)."""

    def member_of(self, cid: str) -> bool:
        view = self.views.get(cid)
        return view is not None and self.user in view.members

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind, cid = frame.get("type"), frame.get("conversation_id")
        if kind == "resumed":
            self.replaying.discard(cid)
            return
        if kind == "error":
            if frame.get("code") == "not_found":  # removed while away: forget it
                self.views.pop(cid, None)
                self.replaying.discard(cid)
            else:
                self.problems.append(f"{self.user}: error frame {frame}")
            return
        if "pos" not in frame or cid is None:
            return
        view = self.views.get(cid)
        if view is None or (cid not in self.replaying and self.user not in view.members):
            # Not followed (yet): being added is the cue to ask GetConversations.
            if kind == "member.added" and frame.get("user_id") == self.user:
                self.needs_sync = True
            return
        try:
            view.apply(frame)
        except AssertionError as exc:
            self.problems.append(f"{self.user}: {exc}")

    async def read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.on_frame(msg.json())

    async def disconnect(self) -> None:
        async with self.lock:
            await self._disconnect()

    async def _disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
            self.reader = None

    async def connect(self, stack: Stack, creation: dict[str, ConversationView]) -> None:
        """Reconnects and resumes: known conversations from their pos, the others the RPCs
        name from 0 (starting from the conversation as it was created)."""
        async with self.lock:
            await self._connect(stack, creation)

    async def _connect(self, stack: Stack, creation: dict[str, ConversationView]) -> None:
        await self._disconnect()
        self.needs_sync = False
        listed = await stack.stub.GetConversations(chat_pb2.GetConversationsRequest(limit=100),
                                                   metadata=auth(self.user))
        for summary in listed.conversations:
            cid = summary.conversation.id
            if not self.member_of(cid) and cid in creation:
                start = creation[cid]
                self.views[cid] = ConversationView(start.title, dict(start.members))
        positions = {cid: v.pos for cid, v in self.views.items() if self.user in v.members
                     or v.pos == 0}
        self.replaying = set(positions)
        self.ws = await ws_connect(stack.session, stack.gateway, self.user, positions=positions)
        self.reader = asyncio.ensure_future(self.read(self.ws))


@dataclass
class Stack:
    gateway: Gateway
    stub: chat_pb2_grpc.ChatServiceStub
    session: aiohttp.ClientSession


@pytest.fixture
async def stack(db_source: str, redis_addr: str, tmp_path: pathlib.Path):
    env = base_env(db_source, redis_addr, WS_MAX_CONNECTIONS_PER_USER=4)
    api = Api(env, tmp_path).start()
    relay = Relay(env, tmp_path).start()
    gateway = Gateway(env, tmp_path, "ws1").start()
    try:
        await asyncio.gather(api.ready(), relay.ready(), gateway.ready())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as channel, \
                aiohttp.ClientSession() as session:
            yield Stack(gateway, chat_pb2_grpc.ChatServiceStub(channel), session)
    finally:
        for service in (api, relay, gateway):
            service.stop()


async def operation(stack: Stack, rng: random.Random, cid: str, clients: list[Client],
                    creation: dict[str, ConversationView], sent: list[tuple[str, str]],
                    replies: set[str]) -> None:
    """One random operation; the RPC may refuse it (a role it lacks, a member who left): the
    comparison is with what the server then shows, whatever it decided."""
    stub, users = stack.stub, [c.user for c in clients]
    who = rng.choice(users)
    a = auth(who)
    kind = rng.choice(["send", "send", "reply", "edit", "delete", "react", "react", "unreact",
                       "add", "remove", "role", "title", "disconnect", "reconnect"])
    try:
        roots = [mid for mid, _ in sent if mid not in replies]
        if kind == "send" or (not sent and kind in ("reply", "edit", "delete", "react",
                                                    "unreact")):
            msg = await send(stub, who, cid, f"{who} says {rng.random():.6f}")
            sent.append((msg.id, who))
        elif kind == "reply":
            reply = await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=cid, content=f"{who} answers {rng.random():.6f}",
                idempotency_key=uuid.uuid4().hex, thread_root_id=rng.choice(roots)),
                metadata=a)
            sent.append((reply.message.id, who))
            replies.add(reply.message.id)
        elif kind == "edit":
            mid, sender = rng.choice(sent)
            await stub.EditMessage(chat_pb2.EditMessageRequest(
                conversation_id=cid, message_id=mid, content=f"edit {rng.random():.6f}"),
                metadata=auth(sender))
        elif kind == "delete":
            mid, sender = rng.choice(sent)
            await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(
                conversation_id=cid, message_id=mid), metadata=auth(rng.choice([sender, who])))
        elif kind in ("react", "unreact"):
            mid, _ = rng.choice(sent)
            cls = chat_pb2.AddReactionRequest if kind == "react" else chat_pb2.RemoveReactionRequest
            call = stub.AddReaction if kind == "react" else stub.RemoveReaction
            await call(cls(conversation_id=cid, message_id=mid, emoji=rng.choice(EMOJI)),
                       metadata=a)
        elif kind == "add":
            await stub.AddMembers(chat_pb2.AddMembersRequest(
                conversation_id=cid, member_ids=rng.sample(users, rng.randint(1, 2))),
                metadata=a)
        elif kind == "remove":
            await stub.RemoveMember(chat_pb2.RemoveMemberRequest(
                conversation_id=cid, user_id=rng.choice(users)), metadata=a)
        elif kind == "role":
            await stub.SetMemberRole(chat_pb2.SetMemberRoleRequest(
                conversation_id=cid, user_id=rng.choice(users),
                role=rng.choice(["admin", "member"])), metadata=a)
        elif kind == "title":
            await stub.UpdateConversation(chat_pb2.UpdateConversationRequest(
                conversation_id=cid, title=f"title {rng.randint(0, 9)}"), metadata=a)
        elif kind == "disconnect":
            await rng.choice(clients).disconnect()
        else:
            await rng.choice(clients).connect(stack, creation)
    except grpc.aio.AioRpcError as err:
        if err.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.FAILED_PRECONDITION):
            raise


async def settle(stack: Stack, rng: random.Random, cid: str, clients: list[Client],
                 creation: dict[str, ConversationView]) -> list[str]:
    """Brings every client up to date (a reconnect for some, live frames for the others) and
    returns the differences from what the RPCs show (none when all is well)."""
    expected: dict[str, dict[str, Any] | None] = {
        c.user: await server_view(stack.stub, c.user, cid) for c in clients}
    for client in clients:
        view = expected[client.user]
        stale = client.ws is None or client.needs_sync or (
            view is not None and not client.member_of(cid))
        if stale or rng.random() < 0.3:
            await client.connect(stack, creation)
    deadline = time.monotonic() + SETTLE
    differences: list[str] = []
    for client in clients:
        want = expected[client.user]
        while time.monotonic() < deadline:
            if client.problems:
                break
            if client.needs_sync:
                await client.connect(stack, creation)
            if want is None and not client.member_of(cid):
                break
            view = client.views.get(cid)
            if want is not None and view is not None and view.pos >= want["pos"] \
                    and cid not in client.replaying:
                break
            await asyncio.sleep(0.01)
        differences += client.problems
        client.problems = []
        view = client.views.get(cid)
        got = view.as_seen_by(client.user) if client.member_of(cid) and view else None
        if got != want:
            differences.append(f"{client.user}: client {got} != server {want}")
    return differences


async def run_sequence(stack: Stack, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = [f"s{seed}-{n}" for n in ("owner", "b", "c", "d")]
    conv = await create_conversation(stack.stub, names[0], names[1:3], f"model {seed}")
    start = ConversationView(conv.title, {names[0]: "owner", names[1]: "member",
                                          names[2]: "member"})
    creation = {conv.id: start}
    clients = [Client(n) for n in names]
    for client in clients:
        if client.user in start.members:
            client.views[conv.id] = ConversationView(start.title, dict(start.members))
        await client.connect(stack, creation)
    sent: list[tuple[str, str]] = []
    replies: set[str] = set()  # the ids in ``sent`` that are thread replies
    try:
        done = 0
        while done < OPERATIONS:
            together = min(rng.choice([1, 1, 2, 3]), OPERATIONS - done)
            await asyncio.gather(*(operation(stack, rng, conv.id, clients, creation, sent,
                                             replies)
                                   for _ in range(together)))
            done += together
        return [f"seed {seed}: {d}" for d in await settle(stack, rng, conv.id, clients,
                                                          creation)]
    finally:
        for client in clients:
            await client.disconnect()


async def test_clients_rebuilt_from_frames_equal_the_rpcs_after_random_sequences(
        stack: Stack) -> None:
    seeds = list(range(FIRST_SEED, FIRST_SEED + SEQUENCES))
    divergences: list[str] = []
    for start in range(0, len(seeds), PARALLEL):
        results = await asyncio.gather(*(run_sequence(stack, s)
                                         for s in seeds[start:start + PARALLEL]))
        for found in results:
            divergences += found
    print(f"\nmodel-based resume test: {len(seeds)} sequences of {OPERATIONS} operations, "
          f"{len(divergences)} divergences")
    assert not divergences, "\n".join(divergences[:10])
