"""chat.proto's rules as the server enforces them: each accepts what the API promises, refuses
what it does not, and names the field in plain words."""

from __future__ import annotations

import uuid

import pytest
from chat_api.service import validation
from chat_api.transport import request_rules
from chat_shared.errors import InvalidArgument
from chat_shared.protos.chat.v1 import chat_pb2
from google.protobuf.message import Message

CID = str(uuid.uuid4())


def refused(request: Message) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as exc:
        request_rules.check(request)
    return exc.value


def send(**fields: str) -> chat_pb2.SendMessageRequest:
    base = {"conversation_id": CID, "content": "hello", "idempotency_key": "k1"}
    return chat_pb2.SendMessageRequest(**{**base, **fields})


def test_a_valid_send_passes() -> None:
    request_rules.check(send())


def test_conversation_id_is_normalised_to_canonical_form() -> None:
    request_rules.check(send(conversation_id=CID.upper()))
    assert validation.conversation_id(CID.upper()) == CID


@pytest.mark.parametrize("value", ["42", "not-a-uuid", "1234567812345678123456781234567"])
def test_bad_conversation_id_names_the_field(value: str) -> None:
    exc = refused(send(conversation_id=value))
    assert (exc.field, exc.message) == ("conversation_id", "conversation_id: must be a valid UUID")


def test_missing_conversation_id_says_it_is_required() -> None:
    assert refused(send(conversation_id="")).message == "conversation_id: is required (a UUID)"


@pytest.mark.parametrize("value", ["alice", "a", "user@example.com", "ünïcode", "x" * 128])
def test_member_ids_accept_1_to_128_visible_characters(value: str) -> None:
    request_rules.check(chat_pb2.CreateConversationRequest(member_ids=["bob", value]))


@pytest.mark.parametrize("value", ["", " ", "al ice", "alice\n", "a\x00b", "a\tb", "x" * 129])
def test_bad_member_id_names_its_index(value: str) -> None:
    exc = refused(chat_pb2.CreateConversationRequest(member_ids=["bob", "carol", "dan", value]))
    assert exc.field == "member_ids[3]"
    assert exc.message.startswith("member_ids[3]: ")


def test_member_ids_are_required_unique_and_at_most_999() -> None:
    assert refused(chat_pb2.CreateConversationRequest()).message == (
        "member_ids: is required (at least one)")
    assert refused(chat_pb2.CreateConversationRequest(member_ids=["bob", "bob"])).message == (
        "member_ids: must not list the same value twice")
    request_rules.check(chat_pb2.CreateConversationRequest(
        member_ids=[f"u{i}" for i in range(999)]))
    assert refused(chat_pb2.CreateConversationRequest(
        member_ids=[f"u{i}" for i in range(1000)])).field == "member_ids"


def test_an_oversized_member_list_is_refused_before_its_items_are_read() -> None:
    # 100,000 ids, each breaking the item rule: the size rule answers, not the first item.
    request = chat_pb2.CreateConversationRequest(member_ids=[f"bad id {i}" for i in range(100_000)])
    exc = refused(request)
    assert exc.field == "member_ids"
    assert "999" in exc.message


def test_limit_zero_means_the_default() -> None:
    request_rules.check(chat_pb2.GetConversationsRequest(limit=0))
    assert validation.limit(0) == validation.DEFAULT_LIMIT


@pytest.mark.parametrize("value", [1, 50, 100])
def test_limit_in_range_is_kept(value: int) -> None:
    request_rules.check(chat_pb2.GetConversationsRequest(limit=value))
    assert validation.limit(value) == value


@pytest.mark.parametrize("value", [-1, 101, 10_000])
def test_limit_out_of_range_names_the_field(value: int) -> None:
    exc = refused(chat_pb2.GetConversationsRequest(limit=value))
    assert exc.message == "limit: must be greater than or equal to 0 and less than or equal to 100"


@pytest.mark.parametrize("value", ["hello", "line one\nline two", "tab\tseparated", "crlf\r\n"])
def test_text_with_newlines_and_tabs_is_accepted(value: str) -> None:
    request_rules.check(send(content=value))
    request_rules.check(chat_pb2.CreateConversationRequest(member_ids=["bob"], title=value))


@pytest.mark.parametrize("value", ["nul\x00byte", "bell\x07", "esc\x1b[31m", "del\x7f"])
@pytest.mark.parametrize("field", ["content", "idempotency_key"])
def test_control_characters_are_refused(value: str, field: str) -> None:
    exc = refused(send(**{field: value}))
    assert exc.field == field
    assert "control characters" in exc.message


# Empty content is "not given" to the rules (an encrypted message has none): the service
# refuses a send with neither content nor ciphertext (tests/integration/test_e2ee_keys.py).
@pytest.mark.parametrize("value", [" ", "\n\r\t "])
def test_blank_content_is_refused(value: str) -> None:
    assert refused(send(content=value)).field == "content"


def test_empty_content_only_with_attachments() -> None:
    upload = "0b6f0f5e-4f7c-4a47-9d8e-8d7a1b7f5a10"
    request_rules.check(chat_pb2.SendMessageRequest(conversation_id=CID, idempotency_key="k",
                                                    attachment_ids=[upload]))
    exc = refused(send(content=""))
    assert (exc.field, exc.message) == (
        "content", "content: is required unless attachment_ids lists at least one upload or "
        "ciphertext is set")
    # Blank text is refused with files too: no text is "", not spaces.
    with_files = chat_pb2.SendMessageRequest(conversation_id=CID, idempotency_key="k",
                                             content=" \n", attachment_ids=[upload])
    assert refused(with_files).message == "content: must not be only spaces and line breaks"


def test_lengths() -> None:
    request_rules.check(send(content="x" * 4096, idempotency_key="k" * 255))
    assert refused(send(content="x" * 4097)).message == (
        "content: must be at most 4096 characters")
    assert refused(send(idempotency_key="k" * 256)).field == "idempotency_key"
    assert refused(chat_pb2.CreateConversationRequest(member_ids=["b"], title="t" * 201)
                   ).field == "title"


def test_after_seq_is_not_negative_nor_combined_with_before_timestamp() -> None:
    request_rules.check(chat_pb2.GetMessagesRequest(conversation_id=CID, after_seq=0))
    assert refused(chat_pb2.GetMessagesRequest(conversation_id=CID, after_seq=-1)).field == (
        "after_seq")
    both = chat_pb2.GetMessagesRequest(conversation_id=CID, after_seq=3)
    both.before_timestamp.seconds = 1
    assert refused(both).message == "after_seq: cannot be combined with before_timestamp"


def test_up_to_seq_is_not_negative() -> None:
    request_rules.check(chat_pb2.MarkAsReadRequest(conversation_id=CID, up_to_seq=0))
    assert refused(chat_pb2.MarkAsReadRequest(conversation_id=CID, up_to_seq=-1)).message == (
        "up_to_seq: must be greater than or equal to 0")


def test_invalid_argument_carries_the_field_in_error_metadata() -> None:
    exc = refused(chat_pb2.GetConversationsRequest(limit=-5))
    assert (exc.code, exc.reason, exc.metadata) == (
        "INVALID_ARGUMENT", "INVALID_FIELD", {"field": "limit"})


def test_every_request_message_passes_at_its_defaults_or_names_a_field() -> None:
    # A rule protovalidate cannot compile would raise something other than InvalidArgument.
    service = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
    for method in service.methods:
        cls = getattr(chat_pb2, method.input_type.name)
        try:
            request_rules.check(cls())
        except InvalidArgument as exc:
            assert exc.field in cls.DESCRIPTOR.fields_by_name
