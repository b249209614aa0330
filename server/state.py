"""What the route handlers share: the configuration, the serving core, the metrics, the admission
bounds, and the lifecycle flags the shutdown sequence flips."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchserve.server.admission import AdmissionGate
from batchserve.server.config import ServerConfig
from batchserve.server.metrics import Metrics
from batchserve.serving.backend import Backend
from batchserve.serving.core import Serving
from batchserve.serving.errors import Draining
from batchserve.serving.gpu_requirement import GpuRequirement


@dataclass
class Lifecycle:
    started_at: float = field(default_factory=time.time)
    warm: bool = False          # models loaded and warmed up
    draining: bool = False      # SIGTERM seen: /readyz says 503 so load balancers move away
    refusing: bool = False      # drain delay over: new requests get 503 draining
    shutdown_deadline: float | None = None   # monotonic time by which the process must have exited
    exit_code: int = 0
    on_exit_request: Callable[[], None] | None = None

    def request_exit(self) -> None:
        """Asks the process to stop (set by the runner; a no-op when embedded, e.g. in tests)."""
        if self.on_exit_request is not None:
            self.exit_code = 1
            self.on_exit_request()

    def seconds_left(self, default: float) -> float:
        """Until the shutdown deadline (`default` when none is set, as when embedded)."""
        deadline = self.shutdown_deadline
        return default if deadline is None else max(0.1, deadline - time.monotonic())


@dataclass
class AppState:
    config: ServerConfig
    serving: Serving
    backend: Backend  # who classifies /v1 images: the serving core's classifier, or queue workers
    metrics: Metrics | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    admission: AdmissionGate = field(init=False)
    gpu: GpuRequirement = field(init=False)

    def __post_init__(self) -> None:
        self.admission = AdmissionGate.from_config(self.config.admission)
        self.gpu = GpuRequirement(self.config.readiness.require_gpu)

    @property
    def ready(self) -> bool:
        return (self.lifecycle.warm and not self.lifecycle.draining and self.serving.registry.ready
                and self.backend.ready and not self.gpu.unmet(self.serving.registry.loaded()))

    def refuse_if_draining(self) -> None:
        if self.lifecycle.refusing:
            raise Draining("the server is shutting down; retry on another instance", headers={"Retry-After": "1"})
