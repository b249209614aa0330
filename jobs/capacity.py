"""How many messages a worker may still take: long polls reserve room before they ask SQS for
messages, so a worker never holds more than it can keep moving (the batcher's queue, the decode
pool) and messages it could not start on stay in the queue for other workers.

A worker at its limit gets room back one answered message at a time. A poll that took each place
as it came free would ask SQS for one message at a time, and every receive is a request SQS bills
and about as much of the event loop's CPU as a receive of ten. So a poll waits until there is room
for a full receive (`step`: ten, or less for a small limit), and the worker holds up to that many
fewer than its limit for a moment.
"""

from __future__ import annotations

import asyncio

# At most this share of the limit is left waiting for a fuller receive: a worker allowed few
# messages takes them as they come free, or its next batch would run short.
STEP_SHARE = 4


class Capacity:
    def __init__(self, limit: int, receive_max: int = 1) -> None:
        if limit < 1:
            raise ValueError(f"capacity must be at least 1, not {limit}")
        self.limit = limit
        self.used = 0
        # The room a waiting poll waits for.
        self.step = max(1, min(receive_max, limit // STEP_SHARE))
        self._room = asyncio.Event()
        self._room.set()

    async def reserve(self, most: int) -> int:
        """Wait until there is room for `step` messages, then take up to `most` places; returns how
        many were taken."""
        while self.limit - self.used < self.step:
            self._room.clear()
            await self._room.wait()
        taken = min(most, self.limit - self.used)
        self.used += taken
        return taken

    def release(self, count: int = 1) -> None:
        self.used -= count
        if self.limit - self.used >= self.step:
            self._room.set()
