"""A worker's room for messages (jobs/capacity.py): once full, a poll waits for room for a whole
receive instead of asking SQS for each place as it comes free."""

from __future__ import annotations

import asyncio

from batchserve.jobs.capacity import Capacity


async def _turns(count: int = 3) -> None:
    """Let the event loop run what the last release woke (no time passes)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_full_worker_waits_for_room_for_a_whole_receive() -> None:
    capacity = Capacity(64, receive_max=10)
    assert [await capacity.reserve(10) for _ in range(6)] == [10] * 6
    poll = asyncio.ensure_future(capacity.reserve(10))  # 4 places free: less than a receive
    await _turns()
    for _ in range(5):  # answered messages free their places one at a time
        capacity.release()
        await _turns()
        assert not poll.done()
    capacity.release()  # room for ten
    await _turns()
    assert poll.done() and poll.result() == 10
    assert capacity.used == 64


async def test_a_receive_that_brought_fewer_gives_the_rest_back() -> None:
    capacity = Capacity(20, receive_max=10)  # a quarter of 20: a poll waits for room for 5
    assert await capacity.reserve(10) == 10
    assert await capacity.reserve(10) == 10
    poll = asyncio.ensure_future(capacity.reserve(10))
    await _turns()
    capacity.release(10 - 3)  # the second receive brought three messages
    await _turns()
    assert poll.done() and poll.result() == 7 and capacity.used == 20


async def test_a_small_limit_is_taken_as_it_comes_free() -> None:
    capacity = Capacity(6, receive_max=10)  # a quarter of 6 is one: no place is kept waiting
    assert await capacity.reserve(10) == 6
    poll = asyncio.ensure_future(capacity.reserve(10))
    await _turns()
    assert not poll.done()
    capacity.release()
    await _turns()
    assert poll.done() and poll.result() == 1
