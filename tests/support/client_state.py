"""A WebSocket client's view of its conversations, rebuilt from frames alone, and the same view
read from the RPCs, so tests can compare the two.

Thread replies are messages like any other (``thread_root_id`` names their root); a root's
``reply_count`` is counted by the client from the replies it holds.

``ClientState.apply`` is what a real client does with each ordered frame (chat_shared.events,
"Positions"): message frames set the message as it is (a created or deleted message has no
reactions), reaction frames add or remove one (user, emoji), member frames set or drop a
member's role, ``conversation.updated`` sets the title. ``server_view`` reads GetMessages (all
pages, oldest first) and GetConversations for one user into the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat_shared.protos.chat.v1 import chat_pb2

from tests.conftest import auth

MESSAGE_TYPES = {"message.created", "message.updated", "message.deleted"}


@dataclass
class ConversationView:
    title: str
    members: dict[str, str]
    """user -> role"""
    pos: int = 0
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    reactions: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """message id -> emoji -> users"""

    def apply(self, frame: dict[str, Any]) -> None:
        pos = frame["pos"]
        assert pos == self.pos + 1, f"frame at pos {pos} after {self.pos}: {frame}"
        self.pos = pos
        kind = frame["type"]
        if kind in MESSAGE_TYPES:
            m = frame["message"]
            self.messages[m["id"]] = {"seq": m["seq"], "sender_id": m["sender_id"],
                                      "content": m["content"], "version": m["version"],
                                      "deleted": m["deleted"],
                                      "thread_root_id": m.get("thread_root_id")}
            if kind != "message.updated":
                self.reactions[m["id"]] = {}
        elif kind == "reaction.added":
            self.reactions.setdefault(frame["message_id"], {}).setdefault(
                frame["emoji"], set()).add(frame["user_id"])
        elif kind == "reaction.removed":
            users = self.reactions.get(frame["message_id"], {}).get(frame["emoji"], set())
            users.discard(frame["user_id"])
            if not users:
                self.reactions.get(frame["message_id"], {}).pop(frame["emoji"], None)
        elif kind in ("member.added", "member.role_changed"):
            self.members[frame["user_id"]] = frame["role"]
        elif kind == "member.removed":
            self.members.pop(frame["user_id"], None)
        elif kind == "conversation.updated":
            self.title = frame["title"]

    def as_seen_by(self, user: str) -> dict[str, Any]:
        """The comparable shape (see ``server_view``)."""
        messages = []
        for mid, m in sorted(self.messages.items(), key=lambda kv: kv[1]["seq"]):
            counts = [(e, len(us), user in us) for e, us in self.reactions.get(mid, {}).items()
                      if us]
            counts.sort(key=lambda r: (-r[1], r[0]))
            # A root's reply count is its replies, tombstones included (a deleted reply keeps
            # its place in the thread): no frame carries it, the client counts.
            replies = sum(1 for r in self.messages.values() if r["thread_root_id"] == mid)
            messages.append({**m, "id": mid, "reactions": counts[:20], "reply_count": replies})
        return {"title": self.title, "member_ids": sorted(self.members),
                "role": self.members.get(user), "pos": self.pos, "messages": messages}


async def server_view(stub, user: str, conversation_id: str) -> dict[str, Any] | None:
    """What the RPCs show ``user`` of the conversation (None when not a member)."""
    convs = await stub.GetConversations(chat_pb2.GetConversationsRequest(limit=100),
                                        metadata=auth(user))
    found = [s.conversation for s in convs.conversations if s.conversation.id == conversation_id]
    if not found:
        return None
    conv = found[0]
    messages: list[dict[str, Any]] = []
    req = chat_pb2.GetMessagesRequest(conversation_id=conversation_id, limit=100, after_seq=0,
                                      include_thread_replies=True)
    while True:
        page = await stub.GetMessages(req, metadata=auth(user))
        for m in page.messages:
            messages.append({"id": m.id, "seq": m.seq, "sender_id": m.sender_id,
                             "content": m.content, "version": m.version, "deleted": m.deleted,
                             "thread_root_id": m.thread_root_id or None,
                             "reactions": [(r.emoji, r.count, r.reacted_by_me)
                                           for r in m.reactions],
                             "reply_count": m.reply_count})
        if not page.next_page_token:
            break
        req = chat_pb2.GetMessagesRequest(conversation_id=conversation_id, limit=100,
                                          page_token=page.next_page_token,
                                          include_thread_replies=True)
    return {"title": conv.title, "member_ids": sorted(conv.member_ids), "role": conv.role,
            "pos": conv.last_pos, "messages": messages}
