"""Natural batching: alone an item leaves at once; under load, items queue behind the call in flight."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.batching import NaturalBatcher


class Recorder:
    def __init__(self, fail_on: int | None = None, short: bool = False, held: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.short = short
        # while held, a call stays in flight until the test releases it
        self.release = asyncio.Event()
        if not held:
            self.release.set()

    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError(f"lost the batch with {self.fail_on}")
        return [item * 10 for item in items][: len(items) - 1 if self.short else None]


def test_an_item_alone_leaves_at_once() -> None:
    recorder = Recorder()

    async def scenario() -> int:
        return await NaturalBatcher(recorder.send).submit(7)

    assert asyncio.run(scenario()) == 70
    assert recorder.batches == [[7]]


@given(st.lists(st.integers(), min_size=1, max_size=300), st.integers(min_value=1, max_value=50))
def test_every_caller_gets_its_own_result_in_few_calls(items: list[int], max_batch: int) -> None:
    recorder = Recorder()

    async def scenario() -> list[int]:
        batcher = NaturalBatcher(recorder.send, max_batch=max_batch)
        return await asyncio.gather(*(batcher.submit(item) for item in items))

    assert asyncio.run(scenario()) == [item * 10 for item in items]
    assert [item for batch in recorder.batches for item in batch] == items
    assert all(len(batch) <= max_batch for batch in recorder.batches)
    # all arrived before the first call left: as few calls as max_batch allows
    assert len(recorder.batches) == -(-len(items) // max_batch)


def test_a_failed_call_fails_its_batch_only() -> None:
    recorder = Recorder(fail_on=3)

    async def scenario() -> list[int | BaseException]:
        batcher = NaturalBatcher(recorder.send)
        first = await batcher.submit(1)
        failed = await asyncio.gather(*(batcher.submit(i) for i in (2, 3, 4)), return_exceptions=True)
        last = await batcher.submit(5)
        return [first, *failed, last]

    outcomes = asyncio.run(scenario())
    assert outcomes[0] == 10 and outcomes[-1] == 50
    assert all(isinstance(o, ConnectionError) for o in outcomes[1:-1])


def test_a_short_answer_is_an_error_for_everyone_in_the_batch() -> None:
    async def scenario() -> None:
        await NaturalBatcher(Recorder(short=True).send).submit(1)

    with pytest.raises(RuntimeError, match="0 results for a batch of 1"):
        asyncio.run(scenario())


def test_items_arriving_during_a_call_travel_together_in_the_next() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        recorder = Recorder(held=True)
        batcher = NaturalBatcher(recorder.send)
        first = asyncio.create_task(batcher.submit(1))
        while not recorder.batches:  # until the first call is in flight
            await asyncio.sleep(0)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 7)]
        await asyncio.sleep(0)  # a yield, not a wait: the five queue up behind the held call
        recorder.release.set()
        return [await first, *[await task for task in rest]], recorder.batches

    results, batches = asyncio.run(scenario())
    assert results == [10, 20, 30, 40, 50, 60]
    assert batches == [[1], [2, 3, 4, 5, 6]]
