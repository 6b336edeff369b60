"""CreateConversation and GetConversations."""

from __future__ import annotations

from collections.abc import Sequence

from chat_api.models import ConversationRecord, ConversationSummary, Page
from chat_api.service import page_tokens, validation
from chat_api.storage.conversations import ConversationRepository, direct_key


class ConversationService:
    def __init__(self, repo: ConversationRepository) -> None:
        self._repo = repo

    async def create(self, caller: str, member_ids: Sequence[str],
                     title: str) -> ConversationRecord:
        """A new conversation (or the existing direct one). chat.proto's rules hold already:
        1 to 999 distinct, well-formed ids, so at most 1,000 members with the caller."""
        members = list(member_ids)
        if caller not in members:
            members.append(caller)
        title = title.strip()
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
