"""Schemathesis hooks for the contract fuzz run (loaded through SCHEMATHESIS_HOOKS).

One check replaces schemathesis' ``positive_data_acceptance``: the same judgement (a request
the document allows must not be refused with a 4xx other than 401/403/404/409/429), except for
a 400 whose google.rpc.BadRequest names one of the rules below. They are rules OpenAPI 3.0
cannot state, which the document states in words instead:

- ``page_token``: any string fits its schema, but only a token the server issued is valid;
- ``after_seq`` with ``before_timestamp``: two query parameters that exclude each other (the
  operation's description says "At most one of after_seq, before_timestamp");
- ``idempotency_key``: required in the body *or* the Idempotency-Key header, equal when both;
- ``content`` of SendMessage: required unless ``attachment_ids`` lists an upload (the
  operation's description says so in words);
- ``member_ids`` of AddMembers: at most the tenant's member limit *with the members the
  conversation has already*, which depends on the conversation, not on the request;
- ``query`` of SearchMessages: at least one word to find (letters or digits, not only excluded
  words) and at most 32 words: what counts as a word is the search syntax's, which the
  field's comment in chat.proto states in words;
- ``emoji``: exactly one emoji, as Unicode's emoji data defines it (skin tones, sequences,
  flags): no regular expression states that, the field's description does in words;
- ``content_type`` and ``size_bytes`` of an upload: the allowed types and the size limit are
  the server's settings and the tenant's limits, not the document's;
- end-to-end encryption: ``content`` or ``ciphertext`` but not both (and not neither), and
  signatures that verify against the device's key (docs/e2ee.md): no schema computes Ed25519;
- FAILED_PRECONDITION (code 9): the request is valid but the server's state refuses it (an
  upload not in the store, attachments not configured), which no schema can state.

Every other positive case must be accepted, and each exemption is counted and printed.

The same check writes every error message it sees (positive and negative cases) to the file
named by CONTRACT_FUZZ_MESSAGES, so the test can look for implementation text in them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import schemathesis
from schemathesis.checks import CheckContext
from schemathesis.core.failures import Failure

EXEMPT: dict[tuple[str, str], str] = {
    ("page_token", "is not a valid page token"): "page token not issued by the server",
    ("after_seq", "cannot be combined with before_timestamp"): "after_seq with before_timestamp",
    ("idempotency_key", "is required"): "idempotency key in neither body nor header",
    ("idempotency_key", "differs from the Idempotency-Key header"): "body and header keys differ",
    ("content", "is required unless attachment_ids"):
        "a message with neither text, files nor ciphertext",
    ("emoji", "must be a single emoji"): "a string that is not one emoji",
    ("query", "must contain a word to find"): "a search with no word to find",
    ("query", "must have at most"): "a search with too many words",
    ("member_ids", "a conversation has at most"): "more members than the conversation has room for",
    ("content_type", "is not an allowed type"): "upload type not allowed by the server",
    ("size_bytes", "at most"): "upload over the tenant's size limit",
    # End-to-end encryption (docs/e2ee.md): a send carries content or ciphertext, not both;
    # a signature must verify, and one-time keys are distinct by key_id.
    ("content", "cannot be combined with ciphertext"): "content and ciphertext together",
    ("signature", "is not ed25519_key's signature"): "a device signature that does not verify",
    ("keys", "item "): "a one-time key signature that does not verify",
    ("keys", "must not list the same key_id twice"): "one-time keys with the same key_id",
    ("fallback_key.signature", "is not the device's signature"):
        "a fallback key signature that does not verify",
}
FAILED_PRECONDITION = 9
_ACCEPTED = {401, 403, 404, 409, 429}
EXEMPTIONS: Counter[str] = Counter()
_OUT = os.environ.get("CONTRACT_FUZZ_EXEMPTIONS", "")
_MESSAGES = os.environ.get("CONTRACT_FUZZ_MESSAGES", "")


class RejectedValidData(Failure):
    """A request the document allows was refused."""

    def __init__(self, operation: str, status: int, body: str) -> None:
        super().__init__(operation=operation, title="Valid data was rejected",
                         message=f"{status}: {body[:500]}")

    @property
    def _unique_key(self) -> str:
        return self.message


def _violations(body: Any) -> list[tuple[str, str]]:
    out = []
    for detail in body.get("details", []) if isinstance(body, dict) else []:
        for v in detail.get("field_violations", []) or detail.get("fieldViolations", []):
            field = v.get("field", "")
            description = v.get("description", "")
            prefix = f"{field}: "
            out.append((field, description.removeprefix(prefix)))
    return out


def _exemption(body: Any) -> str | None:
    for field, problem in _violations(body):
        for (f, start), name in EXEMPT.items():
            if field == f and problem.startswith(start):
                return name
    return None


@schemathesis.check
def positive_data_acceptance_but_server_state(ctx: CheckContext, response: Any,
                                              case: Any) -> bool | None:
    status = response.status_code
    try:
        body = json.loads(response.content) if status >= 400 else None
    except ValueError:
        body = None
    if _MESSAGES and isinstance(body, dict):
        with open(_MESSAGES, "a") as out:
            out.write(json.dumps(body.get("message")) + "\n")
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if status < 400 or status >= 500 or status in _ACCEPTED:
        return None
    name = _exemption(body) if status == 400 else None
    if status == 400 and isinstance(body, dict) and body.get("code") == FAILED_PRECONDITION:
        name = "FAILED_PRECONDITION: " + str((body.get("details") or [{}])[0].get("reason"))
    if name is not None:
        EXEMPTIONS[name] += 1
        if _OUT:
            with open(_OUT, "a") as out:
                out.write(name + "\n")
        return None
    raise RejectedValidData(case.operation.label, status, response.text)
