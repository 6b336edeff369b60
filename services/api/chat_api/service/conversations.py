"""CreateConversation and GetConversations."""

from __future__ import annotations

from collections.abc import Sequence

from chat_api.models import ConversationRecord, ConversationSummary, Page
from chat_api.service import page_tokens, validation
from chat_api.storage.conversations import ConversationRepository, direct_key
from chat_shared.errors import InvalidArgument

MAX_TITLE_LENGTH = 200


class ConversationService:
    def __init__(self, repo: ConversationRepository, max_members: int) -> None:
        self._repo = repo
        self._max_members = max_members

    async def create(self, caller: str, member_ids: Sequence[str],
                     title: str) -> ConversationRecord:
        # Size first, then work linear in it: the ids may fill a whole request (1 MiB, over
        # 100,000 of them), and the event loop serves every other caller meanwhile.
        if len(member_ids) > self._max_members:
            raise InvalidArgument("member_ids", f"at most {self._max_members} members")
        for i, member in enumerate(member_ids):
            validation.user_id(member, f"member_ids[{i}]")
        members = list(dict.fromkeys(member_ids))  # first occurrence order, without repeats
        if caller not in members:
            members.append(caller)
        if len(members) > self._max_members:
            raise InvalidArgument("member_ids", f"at most {self._max_members} members")
        title = title.strip()
        if len(title) > MAX_TITLE_LENGTH:
            raise InvalidArgument("title", f"at most {MAX_TITLE_LENGTH} characters")
        validation.no_control_chars(title, "title")
        others = [m for m in members if m != caller]
        direct = direct_key(caller, others[0]) if len(others) == 1 and not title else None
        return await self._repo.create(caller, members, title, direct)

    async def list(self, caller: str, limit: int, page_token: str) -> Page[ConversationSummary]:
        size = validation.limit(limit)
        after = page_tokens.parse_conversations_token(page_token) if page_token else None
        rows = await self._repo.list_for_member(caller, size + 1, after)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = page_tokens.conversations_token(last.last_activity_at, last.conversation.id)
        return Page(rows, token)
