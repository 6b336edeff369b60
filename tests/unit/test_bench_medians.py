"""chat-bench --repeat: several runs become one result of per-figure medians."""

from __future__ import annotations

from chat_bench.medians import SUMMED, combine


def run(p99: float, lost: int, n: int, shares: list[float]) -> dict[str, object]:
    return {"delivery": {"latency": {"p99_ms": p99, "n": n}, "lost": lost, "ok": True,
                         "client_cpu_share": shares, "send_errors_by_code": {}}}


def test_each_number_is_its_median_across_runs() -> None:
    merged = combine([run(40.0, 0, 100, [0.1]), run(180.5, 0, 102, [0.2]),
                      run(90.25, 0, 101, [0.3])])
    assert merged["delivery"]["latency"] == {"p99_ms": 90.25, "n": 101}


def test_an_even_number_of_runs_takes_the_middle_mean() -> None:
    merged = combine([run(10.0, 0, 100, []), run(20.0, 0, 103, [])])
    assert merged["delivery"]["latency"] == {"p99_ms": 15.0, "n": 101.5}


def test_losses_and_errors_are_summed_not_averaged_away() -> None:
    merged = combine([run(1.0, 0, 1, []), run(1.0, 3, 1, []), run(1.0, 0, 1, [])])
    assert merged["delivery"]["lost"] == 3


def test_lists_text_and_flags_come_from_the_first_run() -> None:
    merged = combine([run(1.0, 0, 1, [0.1, 0.2]), run(2.0, 0, 1, [0.5])])
    assert merged["delivery"]["client_cpu_share"] == [0.1, 0.2]
    assert merged["delivery"]["ok"] is True


def test_one_run_is_itself() -> None:
    one = run(12.5, 1, 7, [0.4])
    assert combine([one]) == one


def test_a_phase_can_name_further_counts_to_sum() -> None:
    runs = [{"p": {"dropped": 1, "p99_ms": 3.0}}, {"p": {"dropped": 2, "p99_ms": 5.0}},
            {"p": {"dropped": 0, "p99_ms": 4.0}}]
    assert combine(runs)["p"]["dropped"] == 1  # a median unless named
    assert combine(runs, SUMMED | {"dropped"})["p"] == {"dropped": 3, "p99_ms": 4.0}
