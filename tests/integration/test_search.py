"""SearchMessages over gRPC against real PostgreSQL: what is found, by whom, in what order,
with which highlights, and how bad queries are answered."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import grpc

from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth
from tests.helpers import create_conversation, rpc_error, send


def search(stub, caller: str, query: str, **fields):
    return stub.SearchMessages(chat_pb2.SearchMessagesRequest(query=query, **fields),
                               metadata=auth(caller))


async def found(stub, caller: str, query: str, **fields) -> list[str]:
    """The contents of every hit, best first, over all pages."""
    out: list[str] = []
    token = ""
    for _ in range(50):
        resp = await search(stub, caller, query, page_token=token, **fields)
        out.extend(h.message.content for h in resp.hits)
        token = resp.next_page_token
        if not token:
            return out
    raise AssertionError("more pages than the test made")


def marked(hit) -> str:
    """The hit's content with [] around each highlight (code point offsets)."""
    text, out, pos = hit.message.content, [], 0
    for h in hit.highlights:
        out += [text[pos:h.start], "[", text[h.start:h.end], "]"]
        pos = h.end
    return "".join(out + [text[pos:]])


async def test_words_phrases_or_exclusion_and_prefix(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    for text in ("the quick brown fox", "a brown dog", "quick thinking", "fox and dog",
                 "hello world", "the brown quick fox"):
        await send(stub, "alice", conv.id, text)
    assert set(await found(stub, "bob", "brown fox")) == {"the quick brown fox",
                                                         "the brown quick fox"}
    assert await found(stub, "bob", '"quick brown"') == ["the quick brown fox"]
    assert set(await found(stub, "bob", "dog OR thinking ")) == {
        "a brown dog", "quick thinking", "fox and dog"}
    assert set(await found(stub, "bob", "fox -dog")) == {"the quick brown fox",
                                                        "the brown quick fox"}
    assert set(await found(stub, "bob", 'brown -"quick brown"')) == {
        "a brown dog", "the brown quick fox"}
    # The last word is a prefix unless a space ends the query.
    assert await found(stub, "bob", "hel") == ["hello world"]
    assert await found(stub, "bob", "hel ") == []
    assert await found(stub, "bob", "wor hel") == []


async def test_case_and_accents_do_not_matter_and_nothing_typed_is_syntax(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    await send(stub, "alice", conv.id, "Un Café crème à la façade")
    await send(stub, "alice", conv.id, "it's a (test) & more | !stuff: 'quoted'")
    assert await found(stub, "bob", "CAFE creme") == ["Un Café crème à la façade"]
    assert await found(stub, "bob", "café") == ["Un Café crème à la façade"]
    for query in ("it's", "(test)", "& more", "!stuff:", "'quoted'", "a:*"):
        # Each is read as the words in it, never as tsquery operators.
        assert "it's a (test) & more | !stuff: 'quoted'" in await found(stub, "bob", query), \
            query


async def test_highlights_mark_the_matched_words_in_code_points(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    await send(stub, "alice", conv.id, "😀 Café au lait, CAFÉ noir 🎉 café")
    [hit] = (await search(stub, "bob", "cafe")).hits
    assert marked(hit) == "😀 [Café] au lait, [CAFÉ] noir 🎉 [café]"
    assert hit.conversation_id == conv.id
    [hit] = (await search(stub, "bob", "lai")).hits
    assert marked(hit) == "😀 Café au [lait], CAFÉ noir 🎉 café"
    [hit] = (await search(stub, "bob", '"au lait" noir')).hits
    assert marked(hit) == "😀 Café [au] [lait], CAFÉ [noir] 🎉 café"


async def test_only_the_callers_conversations_and_filters(stub) -> None:
    mine = await create_conversation(stub, "alice", ["bob"], title="mine")
    other = await create_conversation(stub, "alice", ["carol"], title="other")
    m1 = await send(stub, "alice", mine.id, "budget meeting")
    await send(stub, "bob", mine.id, "budget review")
    await send(stub, "alice", other.id, "budget secret")
    assert set(await found(stub, "bob", "budget")) == {"budget meeting", "budget review"}
    assert set(await found(stub, "alice", "budget")) == {"budget meeting", "budget review",
                                                         "budget secret"}
    assert await found(stub, "alice", "budget", conversation_id=other.id) == ["budget secret"]
    assert await found(stub, "alice", "budget", sender_id="bob") == ["budget review"]
    assert await found(stub, "mallory", "budget") == []
    # Another conversation's id answers as one that does not exist.
    for cid in (other.id, "00000000-0000-4000-8000-000000000000"):
        err = await rpc_error(search(stub, "bob", "budget", conversation_id=cid))
        assert err.code() == grpc.StatusCode.NOT_FOUND
    # A member of a conversation without any hit gets an empty page, not NOT_FOUND.
    assert await found(stub, "carol", "meeting", conversation_id=other.id) == []
    created = m1.created_at.ToDatetime(tzinfo=UTC)
    later = chat_pb2.SearchMessagesRequest().after
    later.FromDatetime(created + timedelta(microseconds=1))
    assert "budget meeting" not in await found(stub, "alice", "budget", after=later)
    assert await found(stub, "alice", "budget", before=later) == ["budget meeting"]


async def test_deleted_never_found_and_edits_replace_the_words(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    gone = await send(stub, "alice", conv.id, "classified plans")
    changed = await send(stub, "alice", conv.id, "old wording")
    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(
        conversation_id=conv.id, message_id=gone.id), metadata=auth("alice"))
    await stub.EditMessage(chat_pb2.EditMessageRequest(
        conversation_id=conv.id, message_id=changed.id, content="new phrasing"),
        metadata=auth("alice"))
    assert await found(stub, "bob", "classified") == []
    assert await found(stub, "bob", "old wording") == []
    [hit] = (await search(stub, "bob", "phrasing")).hits
    assert (hit.message.id, hit.message.version, marked(hit)) == (
        changed.id, 2, "new [phrasing]")


async def test_a_member_who_cannot_see_the_history_cannot_search_it(stub) -> None:
    conv = await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], title="t", history_visible_to_new_members=False),
        metadata=auth("alice"))
    cid = conv.conversation.id
    await send(stub, "alice", cid, "before dave joined")
    await stub.AddMembers(chat_pb2.AddMembersRequest(conversation_id=cid, member_ids=["dave"]),
                          metadata=auth("alice"))
    await send(stub, "alice", cid, "after dave joined")
    assert await found(stub, "dave", "joined") == ["after dave joined"]
    assert len(await found(stub, "bob", "joined")) == 2


async def test_recent_and_relevant_first_and_pages_stay_stable_under_sends(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    for i in range(25):
        await send(stub, "alice", conv.id, f"report number {i}")
    first = await search(stub, "bob", "report", limit=10)
    assert [h.message.content for h in first.hits] == [
        f"report number {i}" for i in range(24, 14, -1)]
    seen = [h.message.id for h in first.hits]
    token = first.next_page_token
    # Sends while paging: the later pages neither skip nor repeat what was there before.
    sending = asyncio.gather(*(send(stub, "alice", conv.id, f"report late {i}")
                               for i in range(10)))
    while token:
        page = await search(stub, "bob", "report", limit=10, page_token=token)
        seen += [h.message.id for h in page.hits]
        token = page.next_page_token
    await sending
    contents = await found(stub, "bob", "report")
    assert len(contents) == 35
    assert len(seen) == len(set(seen))
    originals = {h.message.id for h in (await search(stub, "bob", "report number",
                                                     limit=50)).hits}
    assert originals <= set(seen)
    # Relevance counts too: four matches outweigh being a moment newer.
    await send(stub, "alice", conv.id, "zebra zebra zebra, a note about zebra")
    await send(stub, "alice", conv.id, "one zebra")
    assert await found(stub, "bob", "zebra") == ["zebra zebra zebra, a note about zebra",
                                                 "one zebra"]


async def test_bad_queries_name_the_field(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    await send(stub, "alice", conv.id, "anything")
    cases = {
        "": "query", "   ": "query", ",,, --": "query", "-anything": "query",
        "OR": "query", " ".join(["w"] * 33): "query", "x" * 257: "query",
        "a\x01b": "query", "\\": "query",
    }
    for query, field in cases.items():
        err = await rpc_error(search(stub, "bob", query))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, query
        assert field in err.details(), (query, err.details())
    await send(stub, "alice", conv.id, "z")
    assert await found(stub, "bob", " ".join(["z"] * 32)) == ["z"]
    bad_token = await rpc_error(search(stub, "bob", "anything", page_token="bm9wZQ"))
    assert "page_token" in bad_token.details()
    page = await search(stub, "bob", "anything", limit=1)
    assert page.next_page_token == ""
    # A token from another query is refused, not misread.
    for i in range(3):
        await send(stub, "alice", conv.id, f"anything {i}")
    token = (await search(stub, "bob", "anything", limit=1)).next_page_token
    err = await rpc_error(search(stub, "bob", "other", page_token=token))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.details()
    for fields, field in (({"limit": 51}, "limit"), ({"conversation_id": "x"},
                                                      "conversation_id"),
                          ({"sender_id": "a b"}, "sender_id")):
        err = await rpc_error(search(stub, "bob", "anything", **fields))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.details()
    # An empty time range is no error, only no hits.
    when = datetime.now(UTC)
    a, b = chat_pb2.SearchMessagesRequest().after, chat_pb2.SearchMessagesRequest().before
    a.FromDatetime(when)
    b.FromDatetime(when)
    assert await found(stub, "bob", "anything", after=a, before=b) == []


async def test_over_http_with_highlights_as_ranges(api, stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    await send(stub, "alice", conv.id, "Ünïcode <b>tags</b> stay text")
    url = f"http://127.0.0.1:{api.http_port}/v1/messages:search"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"query": "unicode tags", "conversation_id": conv.id},
                               headers={"Authorization": auth("bob")[0][1]}) as resp:
            assert resp.status == 200
            body = await resp.json()
        [hit] = body["hits"]
        assert hit["conversation_id"] == conv.id
        assert hit["message"]["content"] == "Ünïcode <b>tags</b> stay text"
        assert hit["highlights"] == [{"start": 0, "end": 7}, {"start": 11, "end": 15}]
        async with session.get(url, params={"query": "-x"},
                               headers={"Authorization": auth("bob")[0][1]}) as resp:
            assert resp.status == 400
            assert "query" in str(await resp.json())


async def test_thread_replies_are_found_and_say_so_deletions_and_edits_included(api, stub):
    import uuid as _uuid

    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    root = await send(stub, "alice", conv.id, "lighthouse question")

    async def reply(content: str):
        return (await stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=conv.id, content=content, idempotency_key=_uuid.uuid4().hex,
            thread_root_id=root.id), metadata=auth("bob"))).message

    answer = await reply("lighthouse answer")
    dropped = await reply("lighthouse mistake")
    edited = await reply("lantern draft")
    hits = (await search(stub, "alice", "lighthouse")).hits
    by_id = {h.message.id: h.message for h in hits}
    assert set(by_id) == {root.id, answer.id, dropped.id}
    assert by_id[answer.id].thread_root_id == root.id
    assert by_id[dropped.id].thread_root_id == root.id
    assert by_id[root.id].thread_root_id == "" and by_id[root.id].reply_count == 3

    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(
        conversation_id=conv.id, message_id=dropped.id), metadata=auth("bob"))
    await stub.EditMessage(chat_pb2.EditMessageRequest(
        conversation_id=conv.id, message_id=edited.id, content="beacon final"),
        metadata=auth("bob"))
    assert await found(stub, "alice", "mistake") == []
    assert await found(stub, "alice", "lantern") == []
    [hit] = (await search(stub, "alice", "beacon")).hits
    assert (hit.message.id, hit.message.thread_root_id, hit.message.version) == (
        edited.id, root.id, 2)
    # The root deleted: its replies are still found, the tombstone is not.
    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(
        conversation_id=conv.id, message_id=root.id), metadata=auth("alice"))
    hits = (await search(stub, "alice", "lighthouse")).hits
    assert [(h.message.id, h.message.thread_root_id) for h in hits] == [(answer.id, root.id)]
    # Over HTTP the hit names its root too.
    url = f"http://127.0.0.1:{api.http_port}/v1/messages:search"
    async with aiohttp.ClientSession() as session, session.get(
            url, params={"query": "beacon"},
            headers={"Authorization": auth("bob")[0][1]}) as resp:
        assert resp.status == 200
        [http_hit] = (await resp.json())["hits"]
    assert http_hit["message"]["thread_root_id"] == root.id
