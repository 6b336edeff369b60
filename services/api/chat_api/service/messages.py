"""SendMessage and GetMessages."""

from __future__ import annotations

from datetime import datetime

from chat_api.idempotency import IDEMPOTENCY_HITS, IdempotencyStore, Outcome
from chat_api.models import MessageRecord, Page
from chat_api.service import page_tokens, validation
from chat_api.service.reads import NOT_FOUND
from chat_api.storage.messages import DuplicateKey, MessageRepository, PageMode
from chat_shared.errors import AlreadyExists, InvalidArgument, NotFound

# google.rpc.ErrorInfo reasons of ALREADY_EXISTS on SendMessage.
REASON_DUPLICATE = "DUPLICATE_REQUEST"      # same key, same conversation and content: a retry
REASON_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"  # same key, different conversation or content


def _duplicate(original: MessageRecord, conversation_id: str, content: str) -> AlreadyExists:
    same = original.conversation_id == conversation_id and original.content == content
    reason = REASON_DUPLICATE if same else REASON_KEY_REUSED
    message = ("message already sent with this idempotency_key" if same
               else "idempotency_key was already used for a different message")
    return AlreadyExists(message, reason=reason, metadata={
        "message_id": original.id,
        "seq": str(original.seq),
        "conversation_id": original.conversation_id,
    })


class MessageService:
    def __init__(
        self, repo: MessageRepository, idempotency: IdempotencyStore,
        max_message_length: int, max_key_length: int,
    ) -> None:
        self._repo = repo
        self._idem = idempotency
        self._max_len = max_message_length
        self._max_key = max_key_length

    def _validate_send(self, conversation_id: str, content: str, key: str) -> str:
        cid = validation.conversation_id(conversation_id)
        if not content.strip():
            raise InvalidArgument("content", "must not be empty")
        if len(content) > self._max_len:
            raise InvalidArgument("content", f"must be at most {self._max_len} characters")
        validation.no_control_chars(content, "content")
        if not key:
            raise InvalidArgument("idempotency_key", "is required")
        if len(key) > self._max_key:
            raise InvalidArgument("idempotency_key", f"must be at most {self._max_key} characters")
        validation.no_control_chars(key, "idempotency_key")
        return cid

    async def send(
        self, caller: str, conversation_id: str, content: str, key: str
    ) -> MessageRecord:
        cid = self._validate_send(conversation_id, content, key)
        reservation = await self._idem.reserve(caller, key)
        if reservation.outcome is Outcome.TAKEN:
            original = await self._repo.by_idempotency_key(caller, key)
            if original is not None:
                IDEMPOTENCY_HITS.labels("redis").inc()
                raise _duplicate(original, cid, content)
            # Not committed (yet): the insert below waits for it, or takes the key over.
        owned = reservation.outcome is Outcome.RESERVED
        try:
            message = await self._repo.send(cid, caller, content, key)
        except DuplicateKey as dup:
            # Redis had lost the key (flushed, evicted, down): ours now marks it used again.
            IDEMPOTENCY_HITS.labels("database").inc()
            raise _duplicate(dup.original, cid, content) from None
        except BaseException:
            if owned:
                await self._idem.release(caller, key, reservation.token)
            raise
        if message is None:
            if owned:
                await self._idem.release(caller, key, reservation.token)
            raise NotFound(NOT_FOUND)
        return message

    async def history(
        self, caller: str, conversation_id: str, limit: int, page_token: str,
        before: datetime | None, after_seq: int | None,
    ) -> Page[MessageRecord]:
        """A page of messages. ``after_seq`` None: not given (newest first); 0: from the
        first message on, oldest first, as for any other position."""
        cid = validation.conversation_id(conversation_id)
        size = validation.limit(limit)
        if after_seq is not None and after_seq < 0:
            raise InvalidArgument("after_seq", "must not be negative")
        if after_seq is not None and before is not None:
            raise InvalidArgument("after_seq", "cannot be combined with before_timestamp")
        cursor = 0
        if page_token:
            cursor, ascending = page_tokens.parse_messages_token(page_token, cid)
            mode = PageMode.AFTER_SEQ if ascending else PageMode.BEFORE_SEQ
        elif after_seq is not None:
            mode, cursor, ascending = PageMode.AFTER_SEQ, after_seq, True
        elif before is not None:
            mode, ascending = PageMode.BEFORE_TIME, False
        else:
            mode, ascending = PageMode.NEWEST, False
        rows = await self._repo.page(cid, caller, mode, size + 1, cursor=cursor, before=before)
        if rows is None:
            raise NotFound(NOT_FOUND)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = page_tokens.messages_token(cid, rows[-1].seq, ascending)
        return Page(rows, token)
