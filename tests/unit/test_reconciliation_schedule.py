"""The nightly schedule: when the next run is, which day it reconciles, and catching up after downtime."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time
from typing import Any

import pytest

from payray.settings import Settings
from serve_app.workers.reconciliation import ReconciliationScheduler, next_run_at

AT = time(2, 15)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 25, 0, 0, tzinfo=UTC), datetime(2026, 11, 25, 2, 15, tzinfo=UTC)),
        (datetime(2026, 11, 25, 2, 14, 59, tzinfo=UTC), datetime(2026, 11, 25, 2, 15, tzinfo=UTC)),
        (datetime(2026, 11, 25, 2, 15, tzinfo=UTC), datetime(2026, 11, 26, 2, 15, tzinfo=UTC)),
        (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), datetime(2027, 1, 1, 2, 15, tzinfo=UTC)),
    ],
)
def test_next_run_is_the_first_0215_utc_after_now(now: datetime, expected: datetime) -> None:
    assert next_run_at(now, AT) == expected


class Scripted(ReconciliationScheduler):
    """The schedule with a fake clock and no IO: runs are recorded, sleeping moves the clock."""

    def __init__(self, start: datetime, reconciled: set[date], nights: int, failures: int = 0) -> None:
        self.now = start.timestamp()
        self.ran: list[date] = []
        self.slept: list[float] = []
        self.failures = failures
        self.reconciled = reconciled
        self.nights = nights
        settings = Settings(psp_api_key="sk_test", reconciliation_at="02:15")
        super().__init__(settings, clock=lambda: self.now, sleep=self.pass_time)

    async def pass_time(self, seconds: float) -> None:
        assert seconds > 0
        if len(self.ran) >= self.nights:
            raise asyncio.CancelledError
        self.slept.append(seconds)
        self.now += seconds

    async def run(self, day: str) -> dict[str, Any]:
        self.ran.append(date.fromisoformat(day))
        if self.failures:
            self.failures -= 1
            if self.failures % 2:
                raise ConnectionError("the PSP is down")
            return {"status": "failed"}
        return {"status": "succeeded"}

    async def _reconciled(self, day: date) -> bool:
        return day in self.reconciled


def nights(start: datetime, reconciled: set[date], count: int) -> list[date]:
    scheduler = Scripted(start, reconciled, count)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scheduler._forever())
    return scheduler.ran


def test_a_failed_night_is_retried_further_apart_until_it_succeeds() -> None:
    scheduler = Scripted(datetime(2026, 11, 25, 1, 0, tzinfo=UTC), set(), nights=3, failures=2)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scheduler._forever())
    assert scheduler.ran == [date(2026, 11, 24)] * 3
    assert scheduler.slept[1:] == [600.0, 1200.0]  # after the wait for 02:15


def test_a_day_that_keeps_failing_is_given_up_and_the_next_night_still_runs() -> None:
    scheduler = Scripted(datetime(2026, 11, 25, 1, 0, tzinfo=UTC), set(), nights=7, failures=6)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scheduler._forever())
    assert scheduler.ran == [date(2026, 11, 24)] * 6 + [date(2026, 11, 25)]


def test_each_night_reconciles_the_day_before() -> None:
    ran = nights(datetime(2026, 11, 25, 1, 0, tzinfo=UTC), set(), 3)
    assert ran == [date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 26)]


def test_a_scheduler_started_after_0215_catches_up_on_an_unreconciled_yesterday() -> None:
    ran = nights(datetime(2026, 11, 25, 9, 0, tzinfo=UTC), set(), 2)
    assert ran == [date(2026, 11, 24), date(2026, 11, 25)]


def test_no_catch_up_when_yesterday_is_done() -> None:
    ran = nights(datetime(2026, 11, 25, 9, 0, tzinfo=UTC), {date(2026, 11, 24)}, 1)
    assert ran == [date(2026, 11, 25)]


def test_reconciliation_at_is_validated() -> None:
    assert Settings.from_env({"PAYRAY_RECON_AT": "3:05"}).reconciliation_at == "03:05"
    for bad in ("24:00", "2:60", "0215", "noon"):
        with pytest.raises(ValueError, match="PAYRAY_RECON_AT"):
            Settings.from_env({"PAYRAY_RECON_AT": bad})
