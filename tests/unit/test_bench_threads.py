"""The threads phase's order of calls: the read right after the reply's SendMessage pays for the
reply's event being handled beside it, so every read must take that place equally often."""

from __future__ import annotations

from collections import Counter

from chat_bench.phases.threads import CALLS, rounds


def test_each_read_follows_the_write_equally_often_and_every_round_holds_each_call_once() -> None:
    reads, write = CALLS[:-1], CALLS[-1]
    sequence: list[str] = []
    for i in range(4 * len(reads)):
        this_round = rounds(reads, write, i)
        assert sorted(this_round) == sorted(CALLS)
        assert this_round[-1] == write
        sequence += this_round
    after_write = Counter(sequence[k + 1] for k in range(len(sequence) - 1)
                          if sequence[k] == write)
    # The last round's write has no successor: 4 * len(reads) - 1 writes are followed.
    assert set(after_write) == set(reads)
    assert sorted(after_write.values()) == [3, 4, 4, 4]
