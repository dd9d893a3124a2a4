"""The pure parts of the load tests: shapes stay within their bounds, run times parse, profiles are valid."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.options import check_options, is_loopback
from loadtest.profiles import PROFILES
from loadtest.run import LoadRun, parse_run_time
from loadtest.shapes import SHAPES, ramp, spike
from psp.emulator.faults import FaultConfig

times = st.floats(min_value=0, max_value=7200, allow_nan=False)
users = st.integers(min_value=1, max_value=2000)
rates = st.floats(min_value=0.1, max_value=2000, allow_nan=False)
run_times = st.floats(min_value=1, max_value=3600, allow_nan=False)


@pytest.mark.parametrize("name", sorted(SHAPES))
@given(t=times, peak=users, rate=rates, run_time=run_times)
def test_every_shape_stays_within_its_users_and_stops_on_time(
    name: str, t: float, peak: int, rate: float, run_time: float
) -> None:
    tick = SHAPES[name](t, peak, rate, run_time)
    if t >= run_time:
        assert tick is None
    else:
        assert tick is not None
        count, spawn_rate = tick
        assert 1 <= count <= peak and spawn_rate > 0


@given(peak=users, run_time=run_times, a=times, b=times)
def test_ramp_never_goes_down(peak: int, run_time: float, a: float, b: float) -> None:
    early, late = sorted((a, b))
    first, second = ramp(early, peak, 1.0, run_time), ramp(late, peak, 1.0, run_time)
    if second is not None:
        assert first is not None and first[0] <= second[0]


def test_spike_is_a_fifth_then_everyone_then_a_fifth() -> None:
    assert [spike(t, 100, 5.0, 90.0) for t in (0, 29.9, 30, 59.9, 60, 89.9, 90)] == [
        (20, 100.0),
        (20, 100.0),
        (100, 100.0),
        (100, 100.0),
        (20, 100.0),
        (20, 100.0),
        None,
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("60", 60), ("60s", 60), ("2m", 120), ("1h", 3600), ("1m30s", 90)]
)
def test_run_times_parse(text: str, seconds: int) -> None:
    assert parse_run_time(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "2h", "61m", "1.5m", "-5", "five", "5x", "m"])
def test_unbounded_or_malformed_run_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="run time"):
        parse_run_time(text)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://10.0.0.1:8000", False),
        ("http://192.0.2.10", False),
        ("not a url", False),
        ("", False),
    ],
)
def test_only_loopback_hosts_are_targets(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_fault_profile_is_a_valid_emulator_configuration(name: str) -> None:
    FaultConfig.model_validate(PROFILES[name].faults)
    assert 0 <= PROFILES[name].max_fail_ratio < 1


def test_the_locust_command_is_headless_bounded_and_keeps_the_admin_key_out_of_argv() -> None:
    run = LoadRun("http://127.0.0.1:8000", 10, 5.0, 30, "spike", "flaky", 3, "out/run", "out/run.html")
    argv = run.command()
    assert "--headless" in argv and argv[argv.index("--run-time") + 1] == "30s"
    assert argv[argv.index("--users") + 1] == "10" and argv[argv.index("--shape") + 1] == "spike"
    assert argv[argv.index("--csv") + 1] == "out/run" and argv[argv.index("--html") + 1] == "out/run.html"
    assert not any("sk_" in part for part in argv)


def test_the_locustfile_refuses_remote_hosts_and_unbounded_users() -> None:
    good = argparse.Namespace(
        host="http://127.0.0.1:8000",
        psp_url="http://127.0.0.1:9000",
        num_users=10,
        run_time=60,
        spawn_rate=5.0,
        merchants=2,
        charge_weight=9.0,
        balance_weight=1.0,
        replay_share=0.05,
        refund_share=0.1,
        client_timeout=5.0,
        max_retries=3,
        max_fail_ratio=None,
        admin_key="sk_admin_x",
        psp_faults="none",
    )
    assert check_options(good) == []
    bad = argparse.Namespace(
        **{**vars(good), "host": "http://10.0.0.1", "num_users": 5000, "admin_key": None}
    )
    problems = check_options(bad)
    assert len(problems) == 3 and "loopback" in problems[0]
