"""One deadline for a request's body: a receive that has its message at once arms no timer, one
that waits is cut off at the deadline (its wait dropped), and a complete body is past deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from batchserve.server.body_deadline import receive_by


class Late(Exception):
    pass


class Client:
    """uvicorn's receive as the app sees it: a message that is there is returned at once, else it waits."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = list(messages)
        self.arrived = asyncio.Event()
        if self.messages:
            self.arrived.set()
        self.waits_dropped = 0

    async def receive(self) -> dict[str, Any]:
        try:
            await self.arrived.wait()
        except BaseException:
            self.waits_dropped += 1
            raise
        message = self.messages.pop(0)
        if not self.messages:
            self.arrived.clear()
        return message

    def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()


def chunk(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


@pytest.fixture
async def timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The instants the running loop was asked to call back at (the deadline's timer is one)."""
    loop = asyncio.get_running_loop()
    asked: list[float] = []
    call_at = loop.call_at

    def noting_call_at(when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        asked.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", noting_call_at)
    return asked


def deadline_in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_body_that_has_arrived_needs_no_timer(timers: list[float]) -> None:
    client = Client(chunk(b"all of it", more=False))
    receive = receive_by(client.receive, deadline_in(5.0), Late)
    assert await receive() == chunk(b"all of it", more=False)
    assert timers == []


async def test_a_receive_that_waits_gets_the_deadline_and_its_message(timers: list[float]) -> None:
    client = Client(chunk(b"first", more=True))
    deadline = deadline_in(5.0)
    receive = receive_by(client.receive, deadline, Late)
    assert await receive() == chunk(b"first", more=True)
    asyncio.get_running_loop().call_later(0.05, client.send, chunk(b"second", more=False))
    assert await receive() == chunk(b"second", more=False)
    assert timers.count(deadline) == 1  # the one wait had the deadline's timer (the others: call_later's)
    assert client.waits_dropped == 0


async def test_a_body_not_complete_by_the_deadline_fails_and_drops_its_wait() -> None:
    client = Client(chunk(b"first", more=True))
    receive = receive_by(client.receive, deadline_in(0.1), Late)
    await receive()
    started = asyncio.get_running_loop().time()
    with pytest.raises(Late):
        await receive()
    assert asyncio.get_running_loop().time() - started >= 0.09
    assert client.waits_dropped == 1
    assert not client.arrived._waiters  # type: ignore[attr-defined]  # nobody waits on the client any more


async def test_the_deadline_is_for_the_body_only() -> None:
    client = Client(chunk(b"whole", more=False))
    receive = receive_by(client.receive, deadline_in(0.05), Late)
    await receive()
    await asyncio.sleep(0.1)
    asyncio.get_running_loop().call_later(0.05, client.send, {"type": "http.disconnect"})
    assert await receive() == {"type": "http.disconnect"}  # waited past the deadline: the body was complete


async def test_a_cancelled_request_is_not_taken_for_a_late_body() -> None:
    client = Client()
    receive = receive_by(client.receive, deadline_in(5.0), Late)
    reading = asyncio.ensure_future(receive())
    await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert client.waits_dropped == 1


async def test_a_receive_that_is_no_coroutine_still_gets_the_deadline() -> None:
    never: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def receive() -> Awaitable[dict[str, Any]]:
        return never

    with pytest.raises(Late):
        await receive_by(receive, deadline_in(0.05), Late)()  # type: ignore[arg-type]
