"""Calling the batch function: on the loop when it is a coroutine function, in an executor when it blocks,
and holding its answer to the contract (one result per item)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from batchserve.batching.errors import BatchResultMismatch

__all__ = ["is_async_callable", "start_call", "check_results"]


def is_async_callable(fn: Callable[..., Any]) -> bool:
    # inspect unwraps functools.partial; a callable object with `async def __call__` needs the second look.
    # That look reads the method itself: callable() (what B004 asks for) cannot tell whether it is async.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def start_call(
    fn: Callable[[list[Any]], Any],
    items: list[Any],
    *,
    is_async: bool,
    loop: asyncio.AbstractEventLoop,
    executor: concurrent.futures.Executor | None,
) -> asyncio.Future[Any]:
    """Start one batch; the returned future holds its results or its exception, never raises here."""
    try:
        if not is_async:
            return loop.run_in_executor(executor, fn, items)
        result = fn(items)
        if not inspect.isawaitable(result):
            raise TypeError(f"async batch function returned {type(result).__name__}, not an awaitable")
        return asyncio.ensure_future(result, loop=loop)
    # Raised before any awaiting (or by a shut-down executor): whatever it is, it is this batch's failure.
    except Exception as exc:  # noqa: BLE001
        future = loop.create_future()
        future.set_exception(exc)
        return future


def check_results(results: Any, size: int) -> tuple[list[Any] | None, BaseException | None]:
    """Return ``(results as a list, None)`` or ``(None, error)`` when the batch function broke its contract."""
    if type(results) is list:
        if len(results) == size:
            return results, None
        return None, BatchResultMismatch(expected=size, got=len(results))
    if inspect.iscoroutine(results):
        results.close()  # a coroutine function the detection missed; never awaited, so close it quietly
        return None, TypeError("batch function returned a coroutine from a worker thread; make it `async def`")
    if isinstance(results, (str, bytes, bytearray, Mapping)) or not hasattr(results, "__len__"):
        return None, BatchResultMismatch(expected=size, got=None, type_name=type(results).__name__)
    if len(results) != size:
        return None, BatchResultMismatch(expected=size, got=len(results))
    return list(results), None
