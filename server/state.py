"""What the route handlers share: config, loaded models, the classifier, the event recorder,
and the lifecycle flags the shutdown sequence flips."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchserve.server.config import ServerConfig
from batchserve.server.errors import Draining
from batchserve.server.inference import Classifier
from batchserve.server.recording import Recorder
from batchserve.server.registry import ModelRegistry


@dataclass
class Lifecycle:
    started_at: float = field(default_factory=time.time)
    warm: bool = False          # models loaded and warmed up
    draining: bool = False      # SIGTERM seen: /readyz says 503 so load balancers move away
    refusing: bool = False      # drain delay over: new requests get 503 draining
    shutdown_deadline: float | None = None   # monotonic time by which the process must have exited
    exit_code: int = 0

    def request_exit(self) -> None:
        """Asks the process to stop (set by the runner; a no-op when embedded, e.g. in tests)."""
        if self.on_exit_request is not None:
            self.exit_code = 1
            self.on_exit_request()

    on_exit_request: Callable[[], None] | None = None


@dataclass
class AppState:
    config: ServerConfig
    registry: ModelRegistry
    classifier: Classifier
    recorder: Recorder
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    writer: object | None = None       # events.writer.EventWriter when events are on
    metrics: object | None = None      # server.metrics.Metrics

    @property
    def ready(self) -> bool:
        return self.lifecycle.warm and not self.lifecycle.draining and self.registry.ready

    def refuse_if_draining(self) -> None:
        if self.lifecycle.refusing:
            raise Draining("the server is shutting down; retry on another instance", headers={"Retry-After": "1"})
