"""The nightly schedule: when the next run is, which day it reconciles, and catching up after downtime."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time
from typing import Any

import pytest

from payray.settings import Settings
from serve_app.recon_scheduler import ReconScheduler, next_run_at

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


class Scripted(ReconScheduler):
    """The schedule with a fake clock and no IO: runs are recorded, sleeping moves the clock."""

    def __init__(self, start: datetime, reconciled: set[date], nights: int) -> None:
        self.now = start.timestamp()
        self.ran: list[date] = []
        self.reconciled = reconciled
        self.nights = nights
        super().__init__(
            Settings(recon_at="02:15"), "sk_test", None, clock=lambda: self.now, sleep=self.pass_time
        )

    async def pass_time(self, seconds: float) -> None:
        assert seconds > 0
        if len(self.ran) >= self.nights:
            raise asyncio.CancelledError
        self.now += seconds

    async def run(self, day: str) -> dict[str, Any]:
        self.ran.append(date.fromisoformat(day))
        return {}

    async def _reconciled(self, day: date) -> bool:
        return day in self.reconciled


def nights(start: datetime, reconciled: set[date], count: int) -> list[date]:
    scheduler = Scripted(start, reconciled, count)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scheduler._forever())
    return scheduler.ran


def test_each_night_reconciles_the_day_before() -> None:
    ran = nights(datetime(2026, 11, 25, 1, 0, tzinfo=UTC), set(), 3)
    assert ran == [date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 26)]


def test_a_scheduler_started_after_0215_catches_up_on_an_unreconciled_yesterday() -> None:
    ran = nights(datetime(2026, 11, 25, 9, 0, tzinfo=UTC), set(), 2)
    assert ran == [date(2026, 11, 24), date(2026, 11, 25)]


def test_no_catch_up_when_yesterday_is_done() -> None:
    ran = nights(datetime(2026, 11, 25, 9, 0, tzinfo=UTC), {date(2026, 11, 24)}, 1)
    assert ran == [date(2026, 11, 25)]


def test_recon_at_is_validated() -> None:
    assert Settings.from_env({"PAYRAY_RECON_AT": "3:05"}).recon_at == "03:05"
    for bad in ("24:00", "2:60", "0215", "noon"):
        with pytest.raises(ValueError, match="PAYRAY_RECON_AT"):
            Settings.from_env({"PAYRAY_RECON_AT": bad})
