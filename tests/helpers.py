"""Small helpers shared by tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth


async def create_conversation(stub, caller: str, members: list[str], title: str = "") -> chat_pb2.Conversation:
    resp = await stub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=members, title=title), metadata=auth(caller)
    )
    return resp.conversation


async def send(stub, caller: str, conversation_id: str, content: str, key: str | None = None) -> chat_pb2.Message:
    resp = await stub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conversation_id, content=content,
                                    idempotency_key=key or uuid.uuid4().hex),
        metadata=auth(caller),
    )
    return resp.message


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo detail of a failed call, if any."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
