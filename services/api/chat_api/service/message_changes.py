"""EditMessage, DeleteMessage, AddReaction and RemoveReaction: who may change a message.

- Only its sender edits a message, and not once it is deleted (FAILED_PRECONDITION: the
  request is the sender's right, the message's state forbids it).
- Its sender, the owner or an admin deletes it; deleting a tombstone again changes nothing.
- Any member reacts, once per emoji per message; adding a reaction that is there or removing
  one that is not changes nothing (no event), and a tombstone takes no reactions
  (FAILED_PRECONDITION; removing one from a tombstone changes nothing: it has none).

Errors: NOT_FOUND for a message the caller cannot see (no such message, not in that
conversation, the caller not a member, or from before they joined a conversation that hides
its history: one answer), PERMISSION_DENIED for a member without the right,
FAILED_PRECONDITION (reason ``MESSAGE_DELETED``) for an edit of or a reaction to a deleted
message, INVALID_ARGUMENT ``emoji`` for anything that is not one emoji. A caller who left the
conversation is no member: NOT_FOUND, whatever the message.

Emoji: ``emoji.is_emoji`` of the maintained ``emoji`` package (pure Python, no dependencies,
updated with each Unicode emoji release): it accepts exactly one emoji as Unicode defines them,
skin-tone modifiers, ZWJ sequences, flags and keycaps included, and refuses letters, digits,
two emoji and partial sequences. A hand-written grapheme and emoji-property check would have to
follow every Unicode release itself.
"""

from __future__ import annotations

import emoji as emoji_data

from chat_api.models import MessageRecord
from chat_api.service import validation
from chat_api.service.members import require_manager
from chat_api.service.tenants import TenantDirectory
from chat_api.storage.changes import Locked
from chat_api.storage.message_changes import MessageChangeRepository, TargetMessage
from chat_shared.auth import Principal
from chat_shared.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

MESSAGE_NOT_FOUND = "message not found"


def check_emoji(value: str) -> str:
    """The emoji, when ``value`` is exactly one; InvalidArgument naming ``emoji`` otherwise."""
    if not emoji_data.is_emoji(value):
        raise InvalidArgument("emoji", "must be a single emoji")
    return value


class MessageChangeService:
    def __init__(self, repo: MessageChangeRepository, tenants: TenantDirectory) -> None:
        self._repo = repo
        self._tenants = tenants

    async def edit(self, caller: Principal, conversation_id: str, message_id: str,
                   content: str) -> MessageRecord:
        cid = validation.conversation_id(conversation_id)
        mid = validation.conversation_id(message_id)
        tenant = await self._tenants.admit(caller.tenant_id)
        if len(content) > tenant.max_message_length:
            raise InvalidArgument("content", f"at most {tenant.max_message_length} characters "
                                             f"in this tenant")
        me = caller.user_id

        def check(msg: TargetMessage) -> bool:
            if msg.encrypted:
                # Plaintext never enters an encrypted conversation; an edit would be one.
                raise InvalidArgument("content", "an end-to-end encrypted conversation's "
                                                 "messages cannot be edited")
            if msg.sender_id != me:
                raise PermissionDenied("only its sender edits a message", reason="NOT_SENDER")
            if msg.deleted:
                raise FailedPrecondition("a deleted message cannot be edited",
                                         reason="MESSAGE_DELETED")
            return True

        return self._found(await self._repo.edit(caller.tenant_id, cid, me, mid, content,
                                                 check))

    async def delete(self, caller: Principal, conversation_id: str, message_id: str
                     ) -> MessageRecord:
        cid = validation.conversation_id(conversation_id)
        mid = validation.conversation_id(message_id)
        me = caller.user_id

        def check(conv: Locked, msg: TargetMessage) -> bool:
            if msg.sender_id != me:
                require_manager(conv, "delete other members' messages")
            return not msg.deleted

        return self._found(await self._repo.delete(caller.tenant_id, cid, me, mid, check))

    async def react(self, caller: Principal, conversation_id: str, message_id: str,
                    emoji: str, *, add: bool) -> MessageRecord:
        cid = validation.conversation_id(conversation_id)
        mid = validation.conversation_id(message_id)
        check_emoji(emoji)

        def check(msg: TargetMessage) -> bool:
            if msg.deleted:
                if not add:
                    return False  # a tombstone has no reactions: nothing to remove
                raise FailedPrecondition("a deleted message takes no reactions",
                                         reason="MESSAGE_DELETED")
            return msg.reacted != add

        return self._found(await self._repo.react(caller.tenant_id, cid, caller.user_id, mid,
                                                  emoji, add, check))

    @staticmethod
    def _found(message: MessageRecord | None) -> MessageRecord:
        if message is None:
            raise NotFound(MESSAGE_NOT_FOUND)
        return message
