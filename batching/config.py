"""The dynamic batcher's one configuration object.

Its field names are knob names used everywhere (CLI flags, ``BATCHSERVE_MODEL_<MODEL>_<KNOB>``
environment variables, a model's ``config.toml``); each field's ``help`` is its one description.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["BatchingConfig"]


@dataclass(frozen=True)
class BatchingConfig:
    """How one :class:`~batching.batcher.Batcher` forms batches.

    Every field is validated when the object is built; a bad value raises :class:`ValueError` naming the
    knob, the value and what is allowed.
    """

    max_batch_size: int = field(default=32, metadata={
        "help": "most samples (not requests) in one call of the batch function; larger requests are split"})
    max_queue_delay_ms: float = field(default=0.0, metadata={
        "help": "once an execution slot is free, how long the oldest queued request may wait for the batch to "
                "fill; 0 dispatches at once, so a lone request on an idle model gets no added latency"})
    preferred_batch_sizes: tuple[int, ...] = field(default=(), metadata={
        "help": "batch sizes the model runs best at, e.g. 8,16,32: while the delay runs, a batch is dispatched "
                "as soon as the largest is reached; when it has run out, the largest that the queue can fill "
                "(or everything queued, when it fills none)"})
    max_queue_size: int = field(default=256, metadata={
        "help": "most samples waiting for dispatch; a request that would pass it is refused (503 queue_full)"})
    max_inflight_batches: int = field(default=2, metadata={
        "help": "execution slots: batches that may run at once; batches form only when a slot is free, so under "
                "load requests pile up while the slots are busy and the next batch is larger"})
    latency_slo_ms: float | None = field(default=None, metadata={
        "help": "latency target per request, submit to answer (unset or 0: off); when set, a batch is held open "
                "only while its oldest request's predicted completion, from a cost a + b*n fitted online to the "
                "batches run, stays within it, and not at all where batching does not pay; "
                "max_queue_delay_ms applies until the fit is ready"})

    def __post_init__(self) -> None:
        _require_int("max_batch_size", self.max_batch_size, minimum=1)
        _require_int("max_queue_size", self.max_queue_size, minimum=1)
        _require_int("max_inflight_batches", self.max_inflight_batches, minimum=1)

        delay = self.max_queue_delay_ms
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise ValueError(f"max_queue_delay_ms must be a number of milliseconds, got {delay!r}")
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"max_queue_delay_ms must be a finite number >= 0, got {delay!r}")
        object.__setattr__(self, "max_queue_delay_ms", float(delay))

        slo = self.latency_slo_ms
        if slo is not None:
            if isinstance(slo, bool) or not isinstance(slo, (int, float)):
                raise ValueError(f"latency_slo_ms must be a number of milliseconds, got {slo!r}")
            if not math.isfinite(slo) or slo < 0:
                raise ValueError(f"latency_slo_ms must be a finite number > 0 (or 0: off), got {slo!r}")
            # 0 turns a target set in a model's config.toml off from a flag or the environment.
            object.__setattr__(self, "latency_slo_ms", float(slo) if slo else None)

        preferred = self.preferred_batch_sizes
        if isinstance(preferred, (str, bytes)) or not isinstance(preferred, Iterable):
            raise ValueError(f"preferred_batch_sizes must be a sequence of integers, got {preferred!r}")
        sizes = tuple(preferred)
        for size in sizes:
            _require_int("each of preferred_batch_sizes", size, minimum=1)
            if size > self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes holds {size}, larger than max_batch_size={self.max_batch_size}"
                )
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"preferred_batch_sizes must not repeat a size, got {sizes!r}")
        # Sorted once here so the scheduler can pick "largest that fits" without sorting per batch.
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(sizes)))

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_ms / 1000.0

    @property
    def latency_slo_s(self) -> float | None:
        return None if self.latency_slo_ms is None else self.latency_slo_ms / 1000.0


def _require_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; `max_batch_size = true` in TOML is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
