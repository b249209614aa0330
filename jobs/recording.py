"""Events of queued work: one row per image, whichever delivery of its message answers it.

The serving core's Recorder builds the event as for any request; here it gets an id derived from
the image id (so the event store keeps one row however often the message is delivered) and the
web tier's receipt time. The ledger counts what the worker handed to the event writer, so that a
message is deleted only once its event is stored or journaled: a worker killed after deleting a
message must not take that message's only event with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import msgspec

from batchserve.events.model import Event
from batchserve.events.writer import EventWriter
from batchserve.serving.drift import DriftMonitor
from batchserve.serving.recording import Recorder


class EventLedger:
    """The worker's one path to the event writer."""

    def __init__(self, writer: EventWriter | None, drift: DriftMonitor | None = None) -> None:
        self.writer = writer
        self.drift = drift  # sees every answer, events on or off
        self.put_total = 0

    def put(self, event: Event) -> None:
        if self.writer is not None:
            self.writer.put(event)
            self.put_total += 1

    def settled_total(self) -> int:
        """Events the writer has finished with: stored, journaled, or dropped (it counts each once).
        The writer takes events in order, so event number n is settled once this reaches n."""
        if self.writer is None:
            return self.put_total
        stats = self.writer.stats
        return stats.written_total + stats.spilled_total + stats.dropped_total

    def recorder(self, event_id: str, received_at: datetime | None) -> Recorder:
        """A Recorder whose events (one per message) carry `event_id` and, when known, `received_at`."""
        if self.writer is None:
            return Recorder(None, self.drift)
        # Recorder only calls put(); the stamp forwards to the real writer through the ledger.
        return Recorder(cast(EventWriter, _Stamp(self, event_id, received_at)), self.drift)


class _Stamp:
    def __init__(self, ledger: EventLedger, event_id: str, received_at: datetime | None) -> None:
        self.ledger = ledger
        self.event_id = event_id
        self.received_at = received_at

    def put(self, event: Event) -> None:
        self.ledger.put(msgspec.structs.replace(event, event_id=self.event_id, ts=self.received_at or event.ts))
