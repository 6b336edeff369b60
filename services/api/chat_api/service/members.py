"""AddMembers, RemoveMember, SetMemberRole and UpdateConversation: who may change what.

Roles: the creator is ``owner``; ``owner`` and ``admin`` add and remove members, promote
members to admin (and back) and change the conversation's settings; any member may leave
(remove themself). Nobody changes the owner's role, and an admin does not remove the owner.
A direct (two-person) conversation takes no new members, loses none and has no settings.

The rules are pure functions of the locked conversation (``storage.changes.Locked``), checked
by the repository under the conversation's row lock, so they judge the state the change is
made to. Errors: NOT_FOUND for a conversation that does not exist or that the caller is not a
member of (the same answer), PERMISSION_DENIED for a member without the role.
"""

from __future__ import annotations

from collections.abc import Sequence

from chat_api.models import ConversationRecord
from chat_api.service import validation
from chat_api.service.reads import NOT_FOUND
from chat_api.service.tenants import TenantDirectory
from chat_api.storage.changes import Locked
from chat_api.storage.members import MemberRepository
from chat_shared.auth import Principal
from chat_shared.errors import InvalidArgument, NotFound, PermissionDenied

OWNER, ADMIN, MEMBER = "owner", "admin", "member"
MANAGERS = frozenset({OWNER, ADMIN})
MEMBER_NOT_FOUND = "member not found"


def require_manager(conv: Locked, action: str) -> None:
    """PERMISSION_DENIED unless the caller is the owner or an admin."""
    if conv.role not in MANAGERS:
        raise PermissionDenied(f"only the owner or an admin may {action}",
                               reason="ROLE_REQUIRED")


def refuse_direct(conv: Locked, action: str) -> None:
    if conv.direct:
        raise PermissionDenied(f"a direct conversation cannot {action}",
                               reason="DIRECT_CONVERSATION")


class MemberService:
    def __init__(self, repo: MemberRepository, tenants: TenantDirectory) -> None:
        self._repo = repo
        self._tenants = tenants

    async def add(self, caller: Principal, conversation_id: str, member_ids: Sequence[str]
                  ) -> ConversationRecord:
        """Adds the users (chat.proto's rules hold: 1 to 999 distinct, well-formed ids)."""
        cid = validation.conversation_id(conversation_id)
        tenant = await self._tenants.admit(caller.tenant_id)

        def check(conv: Locked, new: list[str]) -> None:
            require_manager(conv, "add members")
            refuse_direct(conv, "take new members")
            if len(conv.member_ids) + len(new) > tenant.max_members:
                raise InvalidArgument("member_ids", f"a conversation has at most "
                                                    f"{tenant.max_members} members in this "
                                                    f"tenant")

        conv = await self._repo.add(caller.tenant_id, cid, caller.user_id, list(member_ids),
                                    check)
        if conv is None:
            raise NotFound(NOT_FOUND)
        return conv

    async def remove(self, caller: Principal, conversation_id: str, user_id: str) -> None:
        """Removes ``user_id``; the caller's own id is leaving. A user who is not a member is
        left as is (no event): removing is idempotent, like HTTP's DELETE."""
        cid = validation.conversation_id(conversation_id)
        me = caller.user_id

        def check(conv: Locked, target_role: str | None) -> None:
            if user_id != me:
                require_manager(conv, "remove members")
            refuse_direct(conv, "lose members")
            if target_role == OWNER and user_id != me:
                raise PermissionDenied("the owner cannot be removed", reason="ROLE_REQUIRED")

        if not await self._repo.remove(caller.tenant_id, cid, me, user_id, check):
            raise NotFound(NOT_FOUND)

    async def set_role(self, caller: Principal, conversation_id: str, user_id: str,
                       role: str) -> None:
        """Gives ``user_id`` the role (``admin`` or ``member``, as chat.proto's rule says)."""
        cid = validation.conversation_id(conversation_id)

        def check(conv: Locked, target_role: str | None) -> None:
            require_manager(conv, "change roles")
            if target_role is None:
                raise NotFound(MEMBER_NOT_FOUND)
            if target_role == OWNER:
                raise PermissionDenied("the owner's role does not change",
                                       reason="ROLE_REQUIRED")

        if not await self._repo.set_role(caller.tenant_id, cid, caller.user_id, user_id, role,
                                         check):
            raise NotFound(NOT_FOUND)

    async def update(self, caller: Principal, conversation_id: str, title: str | None,
                     history_visible: bool | None) -> ConversationRecord:
        """Changes the settings given (None: left as they are)."""
        cid = validation.conversation_id(conversation_id)
        if title is not None:
            title = title.strip()

        def check(conv: Locked) -> None:
            require_manager(conv, "change the conversation")
            refuse_direct(conv, "be changed")

        conv = await self._repo.update(caller.tenant_id, cid, caller.user_id, title,
                                       history_visible, check)
        if conv is None:
            raise NotFound(NOT_FOUND)
        return conv
