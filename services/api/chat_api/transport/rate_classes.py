"""Which rate-limit class each ChatService method counts against: the one table.

A method missing here counts as ``DEFAULT_RATE_CLASS`` (the strictest class of calls), so a
new RPC is never unlimited; a test checks every RPC of chat.proto is here. The classes and
their limits: docs/rate-limits.md.
"""

from __future__ import annotations

RATE_CLASSES: dict[str, str] = {
    "SendMessage": "send",
    "GetMessages": "read",
    "GetThread": "read",
    "GetConversations": "read",
    "GetConversation": "read",
    "CreateConversation": "write-other",
    "MarkAsRead": "write-other",
    # Changes to a message are content, like a send.
    "EditMessage": "send",
    "DeleteMessage": "send",
    "AddReaction": "write-other",
    "RemoveReaction": "write-other",
    "AddMembers": "write-other",
    "RemoveMember": "write-other",
    "SetMemberRole": "write-other",
    "UpdateConversation": "write-other",
    "SearchMessages": "read",
    # An upload ticket is a row and a signature (the bytes go to the store, not through us);
    # a download URL is a signature over a read.
    "CreateUpload": "write-other",
    "GetAttachmentUrl": "read",
    # End-to-end encryption (docs/e2ee.md). Keys and to-device messages are writes of small
    # rows; a claim deletes keys, so it is a write too. Reading one's mailbox is a read.
    "RegisterDevice": "write-other",
    "UploadOneTimeKeys": "write-other",
    "ClaimKeys": "write-other",
    "ListDevices": "read",
    "RemoveDevice": "write-other",
    "SendToDevice": "send",
    "GetToDeviceMessages": "read",
    "AckToDeviceMessages": "write-other",
}

DEFAULT_RATE_CLASS = "write-other"
