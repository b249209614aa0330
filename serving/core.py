"""The serving core a front end builds once: loaded models, the hot path and event recording.

The HTTP server builds one per process; any other front end (a queue worker) builds the same,
so every way into batchserve classifies and records alike: with the same result cache and the
same fallback models (docs/cache-and-fallback.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from batchserve.events.config import EventsConfig
from batchserve.events.stats_reader import StatsReader, open_stats_reader
from batchserve.events.writer import EventWriter
from batchserve.serving.cache import ResultCache, open_cache
from batchserve.serving.cache_config import CacheConfig
from batchserve.serving.classifier import Classifier
from batchserve.serving.config import ServingConfig
from batchserve.serving.fallback import Fallbacks
from batchserve.serving.recording import Recorder
from batchserve.serving.registry import BatchObserver, ModelRegistry

# Of the time left at shutdown, what closing the models may take; the rest is the event flush's.
BATCHES_SHARE = 0.6
EVENTS_MARGIN_S = 0.2
# How often the cache drops the entries of versions no longer loaded (unloaded, or replaced).
CACHE_SWEEP_S = 1.0
CACHE_CLOSE_S = 0.5

log = logging.getLogger("batchserve.serving")


@dataclass
class Serving:
    config: ServingConfig
    registry: ModelRegistry
    classifier: Classifier
    recorder: Recorder
    writer: EventWriter | None
    # Statistics read on connections of their own: a heavy query never waits on, or cuts, the writer's.
    analytics: StatsReader | None = None
    fall_back: bool = True  # whether the classifier hands a failed batch's images to the model's fallback
    cache_sweep_s: float = CACHE_SWEEP_S
    fallbacks: Fallbacks = field(init=False)
    _sweeper: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Looked up in `registry` as it is when asked: a front end may replace it after build.
        self.fallbacks = Fallbacks(lambda: self.registry)
        if self.fall_back:
            self.classifier.fallbacks = self.fallbacks

    @classmethod
    def build(cls, config: ServingConfig, events: EventsConfig, *, retire_grace_s: float,
              on_batch: BatchObserver | None = None, catalog_only: bool = False,
              cache: CacheConfig | None = None, fall_back: bool = True) -> Serving:
        """`cache`: the result cache to keep (none without it, and none for a catalog: its models
        run elsewhere, and so does their cache). `fall_back`: whether a model's images may be
        answered by its fallback when its batch is refused or fails."""
        writer = EventWriter(events) if events.enabled else None
        threads = config.preprocess_threads or os.cpu_count() or 2
        classifier = Classifier(ThreadPoolExecutor(threads, thread_name_prefix="decode"))
        if cache is not None and cache.enabled:
            if catalog_only:
                log.warning("--cache %s is ignored here: the models run elsewhere (queue workers, upstream "
                            "servers), which keep the cache", cache.cache)
            else:
                classifier.cache = open_cache(cache)
        return cls(
            config=config,
            registry=ModelRegistry(config, retire_grace_s=retire_grace_s, on_batch=on_batch,
                                   catalog_only=catalog_only),
            classifier=classifier,
            recorder=Recorder(writer),
            writer=writer,
            analytics=open_stats_reader(events) if events.enabled else None,
            fall_back=fall_back,
        )

    @property
    def cache(self) -> ResultCache | None:
        return self.classifier.cache

    async def start(self) -> None:
        """Start the event writer; models load separately (`registry`).

        Returns once the store is open: the writer replays a journal left by an earlier process in
        the background, so readiness never waits for it.
        """
        if self.writer is not None:
            await self.writer.start()
        if self.cache is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(self.cache), name="cache-sweep")

    async def _sweep(self, cache: ResultCache) -> None:
        """Drop the cached answers of versions no longer loaded, every `cache_sweep_s`."""
        while True:
            await asyncio.sleep(self.cache_sweep_s)
            try:
                await cache.forget_unloaded(self.registry.loaded())
            except Exception:  # a sweep that failed is tried again at the next one
                log.exception("sweeping the result cache failed")

    async def close(self, timeout_s: float) -> None:
        """Queued and in-flight batches finish, then the event writer flushes (or spills), within `timeout_s`."""
        end = time.monotonic() + timeout_s
        if self._sweeper is not None:  # stopped first: closing unloads every model, which is no reason
            self._sweeper.cancel()     # to drop a shared cache's entries that other replicas still use
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.registry.close(timeout=timeout_s * BATCHES_SHARE)
        if self.cache is not None:
            await self.cache.close(min(CACHE_CLOSE_S, max(0.0, end - time.monotonic())))
        if self.analytics is not None:
            await self.analytics.close()
        if self.writer is not None:
            await self.writer.close(timeout=max(0.1, end - time.monotonic() - EVENTS_MARGIN_S))
        self.classifier.decode_pool.shutdown(wait=False)
