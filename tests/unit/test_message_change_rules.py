"""An edit's and a reaction's rule is written twice (the statement's SQL decides, the service's
check names the error): ``_applied`` refuses an answer where the two differ."""

from __future__ import annotations

import pytest
from chat_api.storage.message_changes import TargetMessage, _applied
from chat_shared.errors import FailedPrecondition

_LIVE = TargetMessage("alice", deleted=False, reacted=False)
_GONE = TargetMessage("alice", deleted=True, reacted=False)


def _no_tombstones(msg: TargetMessage) -> bool:
    if msg.deleted:
        raise FailedPrecondition("a deleted message cannot be edited", reason="MESSAGE_DELETED")
    return True


def test_agreeing_answers_pass_and_a_refusal_keeps_its_error() -> None:
    _applied(_no_tombstones, _LIVE, applied=True)
    _applied(lambda _: False, _LIVE, applied=False)
    with pytest.raises(FailedPrecondition):
        _applied(_no_tombstones, _GONE, applied=False)


@pytest.mark.parametrize(("target", "applied"), [(_GONE, True), (_LIVE, False)])
def test_a_disagreement_is_never_an_answer(target: TargetMessage, applied: bool) -> None:
    with pytest.raises(RuntimeError):
        _applied(_no_tombstones, target, applied=applied)


def test_a_no_op_the_statement_made_is_a_disagreement() -> None:
    with pytest.raises(RuntimeError):
        _applied(lambda _: False, _LIVE, applied=True)
