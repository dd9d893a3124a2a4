"""The background workers' loop: it pauses as each pass asks, outlives a failed pass, and starts only once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serve_app.workers.schedules import ScheduledActor, repeat

log = logging.getLogger("test.schedules")


def test_each_pass_sets_the_pause_and_a_failed_pass_is_logged_and_followed_by_its_own_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[float | Exception] = [0.0, 5.0, ConnectionError("down"), 2.0]
    slept: list[float] = []

    async def one_pass() -> float:
        if not outcomes:
            raise asyncio.CancelledError
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with caplog.at_level(logging.WARNING, logger="test.schedules"), pytest.raises(asyncio.CancelledError):
        asyncio.run(
            repeat(one_pass, pause_after_failure_s=9.0, failure="pass failed", logger=log, sleep=sleep)
        )
    assert slept == [5.0, 9.0, 2.0]  # no pause after a pass that asks for none
    assert [(r.levelno, r.message) for r in caplog.records] == [(logging.WARNING, "pass failed")]
    assert caplog.records[0].exc_info is not None


class Counting(ScheduledActor):
    def __init__(self) -> None:
        super().__init__()
        self.loops = 0

    async def _forever(self) -> None:
        self.loops += 1
        await asyncio.Event().wait()


def test_start_runs_one_loop_however_often_it_is_called_and_stop_ends_it() -> None:
    async def scenario() -> tuple[int, bool, int]:
        worker = Counting()
        assert await worker.start() and await worker.start()
        await asyncio.sleep(0)
        loops = worker.loops
        assert await worker.stop()
        ended = worker._task is not None and worker._task.done()
        await worker.start()  # a stopped loop starts again
        await asyncio.sleep(0)
        await worker.stop()
        return loops, ended, worker.loops

    assert asyncio.run(scenario()) == (1, True, 2)
