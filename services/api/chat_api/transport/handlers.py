"""One function per ChatService RPC: proto request in, proto response out.

Shared by every transport. The registry is keyed by the proto method name, so the gRPC server
and the HTTP gateway find handlers from the service descriptor without a list of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from chat_api.models import CiphertextRecord, OneTimeKeyRecord, SearchFilters
from chat_api.service.attachments import AttachmentService, disabled
from chat_api.service.conversations import ConversationService
from chat_api.service.devices import DeviceService
from chat_api.service.members import MemberService
from chat_api.service.message_changes import MessageChangeService
from chat_api.service.messages import HistoryQuery, MessageService, ThreadQuery
from chat_api.service.reads import ReadService
from chat_api.service.search import SearchService
from chat_api.service.to_device import ToDeviceService
from chat_api.transport import convert
from chat_shared.auth import Principal
from chat_shared.errors import ChatError
from chat_shared.protos.chat.v1 import chat_pb2

Handler = Callable[[Principal, Any], Awaitable[Message]]
"""A handler takes the authenticated caller (user and tenant) and the decoded request."""

BatchHandler = Callable[[Principal, Sequence[Any]], Awaitable[list[Message | ChatError]]]
"""A batch handler takes the caller and many requests of one method (each checked against
chat.proto's rules already), and answers each: its response or its error, in their order.
Such a batch answers each request as the method's handler would, and reads for all of them at
once (``Dispatcher.call_many``)."""


@dataclass
class ChatHandlers:
    conversations: ConversationService
    messages: MessageService
    reads: ReadService
    members: MemberService
    message_changes: MessageChangeService
    search: SearchService
    devices: DeviceService
    to_device: ToDeviceService
    attachments: AttachmentService | None = None
    """None when no object store is configured: the attachment RPCs answer FAILED_PRECONDITION."""

    async def CreateConversation(  # noqa: N802 - named after the RPC
        self, caller: Principal, req: chat_pb2.CreateConversationRequest
    ) -> chat_pb2.CreateConversationResponse:
        # The repeated field itself, not a list copy: its size is checked before anything
        # else touches its (up to a megabyte of) entries.
        history_visible = (req.history_visible_to_new_members
                           if req.HasField("history_visible_to_new_members") else True)
        conv = await self.conversations.create(caller, req.member_ids, req.title,
                                               history_visible, req.encrypted)
        resp = chat_pb2.CreateConversationResponse()
        convert.fill_conversation(resp.conversation, conv)
        return resp

    async def SendMessage(  # noqa: N802
        self, caller: Principal, req: chat_pb2.SendMessageRequest
    ) -> chat_pb2.SendMessageResponse:
        ciphertext = (CiphertextRecord(req.ciphertext.algorithm, req.ciphertext.sender_device,
                                       req.ciphertext.body)
                      if req.HasField("ciphertext") else None)
        msg = await self.messages.send(caller, req.conversation_id, req.content,
                                       req.idempotency_key, req.attachment_ids,
                                       req.thread_root_id, ciphertext)
        resp = chat_pb2.SendMessageResponse()
        convert.fill_message(resp.message, msg)
        return resp

    async def GetMessages(  # noqa: N802
        self, caller: Principal, req: chat_pb2.GetMessagesRequest
    ) -> chat_pb2.GetMessagesResponse:
        before = (convert.to_datetime(req.before_timestamp, "before_timestamp")
                  if req.HasField("before_timestamp") else None)
        after_seq = req.after_seq if req.HasField("after_seq") else None
        page = await self.messages.history(caller, req.conversation_id, req.limit,
                                           req.page_token, before, after_seq,
                                           req.include_thread_replies)
        resp = chat_pb2.GetMessagesResponse(next_page_token=page.next_page_token)
        for record in page.items:
            convert.fill_message(resp.messages.add(), record)
        return resp

    async def GetThread(  # noqa: N802
        self, caller: Principal, req: chat_pb2.GetThreadRequest
    ) -> chat_pb2.GetThreadResponse:
        after_seq = req.after_seq if req.HasField("after_seq") else None
        root, page = await self.messages.thread(caller, req.conversation_id, req.root_id,
                                                req.limit, req.page_token, after_seq)
        resp = chat_pb2.GetThreadResponse(next_page_token=page.next_page_token)
        convert.fill_message(resp.root, root)
        for record in page.items:
            convert.fill_message(resp.messages.add(), record)
        return resp

    async def GetConversations(  # noqa: N802
        self, caller: Principal, req: chat_pb2.GetConversationsRequest
    ) -> chat_pb2.GetConversationsResponse:
        page = await self.conversations.list(caller, req.limit, req.page_token)
        resp = chat_pb2.GetConversationsResponse(next_page_token=page.next_page_token)
        for record in page.items:
            convert.fill_summary(resp.conversations.add(), record)
        return resp

    async def GetConversation(  # noqa: N802
        self, caller: Principal, req: chat_pb2.GetConversationRequest
    ) -> chat_pb2.GetConversationResponse:
        (summary,) = await self.conversations.get_many(caller, [req.conversation_id])
        if isinstance(summary, ChatError):
            raise summary
        resp = chat_pb2.GetConversationResponse()
        convert.fill_summary(resp.conversation, summary)
        return resp

    async def MarkAsRead(  # noqa: N802
        self, caller: Principal, req: chat_pb2.MarkAsReadRequest
    ) -> chat_pb2.MarkAsReadResponse:
        pos = await self.reads.mark_as_read(caller, req.conversation_id, req.up_to_seq)
        return chat_pb2.MarkAsReadResponse(last_read_seq=pos.last_read_seq,
                                           unread_count=pos.unread_count)

    async def AddMembers(  # noqa: N802
        self, caller: Principal, req: chat_pb2.AddMembersRequest
    ) -> chat_pb2.AddMembersResponse:
        conv = await self.members.add(caller, req.conversation_id, req.member_ids)
        resp = chat_pb2.AddMembersResponse()
        convert.fill_conversation(resp.conversation, conv)
        return resp

    async def RemoveMember(  # noqa: N802
        self, caller: Principal, req: chat_pb2.RemoveMemberRequest
    ) -> chat_pb2.RemoveMemberResponse:
        await self.members.remove(caller, req.conversation_id, req.user_id)
        return chat_pb2.RemoveMemberResponse()

    async def SetMemberRole(  # noqa: N802
        self, caller: Principal, req: chat_pb2.SetMemberRoleRequest
    ) -> chat_pb2.SetMemberRoleResponse:
        await self.members.set_role(caller, req.conversation_id, req.user_id, req.role)
        return chat_pb2.SetMemberRoleResponse()

    async def UpdateConversation(  # noqa: N802
        self, caller: Principal, req: chat_pb2.UpdateConversationRequest
    ) -> chat_pb2.UpdateConversationResponse:
        conv = await self.members.update(
            caller, req.conversation_id,
            req.title if req.HasField("title") else None,
            (req.history_visible_to_new_members
             if req.HasField("history_visible_to_new_members") else None))
        resp = chat_pb2.UpdateConversationResponse()
        convert.fill_conversation(resp.conversation, conv)
        return resp

    async def EditMessage(  # noqa: N802
        self, caller: Principal, req: chat_pb2.EditMessageRequest
    ) -> chat_pb2.EditMessageResponse:
        msg = await self.message_changes.edit(caller, req.conversation_id, req.message_id,
                                              req.content)
        resp = chat_pb2.EditMessageResponse()
        convert.fill_message(resp.message, msg)
        return resp

    async def DeleteMessage(  # noqa: N802
        self, caller: Principal, req: chat_pb2.DeleteMessageRequest
    ) -> chat_pb2.DeleteMessageResponse:
        msg = await self.message_changes.delete(caller, req.conversation_id, req.message_id)
        resp = chat_pb2.DeleteMessageResponse()
        convert.fill_message(resp.message, msg)
        return resp

    async def AddReaction(  # noqa: N802
        self, caller: Principal, req: chat_pb2.AddReactionRequest
    ) -> chat_pb2.AddReactionResponse:
        msg = await self.message_changes.react(caller, req.conversation_id, req.message_id,
                                               req.emoji, add=True)
        resp = chat_pb2.AddReactionResponse()
        convert.fill_message(resp.message, msg)
        return resp

    async def RemoveReaction(  # noqa: N802
        self, caller: Principal, req: chat_pb2.RemoveReactionRequest
    ) -> chat_pb2.RemoveReactionResponse:
        msg = await self.message_changes.react(caller, req.conversation_id, req.message_id,
                                               req.emoji, add=False)
        resp = chat_pb2.RemoveReactionResponse()
        convert.fill_message(resp.message, msg)
        return resp

    async def SearchMessages(  # noqa: N802
        self, caller: Principal, req: chat_pb2.SearchMessagesRequest
    ) -> chat_pb2.SearchMessagesResponse:
        filters = SearchFilters(
            conversation_id=(req.conversation_id if req.HasField("conversation_id")
                             else None),
            sender_id=req.sender_id if req.HasField("sender_id") else None,
            after=convert.to_datetime(req.after, "after") if req.HasField("after") else None,
            before=(convert.to_datetime(req.before, "before") if req.HasField("before")
                    else None))
        page = await self.search.search(caller, req.query, filters, req.limit,
                                        req.page_token)
        resp = chat_pb2.SearchMessagesResponse(next_page_token=page.next_page_token)
        for hit in page.items:
            out = resp.hits.add(conversation_id=hit.message.conversation_id)
            convert.fill_message(out.message, hit.message)
            for start, end in hit.highlights:
                out.highlights.add(start=start, end=end)
        return resp

    async def CreateUpload(  # noqa: N802
        self, caller: Principal, req: chat_pb2.CreateUploadRequest
    ) -> chat_pb2.CreateUploadResponse:
        if self.attachments is None:
            raise disabled()
        ticket = await self.attachments.create_upload(
            caller, req.conversation_id, req.filename, req.content_type, req.size_bytes)
        resp = chat_pb2.CreateUploadResponse(upload_id=ticket.upload_id, url=ticket.url,
                                             method="POST", fields=ticket.fields)
        convert.fill_timestamp(resp.expires_at, ticket.expires_at)
        return resp

    async def GetAttachmentUrl(  # noqa: N802
        self, caller: Principal, req: chat_pb2.GetAttachmentUrlRequest
    ) -> chat_pb2.GetAttachmentUrlResponse:
        if self.attachments is None:
            raise disabled()
        signed = await self.attachments.download_url(caller, req.attachment_id, req.thumbnail)
        resp = chat_pb2.GetAttachmentUrlResponse(url=signed.url)
        convert.fill_timestamp(resp.expires_at, signed.expires_at)
        return resp

    async def RegisterDevice(  # noqa: N802
        self, caller: Principal, req: chat_pb2.RegisterDeviceRequest
    ) -> chat_pb2.RegisterDeviceResponse:
        device = await self.devices.register(caller, req.device_id, req.curve25519_key,
                                             req.ed25519_key, req.signature)
        resp = chat_pb2.RegisterDeviceResponse()
        convert.fill_device(resp.device, device)
        return resp

    async def UploadOneTimeKeys(  # noqa: N802
        self, caller: Principal, req: chat_pb2.UploadOneTimeKeysRequest
    ) -> chat_pb2.UploadOneTimeKeysResponse:
        keys = [OneTimeKeyRecord(k.key_id, k.public_key, k.signature) for k in req.keys]
        fallback = (OneTimeKeyRecord(req.fallback_key.key_id, req.fallback_key.public_key,
                                     req.fallback_key.signature)
                    if req.HasField("fallback_key") else None)
        count = await self.devices.upload(caller, req.device_id, keys, fallback)
        return chat_pb2.UploadOneTimeKeysResponse(one_time_key_count=count)

    async def ClaimKeys(  # noqa: N802
        self, caller: Principal, req: chat_pb2.ClaimKeysRequest
    ) -> chat_pb2.ClaimKeysResponse:
        claimed = await self.devices.claim(caller, req.conversation_id,
                                           [(d.user_id, d.device_id) for d in req.devices])
        resp = chat_pb2.ClaimKeysResponse()
        for c in claimed:
            out = resp.keys.add(fallback=c.fallback)
            convert.fill_device(out.device, c.device)
            out.one_time_key.key_id = c.key.key_id
            out.one_time_key.public_key = c.key.public_key
            out.one_time_key.signature = c.key.signature
        return resp

    async def ListDevices(  # noqa: N802
        self, caller: Principal, req: chat_pb2.ListDevicesRequest
    ) -> chat_pb2.ListDevicesResponse:
        devices = await self.devices.list(caller, req.conversation_id,
                                          req.user_id if req.HasField("user_id") else None)
        resp = chat_pb2.ListDevicesResponse()
        for d in devices:
            convert.fill_device(resp.devices.add(), d)
        return resp

    async def RemoveDevice(  # noqa: N802
        self, caller: Principal, req: chat_pb2.RemoveDeviceRequest
    ) -> chat_pb2.RemoveDeviceResponse:
        await self.devices.remove(caller, req.device_id)
        return chat_pb2.RemoveDeviceResponse()

    async def SendToDevice(  # noqa: N802
        self, caller: Principal, req: chat_pb2.SendToDeviceRequest
    ) -> chat_pb2.SendToDeviceResponse:
        stored = await self.to_device.send(
            caller, req.conversation_id, req.sender_device,
            [(m.recipient_id, m.recipient_device, m.message_type, m.body)
             for m in req.messages])
        return chat_pb2.SendToDeviceResponse(stored=stored)

    async def GetToDeviceMessages(  # noqa: N802
        self, caller: Principal, req: chat_pb2.GetToDeviceMessagesRequest
    ) -> chat_pb2.GetToDeviceMessagesResponse:
        rows = await self.to_device.inbox(caller, req.device_id, req.after_id, req.limit)
        resp = chat_pb2.GetToDeviceMessagesResponse()
        for r in rows:
            out = resp.messages.add(id=r.id, recipient_id=r.recipient_id,
                                    recipient_device=r.recipient_device,
                                    sender_id=r.sender_id, sender_device=r.sender_device,
                                    message_type=r.message_type, body=r.body)
            convert.fill_timestamp(out.created_at, r.created_at)
        return resp

    async def AckToDeviceMessages(  # noqa: N802
        self, caller: Principal, req: chat_pb2.AckToDeviceMessagesRequest
    ) -> chat_pb2.AckToDeviceMessagesResponse:
        deleted = await self.to_device.acknowledge(caller, req.device_id, req.up_to_id)
        return chat_pb2.AckToDeviceMessagesResponse(deleted=deleted)

    # --- batches: many calls of one method as one (GraphQL's nested lists) ---------------

    async def GetMessagesBatch(  # noqa: N802
        self, caller: Principal, reqs: Sequence[chat_pb2.GetMessagesRequest]
    ) -> list[Message | ChatError]:
        queries = [HistoryQuery(
            r.conversation_id, r.limit, r.page_token,
            (convert.to_datetime(r.before_timestamp, "before_timestamp")
             if r.HasField("before_timestamp") else None),
            r.after_seq if r.HasField("after_seq") else None,
            r.include_thread_replies) for r in reqs]
        out: list[Message | ChatError] = []
        for page in await self.messages.history_many(caller, queries):
            if isinstance(page, ChatError):
                out.append(page)
                continue
            resp = chat_pb2.GetMessagesResponse(next_page_token=page.next_page_token)
            for record in page.items:
                convert.fill_message(resp.messages.add(), record)
            out.append(resp)
        return out

    async def GetThreadBatch(  # noqa: N802
        self, caller: Principal, reqs: Sequence[chat_pb2.GetThreadRequest]
    ) -> list[Message | ChatError]:
        queries = [ThreadQuery(r.conversation_id, r.root_id, r.limit, r.page_token,
                               r.after_seq if r.HasField("after_seq") else None) for r in reqs]
        out: list[Message | ChatError] = []
        for answer in await self.messages.thread_many(caller, queries):
            if isinstance(answer, ChatError):
                out.append(answer)
                continue
            root, page = answer
            resp = chat_pb2.GetThreadResponse(next_page_token=page.next_page_token)
            convert.fill_message(resp.root, root)
            for record in page.items:
                convert.fill_message(resp.messages.add(), record)
            out.append(resp)
        return out

    async def GetConversationBatch(  # noqa: N802
        self, caller: Principal, reqs: Sequence[chat_pb2.GetConversationRequest]
    ) -> list[Message | ChatError]:
        out: list[Message | ChatError] = []
        for summary in await self.conversations.get_many(caller,
                                                         [r.conversation_id for r in reqs]):
            if isinstance(summary, ChatError):
                out.append(summary)
                continue
            resp = chat_pb2.GetConversationResponse()
            convert.fill_summary(resp.conversation, summary)
            out.append(resp)
        return out

    def batch_registry(self) -> dict[str, BatchHandler]:
        """Method name -> the handler of a batch of its calls, for the methods that have one."""
        return {"GetMessages": self.GetMessagesBatch, "GetThread": self.GetThreadBatch,
                "GetConversation": self.GetConversationBatch}

    def registry(self) -> dict[str, Handler]:
        """Method name -> handler, for every RPC of chat.v1.ChatService."""
        service = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
        out: dict[str, Handler] = {}
        for method in service.methods:
            fn = getattr(self, method.name, None)
            if fn is None:
                raise RuntimeError(f"no handler for chat.v1.ChatService/{method.name}")
            out[method.name] = fn
        return out

