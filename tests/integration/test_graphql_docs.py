"""docs/graphql.md's example operations run as written, in the page's order, each with the
variables the page shows (its placeholders filled from the answers before), against the API
with the `gql` client. The subscription example is run by tests/e2e/test_graphql_subscriptions.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from gql.transport.exceptions import TransportQueryError

from tests.conftest import ROOT
from tests.integration.test_graphql import run

DOC = ROOT / "docs" / "graphql.md"
_EXAMPLE = re.compile(r"```graphql\n(.*?)```\s*```json\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    """(operation, variables JSON) of each example, in the page's order."""
    return _EXAMPLE.findall(DOC.read_text())


def fill(variables: str, answers: dict[str, Any]) -> dict[str, Any]:
    text = variables.replace('"<id from createConversation>"',
                             json.dumps(answers.get("createConversation", {}).get("id")))
    text = text.replace('"<id from sendMessage>"',
                        json.dumps(answers.get("sendMessage", {}).get("id")))
    data: dict[str, Any] = json.loads(text)
    return data


async def test_every_example_runs_as_written(api):
    ops = [(op, v) for op, v in examples() if not op.lstrip().startswith("subscription")]
    assert len(ops) == 8
    answers: dict[str, Any] = {}
    each: dict[str, Any] = {}
    for op, variables in ops:
        data = await run(api, op, "alice", **fill(variables, answers))
        each[re.search(r"(?:query|mutation) (\w+)", op).group(1)] = data
        answers.update(data)
    (edge,) = each["InboxWithMessages"]["viewer"]["conversations"]["edges"]
    assert [m["node"]["content"] for m in edge["node"]["messages"]["edges"]] == ["pizza at noon?"]
    one = each["Conversation"]["conversation"]
    assert one["title"] == "lunch" and one["role"] == "owner" and one["unreadCount"] == 0
    assert one["memberIds"] == ["alice", "bob"] and one["encrypted"] is False
    assert one["lastMessage"] == {"senderId": "alice", "content": "pizza at noon?"}
    assert answers["createConversation"]["memberIds"] == ["alice", "bob"]
    assert answers["sendMessage"]["seq"] == 1
    (edge,) = each["Inbox"]["viewer"]["conversations"]["edges"]
    assert edge["node"]["lastMessage"]["content"] == "pizza at noon?"
    assert answers["conversation"]["messages"]["edges"][0]["node"]["id"] \
        == answers["sendMessage"]["id"]
    assert answers["addReaction"]["reactions"] == [
        {"emoji": "🍕", "count": 1, "reactedByMe": True}]
    assert answers["markAsRead"] == {"lastReadSeq": 1, "unreadCount": 0}
    assert answers["search"]["edges"][0]["node"]["message"]["id"] == answers["sendMessage"]["id"]

    # "Sending it again fails with the original message's id in the error", as shown.
    send = next(op for op, _ in ops if "sendMessage" in op)
    with pytest.raises(TransportQueryError) as caught:
        await run(api, send, "alice", conversationId=answers["createConversation"]["id"])
    (error,) = caught.value.errors or []
    shown = json.loads(re.search(r"```json\n(\{\"errors\".*?)```", DOC.read_text(),
                                 re.S).group(1))["errors"][0]
    assert error["message"] == shown["message"] and error["path"] == shown["path"]
    assert set(error["extensions"]) == set(shown["extensions"])
    assert error["extensions"]["metadata"]["message_id"] == answers["sendMessage"]["id"]
