"""Which rate-limit class each ChatService method counts against: the one table.

A method missing here stops the API at start (``Dispatcher`` checks every handler has a
class), so a new RPC cannot go unlimited by accident. The classes and their limits:
docs/rate-limits.md.
"""

from __future__ import annotations

RATE_CLASSES: dict[str, str] = {
    "SendMessage": "send",
    "GetMessages": "read",
    "GetConversations": "read",
    "CreateConversation": "write-other",
    "MarkAsRead": "write-other",
}
