"""Database calls that end in time whatever the database does: the base of the event store and
the key store."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from typing import Any, TypeVar

from batchserve.events.errors import StoreError, StoreUnavailable

T = TypeVar("T")


class BoundedCalls(ABC):
    """Runs each database operation for at most a given time, translating driver errors."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for logs and messages (no credentials)."""

    @abstractmethod
    def _translate(self, exc: Exception, what: str) -> StoreError:
        """Map a driver exception to ``StoreUnavailable`` (reachability) or ``StoreError``."""

    def _reset_connections(self) -> None:  # noqa: B027 - optional hook, most stores need nothing
        """Cut the connections an abandoned operation may still hold."""

    async def _bounded(self, what: str, op: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``op`` for at most ``timeout_s``, translating driver errors.

        ``op`` runs as its own task and is abandoned, not awaited, once the time is up or the
        caller is cancelled: a driver cleaning up after a cancel (rolling back, resetting the
        connection) would otherwise wait on the very server that stopped answering.
        ``_abandon`` then cuts the connections so the abandoned task unwinds at once.
        """
        task = asyncio.ensure_future(op)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise StoreUnavailable(f"{self.describe()}: {what} took longer than {timeout_s:g} s")
        try:
            return task.result()
        except StoreError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        task.cancel()
        # Nobody awaits it any more: fetch its outcome so asyncio does not report it as lost.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._reset_connections()
