"""The outage profiles' schedule: the window is placed in the run from its start, for one PSP only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.profiles import PROFILES, Outage, phase, psp_of
from payray.routing import PSPS, checked_priorities
from psp.emulator.faults import FaultConfig

OUTAGES = sorted(name for name, profile in PROFILES.items() if profile.outage is not None)
starts = st.floats(min_value=1.6e9, max_value=2.2e9, allow_nan=False)
run_times = st.floats(min_value=1, max_value=3600, allow_nan=False)


def test_there_are_outage_profiles_of_stripe_with_both_psps_routed_stripe_first() -> None:
    assert "stripe_outage" in OUTAGES
    for name in OUTAGES:
        profile = PROFILES[name]
        assert profile.outage is not None and profile.outage.psp == "stripe"
        assert profile.routing is not None and checked_priorities(profile.routing) == ("stripe", "braintree")


@pytest.mark.parametrize("name", OUTAGES)
@given(started_at=starts, run_time=run_times)
def test_the_outage_lies_within_the_run_and_is_placed_from_its_start(
    name: str, started_at: float, run_time: float
) -> None:
    outage = PROFILES[name].outage
    assert outage is not None
    start, end = outage.window(started_at, run_time)
    assert started_at <= start < end <= started_at + run_time * (1 + 1e-12)
    assert start == pytest.approx(started_at + outage.start_share * run_time)
    assert end - start == pytest.approx((outage.end_share - outage.start_share) * run_time)


def test_stripe_outage_takes_the_middle_third_of_the_run() -> None:
    settings = PROFILES["stripe_outage"].fault_settings(1_800_000_000.0, 30.0)
    assert settings == [
        {},
        {"psp": "stripe", "outages": [{"start": 1_800_000_010.0, "end": 1_800_000_020.0, "mode": "error"}]},
    ]


@pytest.mark.parametrize("name", OUTAGES)
@given(started_at=starts, run_time=run_times)
def test_every_setting_is_one_the_emulator_takes_and_only_the_outage_psp_goes_down(
    name: str, started_at: float, run_time: float
) -> None:
    outage = PROFILES[name].outage
    assert outage is not None
    first, *rest = PROFILES[name].fault_settings(started_at, run_time)
    assert "psp" not in first and not FaultConfig.model_validate(first).outages  # both PSPs: no outage
    (down,) = rest
    assert down["psp"] in PSPS and down["psp"] == outage.psp
    config = FaultConfig.model_validate({k: v for k, v in down.items() if k != "psp"})
    (window,) = config.outages
    assert (window.start, window.end) == outage.window(started_at, run_time)
    assert window.mode == outage.mode


def test_profiles_without_an_outage_set_both_psps_once_and_route_nothing() -> None:
    for name, profile in PROFILES.items():
        if profile.outage is None:
            assert profile.fault_settings(1_800_000_000.0, 60.0) == [profile.faults], name
            assert profile.routing is None, name


@pytest.mark.parametrize(("start", "end"), [(0.5, 0.5), (0.7, 0.3), (-0.1, 0.5), (0.2, 1.1)])
def test_an_outage_outside_the_run_or_empty_is_refused(start: float, end: float) -> None:
    with pytest.raises(ValueError, match="within the run"):
        Outage("stripe", start, end)


def test_the_outage_profiles_expect_no_failed_requests() -> None:
    """Charges caught by the outage are answered 202 pending: not failures. Only a 5xx or no answer is."""
    for name in OUTAGES:
        assert PROFILES[name].max_fail_ratio == 0.0


def test_a_charge_falls_before_during_or_after_the_window_by_when_it_was_sent() -> None:
    window = (100.0, 200.0)
    assert [phase(t, window) for t in (99.9, 100.0, 199.9, 200.0)] == ["before", "during", "during", "after"]
    assert phase(150.0, None) == "run"


@pytest.mark.parametrize(
    ("reference", "psp"),
    [("pi_3Nx2abcDEF", "stripe"), ("k7x2m9qa", "braintree"), (None, None), ("", None)],
)
def test_the_psp_of_a_charge_is_read_from_its_reference(reference: str | None, psp: str | None) -> None:
    assert psp_of(reference) == psp
