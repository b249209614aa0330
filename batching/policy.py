"""When to dispatch, and how many samples: the scheduling decision, kept apart from the queue mechanics.

The scheduler asks only once an execution slot is free (as Triton's dynamic batcher does), so under load the
queue grows while the slots are busy and the next batch is larger without any timer.

With a free slot and ``available`` samples queued:

1. ``available >= max_batch_size``: dispatch a full batch.
2. Delay over (``max_queue_delay_ms`` is 0, the oldest queued request has waited that long, or the batcher is
   flushing on shutdown): dispatch the largest preferred size that ``available`` fills, or everything queued
   when there are no preferred sizes or none is filled.
3. Delay running, preferred sizes set and the largest of them filled: dispatch it at once; waiting longer could
   only reach a size the model does not prefer.
4. Otherwise wait for more work, at most until the oldest request's delay runs out.

With a latency target (``latency_slo_ms``) and a fitted batch cost, the hold of steps 2-4 is no longer
``max_queue_delay_ms`` but what the target leaves (slo.py): the delay is over once the oldest request's
predicted completion would pass the target, or at once where batching does not pay. Everything else stays.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from batchserve.batching.config import BatchingConfig
from batchserve.batching.slo import SloOutlook

__all__ = ["Decision", "decide"]


@dataclass(frozen=True, slots=True)
class Decision:
    """``size > 0``: dispatch that many samples now. ``size == 0``: wait ``wait_s`` seconds (or until woken)."""

    size: int
    wait_s: float = 0.0


def decide(
    config: BatchingConfig,
    available: int,
    oldest_wait_s: float,
    *,
    flush: bool = False,
    slo: SloOutlook | None = None,
) -> Decision:
    """Decide for ``available`` (> 0) queued samples whose oldest request has waited ``oldest_wait_s``.

    ``slo``: the latency target's outlook, when it decides the hold instead of ``max_queue_delay_ms``."""
    cap = config.max_batch_size
    if available >= cap:
        return Decision(cap)
    preferred = config.preferred_batch_sizes
    # The delay left: the static one, or what the latency target allows.
    remaining = config.max_queue_delay_s - oldest_wait_s if slo is None else slo.hold_s(available, oldest_wait_s)
    if flush or remaining <= 0.0:
        if preferred:
            index = bisect_right(preferred, available)
            if index:
                return Decision(preferred[index - 1])
        return Decision(available)
    if preferred and available >= preferred[-1]:
        return Decision(preferred[-1])
    return Decision(0, remaining)
