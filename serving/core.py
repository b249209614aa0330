"""The serving core a front end builds once: loaded models, the hot path and event recording.

The HTTP server builds one per process; any other front end (a queue worker) builds the same,
so every way into batchserve classifies and records alike.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from batchserve.events.config import EventsConfig
from batchserve.events.stats_reader import StatsReader, open_stats_reader
from batchserve.events.writer import EventWriter
from batchserve.serving.classifier import Classifier
from batchserve.serving.config import ServingConfig
from batchserve.serving.recording import Recorder
from batchserve.serving.registry import BatchObserver, ModelRegistry

# Of the time left at shutdown, what closing the models may take; the rest is the event flush's.
BATCHES_SHARE = 0.6
EVENTS_MARGIN_S = 0.2


@dataclass
class Serving:
    config: ServingConfig
    registry: ModelRegistry
    classifier: Classifier
    recorder: Recorder
    writer: EventWriter | None
    # Statistics read on connections of their own: a heavy query never waits on, or cuts, the writer's.
    analytics: StatsReader | None = None

    @classmethod
    def build(cls, config: ServingConfig, events: EventsConfig, *, retire_grace_s: float,
              on_batch: BatchObserver | None = None, catalog_only: bool = False) -> Serving:
        writer = EventWriter(events) if events.enabled else None
        threads = config.preprocess_threads or os.cpu_count() or 2
        return cls(
            config=config,
            registry=ModelRegistry(config, retire_grace_s=retire_grace_s, on_batch=on_batch,
                                   catalog_only=catalog_only),
            classifier=Classifier(ThreadPoolExecutor(threads, thread_name_prefix="decode")),
            recorder=Recorder(writer),
            writer=writer,
            analytics=open_stats_reader(events) if events.enabled else None,
        )

    async def start(self) -> None:
        """Start the event writer; models load separately (`registry`).

        Returns once the store is open: the writer replays a journal left by an earlier process in
        the background, so readiness never waits for it.
        """
        if self.writer is not None:
            await self.writer.start()

    async def close(self, timeout_s: float) -> None:
        """Queued and in-flight batches finish, then the event writer flushes (or spills), within `timeout_s`."""
        end = time.monotonic() + timeout_s
        await self.registry.close(timeout=timeout_s * BATCHES_SHARE)
        if self.analytics is not None:
            await self.analytics.close()
        if self.writer is not None:
            await self.writer.close(timeout=max(0.1, end - time.monotonic() - EVENTS_MARGIN_S))
        self.classifier.decode_pool.shutdown(wait=False)
