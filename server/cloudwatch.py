"""Queue depth as CloudWatch Embedded Metric Format (EMF) lines on stdout.

On AWS the container's output goes to CloudWatch Logs, which turns each EMF line into metric data
points, with no API call or credentials in the server. The Auto Scaling group's target-tracking
policy follows `Batchserve/QueueDepth{AutoScalingGroupName}` averaged over instances, so each
instance publishes ONE value under that dimension: its total queue depth over all models. Per-model
depths go under the (AutoScalingGroupName, Model) dimensions, which the scaling policy ignores.

The lines bypass the logging module on purpose: a JSON log formatter would wrap them in its own
object, and CloudWatch only recognises an EMF document that is the whole log event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from batchserve.server.state import AppState

log = logging.getLogger("batchserve.cloudwatch")

NAMESPACE = "Batchserve"
METRIC = "QueueDepth"
INTERVAL_S = 10.0
UNSET_GROUP = "unknown"


def _document(timestamp_ms: int, dimensions: list[str], values: dict[str, Any]) -> dict[str, Any]:
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions],
                "Metrics": [{"Name": METRIC, "Unit": "Count"}],
            }],
        },
        **values,
    }


def emf_documents(depths: Iterable[tuple[str, int]], asg_name: str, timestamp_ms: int) -> list[dict[str, Any]]:
    """(model, queued samples) pairs -> the instance total, then one document per model."""
    per_model: dict[str, int] = {}
    for model, depth in depths:
        per_model[model] = per_model.get(model, 0) + depth
    documents = [_document(timestamp_ms, ["AutoScalingGroupName"],
                           {"AutoScalingGroupName": asg_name, METRIC: sum(per_model.values())})]
    for model, depth in sorted(per_model.items()):
        documents.append(_document(timestamp_ms, ["AutoScalingGroupName", "Model"],
                                   {"AutoScalingGroupName": asg_name, "Model": model, METRIC: depth}))
    return documents


def _stdout_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class QueueDepthReporter:
    def __init__(
        self, state: AppState, emit: Callable[[str], None] = _stdout_line, interval_s: float = INTERVAL_S
    ) -> None:
        self.state = state
        self.emit = emit
        self.interval_s = interval_s
        self.asg_name = state.config.cloudwatch.asg_name or UNSET_GROUP

    def report_once(self) -> None:
        depths = [(m.name, m.batcher.stats.queue_depth) for m in self.state.serving.registry.loaded()]
        for document in emf_documents(depths, self.asg_name, int(time.time() * 1000)):
            self.emit(json.dumps(document, separators=(",", ":")))

    async def run(self) -> None:
        while True:
            try:
                self.report_once()
            except Exception:
                log.exception("writing CloudWatch embedded metrics failed")
            await asyncio.sleep(self.interval_s)


def emf_lifespan(state: AppState, emit: Callable[[str], None] = _stdout_line):
    """A Litestar lifespan hook that reports every INTERVAL_S while the app runs."""

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        if state.config.cloudwatch.asg_name is None:
            log.warning("cloudwatch_emf is on but asg_name is not set: reporting under %r", UNSET_GROUP)
        task = asyncio.create_task(QueueDepthReporter(state, emit).run(), name="cloudwatch-emf")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return lifespan
