"""SendMessage, GetMessages and GetThread.

Threads: a message sent with ``thread_root_id`` is a reply in the thread of that root-level
message. GetMessages lists the main timeline (root-level messages) unless asked for every
message; GetThread pages one thread. Both page in O(page) whatever the mix (the positions that
make it so are described in migration 0009 and ``storage.messages``).

Idempotency: (tenant, sender, idempotency_key) names one message, and the database alone decides it.
The send statement (``storage.messages``) answers a used key with the original message instead
of inserting, without taking a seq; concurrent sends of one key meet at the unique constraint.
Either way the send answers ALREADY_EXISTS naming the original (its id, seq and conversation).

Redis is not on the send path, because it bought nothing there. It used to sit in front of
the constraint (SET NX of the key, the insert only for the winner), which can only ever save
work on a *retry*, while every *new* send pays for it. Measured with
``scripts/measure_send_idempotency.py`` (sequential gRPC sends, 12 rounds of 300 of each kind
alternating between the variants, on a 2-core machine shared with other work, load average 5
to 8; each figure the median of the per-round differences from the Redis variant, and in how
many rounds the difference had that sign):

- a new send without Redis: 0.65 ms of API CPU less (11 of 12 rounds), about a fifth of a
  send's CPU on that machine, and 2.2 ms faster at the median (9 of 12);
- a retry without Redis: 0.85 ms of CPU less (9 of 12) and 1.2 ms faster (9 of 12), because
  the send statement answers a retry itself (``storage.messages``). Before it did, a retry
  without Redis was a failed insert and then a read: 0.25 ms of CPU and 1.8 ms more than with
  Redis (8 of 12), the only thing Redis ever bought.

Redis also put its faults on every send: with redis-py's default retries a killed Redis held
sends for seconds (p99 4.8 to 8.9 s during a kill, 3.7 to 4.3 s during a 3 s stall:
``tests/integration/test_redis_faults.py``), and a burst of a thousand concurrent sends
exhausted the client's pool (redis-py's asyncio pool holds 100 connections by default), which
the fast path took for a Redis fault: it then skipped Redis for a second and counted every
skipped send as "degraded". Without Redis, whatever it does (down, stalled, flushed) cannot slow
a send or make two messages of one key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ParamSpec, TypeVar

from prometheus_client import Counter

from chat_api.models import CiphertextRecord, MessageRecord, Page
from chat_api.service import page_tokens, validation
from chat_api.service.attachments import AttachmentService, CheckedUploads, disabled
from chat_api.service.reads import NOT_FOUND
from chat_api.service.tenants import TenantDirectory
from chat_api.storage.messages import (
    DuplicateKey,
    MessageRepository,
    PageMode,
    RootState,
    ThreadMode,
    ThreadPage,
)
from chat_shared.auth import Principal
from chat_shared.errors import (
    AlreadyExists,
    ChatError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

IDEMPOTENCY_HITS = Counter(
    "idempotency_hits_total",
    "Duplicate sends answered ALREADY_EXISTS, by what caught them (the database constraint)",
    ["source"],
)
IDEMPOTENCY_HITS.labels("database")  # exported as 0 before the first duplicate

# google.rpc.ErrorInfo reasons of ALREADY_EXISTS on SendMessage.
REASON_DUPLICATE = "DUPLICATE_REQUEST"      # same key, same conversation and content: a retry
REASON_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"  # same key, different conversation or content


def _duplicate(original: MessageRecord, conversation_id: str, content: str,
               thread_root_id: str | None, ciphertext: CiphertextRecord | None = None
               ) -> AlreadyExists:
    same = (original.conversation_id == conversation_id and original.content == content
            and original.thread_root_id == thread_root_id and original.ciphertext == ciphertext)
    reason = REASON_DUPLICATE if same else REASON_KEY_REUSED
    message = ("message already sent with this idempotency_key" if same
               else "idempotency_key was already used for a different message")
    return AlreadyExists(message, reason=reason, metadata={
        "message_id": original.id,
        "seq": str(original.seq),
        "conversation_id": original.conversation_id,
    })


class MessageService:
    def __init__(self, repo: MessageRepository, tenants: TenantDirectory,
                 attachments: AttachmentService | None = None) -> None:
        self._repo = repo
        self._tenants = tenants
        self._attachments = attachments

    async def send(
        self, caller: Principal, conversation_id: str, content: str, key: str,
        attachment_ids: Sequence[str] = (), thread_root_id: str = "",
        ciphertext: CiphertextRecord | None = None,
    ) -> MessageRecord:
        """Sends (chat.proto's rules on the fields hold already); a reply when
        ``thread_root_id`` is not empty. Attachments are checked in the store before the send
        statement, which attaches them with the message.

        In an end-to-end encrypted conversation the message is ``ciphertext`` and ``content``
        stays empty; in a plain one the reverse. The send statement itself checks which the
        conversation is, so a plain send pays nothing for it; only a refused send asks why.
        """
        if ciphertext is None and not content and not attachment_ids:
            raise InvalidArgument("content", "is required unless attachment_ids lists at least "
                                             "one upload (or ciphertext, in an end-to-end "
                                             "encrypted conversation)")
        if ciphertext is not None and content:
            raise InvalidArgument("content", "cannot be combined with ciphertext: an "
                                             "encrypted message has no plaintext")
        cid = validation.conversation_id(conversation_id)
        root = validation.message_id(thread_root_id) if thread_root_id else None
        tenant = await self._tenants.admit(caller.tenant_id)
        if len(content) > tenant.max_message_length:
            raise InvalidArgument("content", f"at most {tenant.max_message_length} characters "
                                             f"in this tenant")
        checked: CheckedUploads | None = None
        if attachment_ids:
            if self._attachments is None:
                raise disabled()
            checked = await self._attachments.check_for_send(caller, cid, attachment_ids, key)
        try:
            message = await self._repo.send(caller.tenant_id, cid, caller.user_id, content, key,
                                            checked.uploads if checked else (), root, ciphertext)
        except DuplicateKey as dup:
            IDEMPOTENCY_HITS.labels("database").inc()
            raise _duplicate(dup.original, cid, content, root, ciphertext) from None
        if message is None:
            if checked is not None and self._attachments is not None:
                # An upload's error first, as when the rows were read before the send.
                await self._attachments.explain_refusal(caller, cid, checked, key)
            await self._explain_encryption(caller, cid, ciphertext)
            state = (await self._repo.thread_root_state(caller.tenant_id, cid, caller.user_id,
                                                        root) if root is not None else None)
            if state is RootState.NOT_ROOT:
                raise InvalidArgument("thread_root_id", "names a reply; a thread is answered "
                                                        "through its root-level message")
            if state is RootState.DELETED:
                raise FailedPrecondition("thread_root_id: the root message is deleted; a "
                                         "deleted message takes no replies",
                                         reason="ROOT_DELETED",
                                         metadata={"field": "thread_root_id"})
            if checked is not None and self._attachments is not None and \
                    await self._attachments.used_elsewhere(
                        caller, [u.id for u in checked.uploads]):
                raise FailedPrecondition("attachment_ids: an upload was attached to another "
                                         "message meanwhile", reason="ATTACHMENT_ALREADY_USED")
            raise NotFound(NOT_FOUND)
        if self._attachments is not None and message.attachments:
            self._attachments.count_attached(message)
        return message

    async def _explain_encryption(self, caller: Principal, cid: str,
                                  ciphertext: CiphertextRecord | None) -> None:
        """Raises the error of a send refused for its encryption (or membership)."""
        state = await self._repo.send_refusal(
            caller.tenant_id, cid, caller.user_id,
            ciphertext.sender_device if ciphertext is not None else None)
        if state is None:
            raise NotFound(NOT_FOUND)
        encrypted, known_device = state
        if encrypted and ciphertext is None:
            raise InvalidArgument("content", "refused: the conversation is end-to-end "
                                             "encrypted; send ciphertext")
        if not encrypted and ciphertext is not None:
            raise InvalidArgument("ciphertext", "the conversation is not end-to-end "
                                                "encrypted; send content")
        if ciphertext is not None and not known_device:
            raise FailedPrecondition("ciphertext.sender_device: not a registered device of "
                                     "the sender (RegisterDevice)", reason="UNKNOWN_DEVICE")

    async def history(
        self, caller: Principal, conversation_id: str, limit: int, page_token: str,
        before: datetime | None, after_seq: int | None, include_thread_replies: bool = False,
    ) -> Page[MessageRecord]:
        """A page of messages. ``after_seq`` None: not given (newest first); 0: from the
        first message on, oldest first, as for any other position. chat.proto's rules hold
        already (``after_seq`` not negative, not together with ``before``). Root-level
        messages only unless ``include_thread_replies``; page tokens are seq positions either
        way, so a token continues in either listing."""
        plan = _history_plan(HistoryQuery(conversation_id, limit, page_token, before, after_seq,
                                          include_thread_replies))
        rows = await self._repo.page(caller.tenant_id, plan.conversation_id, caller.user_id,
                                     plan.mode, plan.size + 1, cursor=plan.cursor,
                                     before=plan.before, roots_only=plan.roots_only)
        return _history_page(plan, rows)

    async def history_many(self, caller: Principal, queries: Sequence[HistoryQuery]
                           ) -> list[Page[MessageRecord] | ChatError]:
        """``history`` for each query (GraphQL's nested lists), each answer or error in the
        queries' order: the queries that page alike (same mode, size and listing) in one
        statement (``MessageRepository.pages``), whatever their number."""
        out: list[Page[MessageRecord] | ChatError | None] = [None] * len(queries)
        groups: dict[tuple[PageMode, int, bool], list[tuple[int, _HistoryPlan]]] = {}
        for i, query in enumerate(queries):
            try:
                plan = _history_plan(query)
            except ChatError as exc:
                out[i] = exc
                continue
            if plan.mode is PageMode.BEFORE_TIME:  # not batched (no GraphQL argument has it)
                rows = await self._repo.page(caller.tenant_id, plan.conversation_id,
                                             caller.user_id, plan.mode, plan.size + 1,
                                             before=plan.before, roots_only=plan.roots_only)
                out[i] = _answer(_history_page, plan, rows)
                continue
            groups.setdefault((plan.mode, plan.size, plan.roots_only), []).append((i, plan))
        for (mode, size, roots_only), items in groups.items():
            pages = await self._repo.pages(
                caller.tenant_id, caller.user_id, mode, size + 1,
                [(plan.conversation_id, plan.cursor) for _, plan in items], roots_only)
            for (i, plan), rows in zip(items, pages, strict=True):
                out[i] = _answer(_history_page, plan, rows)
        return [answer for answer in out if answer is not None]

    async def thread(
        self, caller: Principal, conversation_id: str, root_id: str, limit: int,
        page_token: str, after_seq: int | None,
    ) -> tuple[MessageRecord, Page[MessageRecord]]:
        """The root and a page of its thread's replies, as ``history`` pages a conversation:
        newest first, or oldest first after ``after_seq`` (a conversation seq)."""
        plan = _thread_plan(ThreadQuery(conversation_id, root_id, limit, page_token, after_seq))
        page = await self._repo.thread_page(caller.tenant_id, plan.conversation_id,
                                            caller.user_id, plan.root_id, plan.mode,
                                            plan.size + 1, cursor=plan.cursor)
        return _thread_answer(plan, page)

    async def thread_many(self, caller: Principal, queries: Sequence[ThreadQuery]
                          ) -> list[tuple[MessageRecord, Page[MessageRecord]] | ChatError]:
        """``thread`` for each query (GraphQL's ``messages { thread }``), each answer or error
        in the queries' order: the queries that page alike (same mode and size) in one
        statement (``MessageRepository.thread_pages``), whatever their number."""
        out: list[tuple[MessageRecord, Page[MessageRecord]] | ChatError | None] = \
            [None] * len(queries)
        groups: dict[tuple[ThreadMode, int], list[tuple[int, _ThreadPlan]]] = {}
        for i, query in enumerate(queries):
            try:
                plan = _thread_plan(query)
            except ChatError as exc:
                out[i] = exc
                continue
            groups.setdefault((plan.mode, plan.size), []).append((i, plan))
        for (mode, size), items in groups.items():
            pages = await self._repo.thread_pages(
                caller.tenant_id, caller.user_id, mode, size + 1,
                [(plan.conversation_id, plan.root_id, plan.cursor) for _, plan in items])
            for (i, plan), page in zip(items, pages, strict=True):
                out[i] = _answer(_thread_answer, plan, page)
        return [answer for answer in out if answer is not None]


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """What GetMessages asks (``MessageService.history``'s arguments)."""

    conversation_id: str
    limit: int
    page_token: str
    before: datetime | None
    after_seq: int | None
    include_thread_replies: bool = False


@dataclass(frozen=True, slots=True)
class ThreadQuery:
    """What GetThread asks (``MessageService.thread``'s arguments)."""

    conversation_id: str
    root_id: str
    limit: int
    page_token: str
    after_seq: int | None


@dataclass(frozen=True, slots=True)
class _HistoryPlan:
    conversation_id: str
    size: int
    mode: PageMode
    cursor: int
    ascending: bool
    before: datetime | None
    roots_only: bool


@dataclass(frozen=True, slots=True)
class _ThreadPlan:
    conversation_id: str
    root_id: str
    size: int
    mode: ThreadMode
    cursor: int
    ascending: bool


T = TypeVar("T")
P = ParamSpec("P")


def _answer(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | ChatError:
    """``fn``'s answer, or the error it raised (one item of a batch)."""
    try:
        return fn(*args, **kwargs)
    except ChatError as exc:
        return exc


def _history_plan(q: HistoryQuery) -> _HistoryPlan:
    """How to read the page ``q`` asks for.

    Raises:
        InvalidArgument: the page token is not one of this conversation's.
    """
    cid = validation.conversation_id(q.conversation_id)
    size = validation.limit(q.limit)
    cursor = 0
    if q.page_token:
        cursor, ascending = page_tokens.parse_messages_token(q.page_token, cid)
        mode = PageMode.AFTER_SEQ if ascending else PageMode.BEFORE_SEQ
    elif q.after_seq is not None:
        mode, cursor, ascending = PageMode.AFTER_SEQ, q.after_seq, True
    elif q.before is not None:
        mode, ascending = PageMode.BEFORE_TIME, False
    else:
        mode, ascending = PageMode.NEWEST, False
    return _HistoryPlan(cid, size, mode, cursor, ascending, q.before,
                        not q.include_thread_replies)


def _history_page(plan: _HistoryPlan, rows: list[MessageRecord] | None) -> Page[MessageRecord]:
    """The page of the rows read (one more than the page, if there are more).

    Raises:
        NotFound: the caller is not a member (no rows at all).
    """
    if rows is None:
        raise NotFound(NOT_FOUND)
    token = ""
    if len(rows) > plan.size:
        rows = rows[:plan.size]
        token = page_tokens.messages_token(plan.conversation_id, rows[-1].seq, plan.ascending)
    return Page(rows, token)


def _thread_plan(q: ThreadQuery) -> _ThreadPlan:
    """How to read the thread page ``q`` asks for.

    Raises:
        InvalidArgument: the page token is not one of this thread's.
    """
    cid = validation.conversation_id(q.conversation_id)
    root = validation.message_id(q.root_id)
    size = validation.limit(q.limit)
    cursor = 0
    if q.page_token:
        cursor, ascending = page_tokens.parse_thread_token(q.page_token, cid, root)
        mode = ThreadMode.AFTER if ascending else ThreadMode.BEFORE
    elif q.after_seq is not None:
        mode, cursor, ascending = ThreadMode.AFTER_SEQ, q.after_seq, True
    else:
        mode, ascending = ThreadMode.NEWEST, False
    return _ThreadPlan(cid, root, size, mode, cursor, ascending)


def _thread_answer(plan: _ThreadPlan, page: ThreadPage | RootState
                   ) -> tuple[MessageRecord, Page[MessageRecord]]:
    """The root and the page of the rows read.

    Raises:
        InvalidArgument: the root is a reply.
        NotFound: the caller is not a member, or there is no such message.
    """
    if page is RootState.NOT_ROOT:
        raise InvalidArgument("root_id", "names a reply, not a thread's root-level message")
    if not isinstance(page, ThreadPage):
        raise NotFound(NOT_FOUND)
    rows, token = page.replies, ""
    if len(rows) > plan.size:
        rows = rows[:plan.size]
        token = page_tokens.thread_token(plan.conversation_id, plan.root_id,
                                         rows[-1].thread_seq or 0, plan.ascending)
    return page.root, Page(rows, token)
