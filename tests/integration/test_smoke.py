from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth
from tests.helpers import create_conversation, send


async def test_send_and_read_back(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    m1 = await send(stub, "alice", conv.id, "hello")
    m2 = await send(stub, "bob", conv.id, "hi")
    assert (m1.seq, m2.seq) == (1, 2)
    page = await stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=conv.id),
                                  metadata=auth("bob"))
    assert [m.content for m in page.messages] == ["hi", "hello"]
    convs = await stub.GetConversations(chat_pb2.GetConversationsRequest(), metadata=auth("alice"))
    assert convs.conversations[0].unread_count == 1  # bob's reply; her own message never counts
    r = await stub.MarkAsRead(chat_pb2.MarkAsReadRequest(conversation_id=conv.id),
                              metadata=auth("alice"))
    assert (r.last_read_seq, r.unread_count) == (2, 0)
