"""How many messages a worker may still take: long polls reserve room before they ask SQS for
messages, so a worker never holds more than it can keep moving (the batcher's queue, the decode
pool) and messages it could not start on stay in the queue for other workers."""

from __future__ import annotations

import asyncio


class Capacity:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"capacity must be at least 1, not {limit}")
        self.limit = limit
        self.used = 0
        self._room = asyncio.Event()
        self._room.set()

    async def reserve(self, most: int) -> int:
        """Wait until there is room, then take up to `most` places; returns how many were taken."""
        while self.used >= self.limit:
            self._room.clear()
            await self._room.wait()
        taken = min(most, self.limit - self.used)
        self.used += taken
        return taken

    def release(self, count: int = 1) -> None:
        self.used -= count
        if self.used < self.limit:
            self._room.set()
