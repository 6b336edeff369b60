"""The frame budget's arithmetic, with its clock in hand."""

from __future__ import annotations

from chat_ws_gateway.limits import FrameBudget


def test_a_second_worth_at_once_then_the_rate() -> None:
    now = [0.0]
    budget = FrameBudget(5, clock=lambda: now[0])
    assert [budget.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] = 0.2  # one token back
    assert [budget.take(), budget.take()] == [True, False]
    now[0] = 100.0  # never more than one second's worth held
    assert sum(budget.take() for _ in range(10)) == 5


def test_zero_means_no_limit() -> None:
    budget = FrameBudget(0, clock=lambda: 0.0)
    assert all(budget.take() for _ in range(10_000))
