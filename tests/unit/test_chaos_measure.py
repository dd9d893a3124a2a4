"""What a chaos run's records mean: recovery timed by the probes, a fault's failed requests, lost money."""

from __future__ import annotations

from ops.chaos.measure import (
    SLOW_S,
    Injection,
    Request,
    fault_result,
    keys_answered_twice,
    recovered_at,
    succeeded,
    timeline,
)


def probe(sent: float, latency: float = 0.05, status: int = 200) -> Request:
    return Request(
        "POST /v1/charges", f"k{sent}", sent, sent + latency, status, status == 200, source="probe"
    )


def steady(start: float, end: float, every: float = 0.5) -> list[Request]:
    return [probe(start + i * every) for i in range(int((end - start) / every))]


def test_no_abnormal_probe_is_no_disturbance() -> None:
    assert recovered_at(steady(10, 20), 10, 20) == 10


def test_recovery_is_the_first_normal_answer_after_the_last_abnormal_one() -> None:
    probes = [*steady(10, 11), probe(11, status=0, latency=5), probe(16.5, status=503), *steady(17, 20)]
    assert recovered_at(probes, 10, 20) == 17 + 0.05


def test_a_slow_success_is_not_normal() -> None:
    probes = [*steady(10, 11), probe(11, latency=SLOW_S + 1), *steady(14.5, 20)]
    assert recovered_at(probes, 10, 20) == 14.5 + 0.05


def test_not_recovered_when_too_few_normal_answers_follow() -> None:
    probes = [*steady(10, 12), probe(12, status=0), probe(19)]
    assert recovered_at(probes, 10, 20) is None
    assert recovered_at([], 10, 20) is None


def test_a_fault_result_counts_its_windows_failures_and_retries_from_its_end() -> None:
    load = [
        Request("POST /v1/charges", "a", 9.9, 10.3, 0, False),  # in flight when the fault struck
        Request("POST /v1/charges", "a", 11.0, 11.1, 409, False, retry=True),
        Request("POST /v1/charges", "a", 12.0, 12.1, 200, True, retry=True, object_id="ch_1"),
        Request("POST /v1/charges", "b", 30.0, 30.1, 503, False),  # after the recovery: not this fault's
    ]
    probes = [*steady(10, 10.5), probe(10.5, status=0), *steady(13, 25)]
    result = fault_result(Injection("node-lost", 10, 11, "node 1 lost"), [*load, *probes], 25, origin=5)
    assert result.injected_s == 5 and result.lasted_s == 1
    assert result.recovered_s == 2.05  # the first normal answer (13.05) after the fault ended (11)
    assert result.failed == {"409": 1, "no answer": 1}
    assert result.retries == 2 and result.requests == 3 and result.recovered


def test_a_fault_that_could_not_be_injected_has_not_recovered() -> None:
    result = fault_result(Injection("psp-outage", 10, 10, error="HTTPError"), steady(10, 20), 20, 0)
    assert result.recovered_s == 0 and not result.recovered


def test_what_clients_saw_succeed_and_keys_that_moved_money_twice() -> None:
    requests = [
        Request("POST /v1/charges", "k1", 1, 2, 200, True, object_id="ch_1"),
        Request("POST /v1/charges", "k1", 1, 2, 200, True, object_id="ch_1", retry=True),
        Request("POST /v1/charges", "k2", 1, 2, 200, True, object_id="ch_2"),
        Request("POST /v1/charges", "k2", 1, 2, 200, True, object_id="ch_3"),
        Request("POST /v1/charges", "k3", 1, 2, 402, True),
        Request("POST /v1/refunds", "k4", 1, 2, 200, True, object_id="re_1"),
    ]
    assert succeeded(requests, "POST /v1/charges") == {"ch_1", "ch_2", "ch_3"}
    assert succeeded(requests, "POST /v1/refunds") == {"re_1"}
    assert keys_answered_twice(requests) == ["k2"]


def test_the_timeline_buckets_answers_by_second_and_leaves_probes_out() -> None:
    requests = [
        Request("POST /v1/charges", "a", 100.1, 100.2, 200, True),
        Request("POST /v1/charges", "b", 100.1, 100.5, 200, True),
        Request("POST /v1/charges", "c", 101.0, 102.5, 0, False),
        probe(100.0),
    ]
    rows = timeline(requests, origin=100)
    assert [r["t"] for r in rows] == [0, 1, 2]
    assert rows[0]["ok_per_s"] == 2 and rows[0]["p99_ms"] == 400
    assert rows[1]["ok_per_s"] == 0 and rows[2]["failed_per_s"] == 1


def test_a_probe_in_flight_when_the_next_fault_strikes_is_the_next_faults() -> None:
    probes = [*steady(10, 19.5), probe(19.9, status=0, latency=0.2)]
    assert recovered_at(probes, 10, 20) == 10
    hung = [*steady(10, 15), probe(15, status=0, latency=9)]  # slow long before the next fault: this one's
    assert recovered_at(hung, 10, 20) is None
