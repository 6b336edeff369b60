"""MarkAsRead."""

from __future__ import annotations

from chat_api.models import ReadPosition
from chat_api.service import validation
from chat_api.storage.reads import ReadRepository
from chat_shared.auth import Principal
from chat_shared.errors import NotFound

NOT_FOUND = "conversation not found"


class ReadService:
    def __init__(self, repo: ReadRepository) -> None:
        self._repo = repo

    async def mark_as_read(self, caller: Principal, conversation_id: str, up_to_seq: int
                           ) -> ReadPosition:
        """Moves the read position up to ``up_to_seq`` (0: everything; never negative, as
        chat.proto's rule says)."""
        cid = validation.conversation_id(conversation_id)
        position = await self._repo.mark(caller.tenant_id, cid, caller.user_id, up_to_seq)
        if position is None:
            raise NotFound(NOT_FOUND)
        return position
