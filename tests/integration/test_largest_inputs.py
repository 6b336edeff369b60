"""No request may hold the API's event loop: the largest input every field accepts, for every
RPC over gRPC and every HTTP route, is answered within 50 ms of server time, and a small call
of another user made meanwhile is not held up by more than 50 ms.

What is judged is the server's own account, not client wall time (the machine running the
suite is shared and noisy):

- the call's ``duration_ms`` in its log line: gRPC's ``rpc`` line (decoding, authentication,
  validation, storage), HTTP's ``http_request`` line (body read and JSON parsing too);
- the API's event-loop lag histogram (``chat_event_loop_lag_seconds``): the monitor wakes every
  20 ms and records how late it woke, so a stretch of more than 70 ms in which the loop ran one
  thing shows up as an observation over 50 ms: the delay every other caller saw;
- the server durations of a bystander (another user's small GetConversations calls, made
  back to back on its own channel while the large call runs).

Two kinds of input per RPC:

- ``LARGEST_VALID``: the largest request the service accepts, every field at its limit. A new
  RPC fails ``test_every_rpc_declares_its_largest_valid_request`` until it is added there;
- for every field of the request (read from the descriptor, so a new RPC or field is covered
  without a change here), that request with the one field filled up to the transport's limit:
  1 MiB of gRPC message, HTTP_MAX_BODY_BYTES of JSON body, or the 8 KB request line for path
  and query fields. Mostly invalid; what matters is that the answer is quick and not a 5xx.

Two cases have a larger server-time budget, named in ``DATABASE_BOUND``: creating a
conversation at the member limit inserts 1,000 membership rows, which takes PostgreSQL 30-50 ms
of statement time (EXPLAIN ANALYZE; a third of it the foreign key check of each row) plus the
commit; the largest SendToDevice stores 100 messages of 4 KiB, each with its outbox event,
after locking the target devices' rows (11-28 ms of statement time, 40 ms of server time on
a lightly loaded machine, over 50 under load). That time is spent waiting, not on the loop:
the lag and bystander conditions still hold at 50 ms.

A case that misses 50 ms by a little is measured again (up to ``ATTEMPTS`` times) and passes
when one attempt is within: a busy machine can pause a process for tens of milliseconds, a
defect does not let one attempt through. One that misses by more than ten times fails at once.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import vodozemac
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from chat_api.transport.http_routes import HttpBinding, http_bindings
from chat_shared.e2ee import device_statement, one_time_key_statement
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth, make_token
from tests.support.api_process import (  # noqa: F401 - api_process_fixture: a fixture
    LAG_METRIC,
    ApiUnderTest,
    api_process_fixture,
    lag_over,
)

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
LIMIT_MS = 50.0
ATTEMPTS = 4
HOPELESS_MS = 10 * LIMIT_MS
GRPC_MAX_MESSAGE = 1 << 20            # the API's grpc.max_receive_message_length
HTTP_MAX_BODY = 1 << 20               # HTTP_MAX_BODY_BYTES' default
HTTP_MAX_LINE = 8190                  # aiohttp's request line limit
MAX_MEMBERS = 1000                    # chat.proto: 999 member_ids, with the caller 1,000
MAX_CONTENT = 4096                    # chat.proto: SendMessageRequest.content
MAX_KEY = 255                         # chat.proto: SendMessageRequest.idempotency_key
MAX_USER_ID = 128
MAX_TITLE = 200
MAX_PAGE = 100
MAX_SEARCH_PAGE = 50                  # chat.proto: SearchMessagesRequest.limit
INT64_MAX, INT32_MAX = 2**63 - 1, 2**31 - 1
MAX_TIMESTAMP = "9999-12-31T23:59:59.999999999Z"
CALLER, BYSTANDER = "alice", "bystander"
DATABASE_BOUND = {"CreateConversation": 250.0, "SendToDevice": 250.0}
"""Server-time budget (ms) of an RPC's largest *valid* request whose time is PostgreSQL's."""


# --- the inputs ----------------------------------------------------------------------------

@dataclass
class Seed:
    """What the largest valid requests refer to: a conversation at the member limit holding a
    full page of messages at the length limit, and a caller in more than a page of them."""

    big_conversation: str
    counter: itertools.count[int] = field(default_factory=itertools.count)
    thread_root: str = ""
    """The big conversation's first message, whose thread holds the page of messages."""
    members: list[str] = field(default_factory=list)
    """The big conversation's members but the caller (ids of the longest length)."""
    message_ids: list[str] = field(default_factory=list)
    """The caller's messages in it: the first is edited and reacted to, the second deleted."""
    account: vodozemac.Account = field(default_factory=vodozemac.Account)
    """The caller's registered device (end-to-end encryption), named ``device_id``."""
    device_id: str = ""

    def unique(self, length: int) -> str:
        return f"{next(self.counter):x}-{uuid.uuid4().hex}".ljust(length, "k")[:length]


def _members(seed: Seed) -> list[str]:
    # Distinct ids of the longest accepted length; with the caller, exactly the limit.
    prefix = seed.unique(16)
    return [f"{prefix}-{i:05d}".ljust(MAX_USER_ID, "m") for i in range(MAX_MEMBERS - 1)]


LONG_EMOJI = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
"""One emoji of seven code points (the flag of Scotland, a tag sequence)."""


def _content() -> str:
    # Characters, not bytes, are limited: a mix of 1- to 4-byte UTF-8, newlines allowed.
    return ("ab\u00e9\u20ac\U0001f600\n" * MAX_CONTENT)[:MAX_CONTENT]


def _register(s: Seed) -> chat_pb2.RegisterDeviceRequest:
    account, device = vodozemac.Account(), s.unique(64)
    curve, ed = account.curve25519_key.to_base64(), account.ed25519_key.to_base64()
    return chat_pb2.RegisterDeviceRequest(
        device_id=device, curve25519_key=curve, ed25519_key=ed,
        signature=account.sign(device_statement(CALLER, device, curve, ed)).to_base64())


def _one_time_keys(s: Seed) -> chat_pb2.UploadOneTimeKeysRequest:
    s.account.generate_one_time_keys(101)
    keys = []
    for key_id, key in s.account.one_time_keys.items():
        statement = one_time_key_statement(CALLER, s.device_id, key_id, key.to_base64(),
                                           fallback=not keys)
        keys.append(chat_pb2.OneTimeKey(key_id=key_id, public_key=key.to_base64(),
                                        signature=s.account.sign(statement).to_base64()))
    s.account.mark_keys_as_published()
    return chat_pb2.UploadOneTimeKeysRequest(device_id=s.device_id, keys=keys[1:],
                                             fallback_key=keys[0])


LARGEST_VALID: dict[str, Callable[[Seed], Message]] = {
    "CreateConversation": lambda s: chat_pb2.CreateConversationRequest(
        member_ids=_members(s), title="T" * MAX_TITLE),
    "SendMessage": lambda s: chat_pb2.SendMessageRequest(
        conversation_id=s.big_conversation, content=_content(), idempotency_key=s.unique(MAX_KEY),
        thread_root_id=s.thread_root),
    "GetMessages": lambda s: chat_pb2.GetMessagesRequest(
        conversation_id=s.big_conversation, limit=MAX_PAGE, include_thread_replies=True),
    "GetThread": lambda s: chat_pb2.GetThreadRequest(
        conversation_id=s.big_conversation, root_id=s.thread_root, limit=MAX_PAGE),
    "GetConversations": lambda s: chat_pb2.GetConversationsRequest(limit=MAX_PAGE),
    "GetConversation": lambda s: chat_pb2.GetConversationRequest(
        conversation_id=s.big_conversation),
    "MarkAsRead": lambda s: chat_pb2.MarkAsReadRequest(
        conversation_id=s.big_conversation, up_to_seq=INT64_MAX),
    # 32 words (the most a query may have) in 256 characters, the last one a prefix, with
    # every filter and the largest page.
    "SearchMessages": lambda s: chat_pb2.SearchMessagesRequest(
        query=" ".join(["ab\u00e9\u20ac\U0001f600ab"] * 31 + ["a" * 8]),
        conversation_id=s.big_conversation, sender_id=CALLER, limit=MAX_SEARCH_PAGE),
    # Every member again: the longest list AddMembers takes to a conversation at the limit.
    "AddMembers": lambda s: chat_pb2.AddMembersRequest(
        conversation_id=s.big_conversation, member_ids=s.members),
    "RemoveMember": lambda s: chat_pb2.RemoveMemberRequest(
        conversation_id=s.big_conversation, user_id=s.unique(MAX_USER_ID)),
    "SetMemberRole": lambda s: chat_pb2.SetMemberRoleRequest(
        conversation_id=s.big_conversation, user_id=s.members[-1], role="member"),
    "UpdateConversation": lambda s: chat_pb2.UpdateConversationRequest(
        conversation_id=s.big_conversation, title="U" * MAX_TITLE,
        history_visible_to_new_members=True),
    "EditMessage": lambda s: chat_pb2.EditMessageRequest(
        conversation_id=s.big_conversation, message_id=s.message_ids[0], content=_content()),
    "DeleteMessage": lambda s: chat_pb2.DeleteMessageRequest(
        conversation_id=s.big_conversation, message_id=s.message_ids[1]),
    "AddReaction": lambda s: chat_pb2.AddReactionRequest(
        conversation_id=s.big_conversation, message_id=s.message_ids[0], emoji=LONG_EMOJI),
    "RemoveReaction": lambda s: chat_pb2.RemoveReactionRequest(
        conversation_id=s.big_conversation, message_id=s.message_ids[0], emoji=LONG_EMOJI),
    # Without an object store here these answer FAILED_PRECONDITION: quick, not a 5xx.
    "CreateUpload": lambda s: chat_pb2.CreateUploadRequest(
        conversation_id=s.big_conversation, filename="f" * 1024, content_type="a/" + "b" * 125,
        size_bytes=INT64_MAX),
    "GetAttachmentUrl": lambda s: chat_pb2.GetAttachmentUrlRequest(
        attachment_id=str(uuid.uuid4()), thumbnail=True),
    # End-to-end encryption: the caller's seeded device; 250 members' devices to claim from,
    # 100 to-device messages of the longest body.
    "RegisterDevice": _register,
    "UploadOneTimeKeys": _one_time_keys,
    "ClaimKeys": lambda s: chat_pb2.ClaimKeysRequest(
        conversation_id=s.big_conversation, devices=[
            chat_pb2.DeviceRef(user_id=m, device_id=s.unique(64))
            for m in [*s.members[:249], CALLER]]),
    "ListDevices": lambda s: chat_pb2.ListDevicesRequest(
        conversation_id=s.big_conversation, user_id=s.members[-1]),
    "RemoveDevice": lambda s: chat_pb2.RemoveDeviceRequest(device_id=s.unique(64)),
    "SendToDevice": lambda s: chat_pb2.SendToDeviceRequest(
        conversation_id=s.big_conversation, sender_device=s.device_id, messages=[
            chat_pb2.ToDeviceMessage(recipient_id=m, recipient_device=s.device_id,
                                     message_type="m" * 64, body="b" * 4096)
            for m in s.members[:99] + [CALLER]]),
    "GetToDeviceMessages": lambda s: chat_pb2.GetToDeviceMessagesRequest(
        device_id=s.device_id, limit=500),
    "AckToDeviceMessages": lambda s: chat_pb2.AckToDeviceMessagesRequest(
        device_id=s.device_id, up_to_id=INT64_MAX),
}
"""The largest request each RPC accepts (every field at the limit the service enforces)."""


def _distinct(budget: int, overhead: int) -> list[str]:
    """Distinct short strings whose encoded size (each plus ``overhead``) fits ``budget``."""
    out: list[str] = []
    used = 0
    for i in itertools.count():
        item = f"{i:x}"
        if used + len(item) + overhead > budget:
            return out
        out.append(item)
        used += len(item) + overhead


def _text(size: int) -> str:
    return ("0123456789abcdef" * (size // 16 + 1))[:max(size, 0)]


def _grpc_fill(message: Message, fd: FieldDescriptor) -> None:
    """Sets ``fd`` to the largest value a 1 MiB gRPC message leaves room for."""
    message.ClearField(fd.name)
    budget = GRPC_MAX_MESSAGE - message.ByteSize() - 64
    if fd.is_repeated and fd.type == FieldDescriptor.TYPE_STRING:
        getattr(message, fd.name).extend(_distinct(budget, overhead=2))
    elif fd.is_repeated and _is_record(fd):
        # As many small items (every text field 32 characters) as fit.
        items = getattr(message, fd.name)
        while message.ByteSize() < budget - 1024:
            _fill_texts(items.add(), 32)
    elif fd.is_repeated:
        raise AssertionError(f"no filler for repeated {fd.full_name}: add one here")
    elif _is_record(fd):
        _fill_texts(getattr(message, fd.name), 32)
        first = _text_fields(fd.message_type)[0]
        setattr(getattr(message, fd.name), first.name, b"" if first.type ==
                FieldDescriptor.TYPE_BYTES else "")
        text = _text(GRPC_MAX_MESSAGE - message.ByteSize() - 64)
        setattr(getattr(message, fd.name), first.name,
                text.encode() if first.type == FieldDescriptor.TYPE_BYTES else text)
    else:
        _set_largest(message, fd, _text(budget - 8))


def _is_record(fd: FieldDescriptor) -> bool:
    """A message field other than a Timestamp: its text fields are what grows."""
    return (fd.message_type is not None
            and fd.message_type.full_name != "google.protobuf.Timestamp")


def _text_fields(desc: Any) -> list[FieldDescriptor]:
    return [f for f in desc.fields if not f.is_repeated
            and f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)]


def _fill_texts(message: Message, size: int) -> None:
    for f in _text_fields(message.DESCRIPTOR):
        text = _text(size)
        setattr(message, f.name, text.encode() if f.type == FieldDescriptor.TYPE_BYTES else text)


def _json_texts(desc: Any, size: int, first_size: int | None = None) -> dict[str, str]:
    out = {}
    for i, f in enumerate(_text_fields(desc)):
        n = first_size if i == 0 and first_size is not None else size
        out[f.name] = (_text(n) if f.type == FieldDescriptor.TYPE_STRING
                       else base64.b64encode(_text(n * 3 // 4).encode()).decode())
    return out


def _set_largest(message: Message, fd: FieldDescriptor, text: str) -> None:
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        setattr(message, fd.name, text if fd.type == FieldDescriptor.TYPE_STRING else text.encode())
    elif fd.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
                     FieldDescriptor.TYPE_SFIXED64):
        setattr(message, fd.name, INT64_MAX)
    elif fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
                     FieldDescriptor.TYPE_SFIXED32):
        setattr(message, fd.name, INT32_MAX)
    elif fd.type == FieldDescriptor.TYPE_BOOL:
        setattr(message, fd.name, True)
    elif fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":
        getattr(message, fd.name).FromJsonString(MAX_TIMESTAMP)
    else:
        raise AssertionError(f"no filler for {fd.full_name} ({fd.type}): add one here")


# --- measuring -------------------------------------------------------------------------------

@dataclass
class Outcome:
    limit_ms: float
    server_ms: float
    lag_events: float
    bystander_ms: float
    bystander_calls: int
    answer: str

    def hopeless(self) -> bool:
        return self.server_ms > 10 * self.limit_ms or self.bystander_ms > HOPELESS_MS

    def ok(self) -> bool:
        return (self.server_ms <= self.limit_ms and self.bystander_ms <= LIMIT_MS
                and self.lag_events == 0)


async def _bystander(channel: grpc.aio.Channel, stop: asyncio.Event) -> int:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    calls = 0
    while not stop.is_set():
        await stub.GetConversations(chat_pb2.GetConversationsRequest(limit=1),
                                    metadata=auth(BYSTANDER), timeout=30)
        calls += 1
        await asyncio.sleep(0.005)
    return calls


async def _measure(api: ApiUnderTest, call: Callable[[str], Awaitable[str]],
                   log_msg: str, limit_ms: float) -> Outcome:
    """Runs ``call(request_id)`` beside the bystander; the server's account of both."""
    request_id = uuid.uuid4().hex
    since = api.log_size()
    before = await api.metrics()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(api.grpc_target) as side:
        await chat_pb2_grpc.ChatServiceStub(side).GetConversations(
            chat_pb2.GetConversationsRequest(limit=1), metadata=auth(BYSTANDER), timeout=30)
        bystander = asyncio.create_task(_bystander(side, stop))
        try:
            answer = await call(request_id)
        finally:
            stop.set()
            calls = await bystander
    (line,) = await api.wait_for_records(
        lambda r: r.get("msg") == log_msg and r.get("request_id") == request_id, since=since)
    # The monitor must have woken (twice) after the call, or a stall at its end is not in yet.
    count = f"{LAG_METRIC}_count"
    after = await api.metrics()
    ticks = after.get(count, 0.0)
    for _ in range(200):
        if count not in after or after[count] >= ticks + 2:
            break
        await asyncio.sleep(0.01)
        after = await api.metrics()
    # No lag histogram at all counts as a failure (NaN is neither 0 nor comparable).
    lag_events = lag_over(after) - lag_over(before) if count in after else float("nan")
    bystander_lines = [r for r in api.records(since)
                       if r.get("msg") == "rpc" and r.get("user") == BYSTANDER]
    return Outcome(limit_ms=limit_ms, server_ms=float(line["duration_ms"]),
                   lag_events=lag_events,
                   bystander_ms=max((float(r["duration_ms"]) for r in bystander_lines),
                                    default=0.0),
                   bystander_calls=calls, answer=answer)


async def _judge(api: ApiUnderTest, name: str, call: Callable[[str], Awaitable[str]],
                 log_msg: str, report: list[str], limit_ms: float = LIMIT_MS) -> bool:
    outcome, attempt = None, 0
    while attempt < ATTEMPTS:
        attempt += 1
        outcome = await _measure(api, call, log_msg, limit_ms)
        if outcome.ok() or outcome.hopeless():
            break
    assert outcome is not None
    report.append(
        f"{'ok  ' if outcome.ok() else 'FAIL'} {name:<56} server {outcome.server_ms:8.1f} ms"
        f" (limit {outcome.limit_ms:.0f})  "
        f"loop stalls>50ms {outcome.lag_events:.0f}  bystander max {outcome.bystander_ms:7.1f} ms"
        f" ({outcome.bystander_calls} calls)  attempt {attempt}  -> {outcome.answer}")
    return outcome.ok()


# --- setting up ----------------------------------------------------------------------------

async def _seed(api: ApiUnderTest) -> Seed:
    async with grpc.aio.insecure_channel(api.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        seed = Seed(big_conversation="")
        big = await stub.CreateConversation(LARGEST_VALID["CreateConversation"](seed),
                                            metadata=auth(CALLER), timeout=30)
        seed.big_conversation = big.conversation.id
        root = await stub.SendMessage(LARGEST_VALID["SendMessage"](seed), metadata=auth(CALLER),
                                      timeout=30)
        seed.thread_root = root.message.id  # the page of messages below are its replies
        seed.members = [m for m in big.conversation.member_ids if m != CALLER]
        for _ in range(MAX_PAGE):
            sent = await stub.SendMessage(LARGEST_VALID["SendMessage"](seed),
                                          metadata=auth(CALLER), timeout=30)
            seed.message_ids.append(sent.message.id)
        for i in range(MAX_PAGE):
            await stub.CreateConversation(chat_pb2.CreateConversationRequest(
                member_ids=[f"peer-{i}"]), metadata=auth(CALLER), timeout=30)
        seed.device_id = seed.unique(64)
        curve = seed.account.curve25519_key.to_base64()
        ed = seed.account.ed25519_key.to_base64()
        await stub.RegisterDevice(chat_pb2.RegisterDeviceRequest(
            device_id=seed.device_id, curve25519_key=curve, ed25519_key=ed,
            signature=seed.account.sign(device_statement(CALLER, seed.device_id, curve,
                                                         ed)).to_base64()),
            metadata=auth(CALLER), timeout=30)
    return seed


def test_every_rpc_declares_its_largest_valid_request() -> None:
    assert sorted(LARGEST_VALID) == sorted(m.name for m in SERVICE.methods), (
        "declare the largest request a new RPC accepts in LARGEST_VALID")


# --- gRPC ------------------------------------------------------------------------------------

def grpc_cases(seed: Seed) -> list[tuple[str, str, Callable[[], Message], float]]:
    """(case name, method, request factory, server-time limit): the largest valid request, then
    each field at the transport's limit (factories: each attempt gets fresh ids and keys)."""
    cases: list[tuple[str, str, Callable[[], Message], float]] = []
    for method in SERVICE.methods:
        make = LARGEST_VALID[method.name]
        cases.append((f"{method.name} largest valid", method.name, lambda m=make: m(seed),
                      DATABASE_BOUND.get(method.name, LIMIT_MS)))
        for fd in method.input_type.fields:
            def filled(m: Callable[[Seed], Message] = make, f: FieldDescriptor = fd) -> Message:
                request = m(seed)
                _grpc_fill(request, f)
                return request
            cases.append((f"{method.name} {fd.name} filled to 1 MiB", method.name, filled,
                          _filled_limit(method.name, fd)))
    return cases


def _filled_limit(method: str, fd: FieldDescriptor) -> float:
    """A bool "at its limit" is the largest valid request itself (true), with its budget."""
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return DATABASE_BOUND.get(method, LIMIT_MS)
    return LIMIT_MS


async def test_largest_grpc_inputs_answer_within_50ms_of_server_time(
        api_process: ApiUnderTest) -> None:
    seed = await _seed(api_process)
    report: list[str] = []
    passed = True
    async with grpc.aio.insecure_channel(api_process.grpc_target) as channel:
        for name, method, make, limit_ms in grpc_cases(seed):
            request = make()
            assert request.ByteSize() < GRPC_MAX_MESSAGE, name
            rpc = channel.unary_unary(f"/chat.v1.ChatService/{method}",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=lambda b: b)

            async def call(request_id: str, rpc: Any = rpc, make: Any = make,
                           name: str = name) -> str:
                try:
                    await rpc(make(), timeout=20, metadata=(
                        *auth(CALLER), ("x-request-id", request_id)))
                    return "OK"
                except grpc.aio.AioRpcError as err:
                    assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                              grpc.StatusCode.DEADLINE_EXCEEDED), (name, err)
                    return err.code().name

            passed &= await _judge(api_process, name, call, "rpc", report, limit_ms)
    print("\n".join(report))
    assert passed, "\n".join(report)


# --- HTTP ------------------------------------------------------------------------------------

@dataclass
class HttpCall:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None

    def line_length(self) -> int:
        return len(f"{self.method} {self.url()} HTTP/1.1")

    def url(self) -> str:
        query = urllib.parse.urlencode(self.query)
        return self.path + (f"?{query}" if query else "")


def http_call(binding: HttpBinding, request: Message) -> HttpCall:
    """The HTTP request for ``request`` on ``binding``: path variables, then body or query."""
    data = json_format.MessageToDict(request, preserving_proto_field_name=True)
    path = binding.openapi_path
    for field_path in binding.path_fields.values():
        path = path.replace("{" + field_path + "}", urllib.parse.quote(data.pop(field_path), ""))
    if binding.body == "*":
        return HttpCall(binding.http_method, path, {}, data)
    query = {k: v if isinstance(v, str) else _json_scalar(v) for k, v in data.items()}
    return HttpCall(binding.http_method, path, query, None)


def _json_scalar(value: Any) -> str:
    if isinstance(value, dict):  # a Timestamp: MessageToDict gives its RFC 3339 string
        raise AssertionError(f"unexpected message value {value!r} in a query")
    return str(value)


def _http_fill(binding: HttpBinding, base: Message, fd: FieldDescriptor) -> HttpCall:
    """``base`` on ``binding`` with ``fd`` filled up to the limit of where it travels."""
    if fd.name in binding.path_fields.values():
        marker = "FILL-ME"
        setattr(base, fd.name, marker)
        call = http_call(binding, base)
        budget = HTTP_MAX_LINE - call.line_length() + len(marker) - 64
        call.path = call.path.replace(marker, _text(budget))
        return call
    call = http_call(binding, base)
    if call.body is not None:
        call.body.pop(fd.name, None)
        budget = HTTP_MAX_BODY - len(json_format.MessageToJson(base)) - 256
        call.body[fd.name] = _json_largest(fd, budget)
        return call
    call.query.pop(fd.name, None)
    budget = HTTP_MAX_LINE - call.line_length() - len(fd.name) - 64
    value = _json_largest(fd, budget)
    if isinstance(value, list):
        raise AssertionError(f"no filler for repeated query field {fd.full_name}")
    call.query[fd.name] = value
    return call


def _json_largest(fd: FieldDescriptor, budget: int) -> Any:
    if fd.is_repeated and fd.type == FieldDescriptor.TYPE_STRING:
        return _distinct(budget, overhead=4)  # quotes, comma and space (json.dumps)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _text(budget)
    if fd.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
                   FieldDescriptor.TYPE_SFIXED64):
        return str(INT64_MAX)
    if fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
                   FieldDescriptor.TYPE_SFIXED32):
        return str(INT32_MAX)
    if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":
        return MAX_TIMESTAMP
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return True
    if fd.is_repeated and _is_record(fd):
        item = _json_texts(fd.message_type, 32)
        return [item] * (budget // (len(json.dumps(item)) + 2))
    if _is_record(fd):
        return _json_texts(fd.message_type, 32, first_size=budget - 1024)
    raise AssertionError(f"no HTTP filler for {fd.full_name}: add one here")


def http_cases(seed: Seed) -> list[tuple[str, Callable[[], HttpCall], float]]:
    cases: list[tuple[str, Callable[[], HttpCall], float]] = [
        ("GET /openapi.json", lambda: HttpCall("GET", "/openapi.json", {}, None), LIMIT_MS),
        ("GET /docs", lambda: HttpCall("GET", "/docs", {}, None), LIMIT_MS),
    ]
    for binding in http_bindings():
        make = LARGEST_VALID[binding.method.name]
        route = f"{binding.http_method} {binding.template}"
        cases.append((f"{route} largest valid", lambda b=binding, m=make: http_call(b, m(seed)),
                      DATABASE_BOUND.get(binding.method.name, LIMIT_MS)))
        for fd in binding.method.input_type.fields:
            cases.append((f"{route} {fd.name} at its limit",
                          lambda b=binding, m=make, f=fd: _http_fill(b, m(seed), f),
                          _filled_limit(binding.method.name, fd)))
    return cases


async def test_largest_http_inputs_answer_within_50ms_of_server_time(
        api_process: ApiUnderTest) -> None:
    seed = await _seed(api_process)
    report: list[str] = []
    passed = True
    headers = {"Authorization": f"Bearer {make_token(CALLER)}"}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api_process.http_port}") as http:
        for name, make, limit_ms in http_cases(seed):
            sample = make()
            assert sample.line_length() <= HTTP_MAX_LINE, name

            async def call(request_id: str, make: Any = make, name: str = name) -> str:
                c: HttpCall = make()
                async with http.request(c.method, c.url(), json=c.body, timeout=timeout,
                                        headers={**headers, "X-Request-Id": request_id}) as resp:
                    await resp.read()
                    assert resp.status < 500, (name, resp.status)
                    return str(resp.status)

            passed &= await _judge(api_process, name, call, "http_request", report, limit_ms)
    print("\n".join(report))
    assert passed, "\n".join(report)


async def test_forty_thousand_members_are_refused_at_once(api_process: ApiUnderTest) -> None:
    """The probe's request: 40,000 distinct member ids (236 KB) froze every caller for 9 s."""
    members = 40_000
    report: list[str] = []
    request = chat_pb2.CreateConversationRequest(member_ids=[f"user-{i}" for i in range(members)])
    async with grpc.aio.insecure_channel(api_process.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)

        async def call(request_id: str) -> str:
            try:
                await stub.CreateConversation(request, timeout=30, metadata=(
                    *auth(CALLER), ("x-request-id", request_id)))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
                assert err.details().startswith("member_ids:"), err.details()
                return err.code().name
            raise AssertionError("40,000 members were accepted")

        ok = await _judge(api_process, f"CreateConversation {members} members", call, "rpc",
                          report)
    print("\n".join(report))
    assert ok, "\n".join(report)
