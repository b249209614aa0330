"""The dynamic batcher's one configuration object.

Knob names are the same everywhere (CLI flags, ``BATCHSERVE_MODEL_<MODEL>_<KNOB>`` environment variables,
a model's ``config.toml``); :meth:`BatchingConfig.from_mapping` turns such a mapping into a validated config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchingConfig"]


@dataclass(frozen=True)
class BatchingConfig:
    """How one :class:`~batching.batcher.Batcher` forms batches.

    Every field is validated when the object is built; a bad value raises :class:`ValueError` naming the
    knob, the value and what is allowed.
    """

    max_batch_size: int = 32
    """Most samples (not requests) in one call of the batch function. Larger requests are split."""

    max_queue_delay_ms: float = 0.0
    """Once an execution slot is free, how long the oldest queued request may wait for the batch to fill.
    0 dispatches at once: a lone request on an idle model gets no added latency."""

    preferred_batch_sizes: tuple[int, ...] = field(default=())
    """Batch sizes the model runs best at. While the delay runs, a batch is dispatched as soon as the largest
    preferred size is reached; when it has run out, the largest preferred size that the queue can fill is
    dispatched (or everything queued, when it fills none). Stored sorted ascending."""

    max_queue_size: int = 256
    """Most samples waiting for dispatch; a request that would pass it is rejected with ``QueueFull``."""

    max_inflight_batches: int = 2
    """Execution slots: batches that may run at the same time. Batches only form when a slot is free, so
    under load requests pile up while the slots are busy and the next batch is larger."""

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

    @classmethod
    def knobs(cls) -> tuple[str, ...]:
        """The knob names this config owns, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, base: BatchingConfig | None = None) -> BatchingConfig:
        """Build a config from knob values, e.g. parsed TOML or environment strings, over ``base``.

        Strings are parsed (``"32"``, ``"2.5"``, ``"8,16"`` for preferred sizes) because environment variables
        carry nothing else. Unknown keys are an error: a misspelt knob silently ignored is worse than a refusal.
        """
        known = cls.knobs()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown batching setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        parsed: dict[str, Any] = {}
        for name, raw in values.items():
            parsed[name] = _parse(name, raw)
        return dataclasses.replace(base or cls(), **parsed)


def _require_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; `max_batch_size = true` in TOML is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _parse(name: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if name == "preferred_batch_sizes":
            return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
        if name == "max_queue_delay_ms":
            return float(text)
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: cannot parse {raw!r}") from None
