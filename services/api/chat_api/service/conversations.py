"""CreateConversation, GetConversations and GetConversation."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from chat_api.models import ConversationRecord, ConversationSummary, Page
from chat_api.service import page_tokens, validation
from chat_api.service.reads import NOT_FOUND
from chat_api.service.tenants import TenantDirectory
from chat_api.storage.conversations import ConversationRepository, direct_key
from chat_shared.auth import Principal
from chat_shared.errors import ChatError, InvalidArgument, NotFound


class ConversationService:
    def __init__(self, repo: ConversationRepository, tenants: TenantDirectory) -> None:
        self._repo = repo
        self._tenants = tenants

    async def create(self, caller: Principal, member_ids: Sequence[str],
                     title: str, history_visible: bool = True,
                     encrypted: bool = False) -> ConversationRecord:
        """A new conversation (or the existing direct one) in the caller's tenant, whose users
        the member ids name. chat.proto's rules hold already: 1 to 999 distinct, well-formed
        ids, so at most 1,000 members with the caller."""
        me = caller.user_id
        members = list(member_ids)
        if me not in members:
            members.append(me)
        tenant = await self._tenants.admit(caller.tenant_id)
        if len(members) > tenant.max_members:
            raise InvalidArgument("member_ids", f"a conversation has at most "
                                                f"{tenant.max_members} members (the creator "
                                                f"included) in this tenant")
        title = title.strip()
        others = [m for m in members if m != me]
        direct = direct_key(me, others[0]) if len(others) == 1 and not title else None
        if direct is not None and encrypted:
            # The encrypted and the plain direct conversation of two users are two.
            direct = "e2ee:" + direct
        return await self._repo.create(caller.tenant_id, me, members, title, direct,
                                       history_visible, encrypted)

    async def list(self, caller: Principal, limit: int, page_token: str
                   ) -> Page[ConversationSummary]:
        size = validation.limit(limit)
        after = page_tokens.parse_conversations_token(page_token) if page_token else None
        rows = await self._repo.list_for_member(caller.tenant_id, caller.user_id, size + 1,
                                                after)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = page_tokens.conversations_token(last.last_activity_at, last.conversation.id)
        return Page(rows, token)

    async def get_many(self, caller: Principal, conversation_ids: Sequence[str]
                       ) -> builtins.list[ConversationSummary | ChatError]:
        """Each conversation as ``list`` shows it, in the order of the ids, all in one
        statement (GetConversation; GraphQL's ``conversation(id)`` fields of one operation);
        NOT_FOUND for one the caller is not a member of, as for one that does not exist."""
        ids = [validation.conversation_id(c) for c in conversation_ids]
        found = await self._repo.for_member(caller.tenant_id, caller.user_id, ids)
        return [NotFound(NOT_FOUND) if s is None else s for s in found]
