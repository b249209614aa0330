"""The server's configuration: one typed object per concern, composed.

Each field is documented once, in its `help`; `batchserve serve`'s flags and their
`BATCHSERVE_<NAME>` environment twins are derived from the fields (batchserve.server.options),
so a flag, its variable and the field can never drift apart. A field's option name is the field
name unless its metadata gives a `flag` (the events fields keep the names users know).
Precedence: CLI flag > environment > model config.toml > built-in default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from batchserve.events.config import EventsConfig
from batchserve.serving.config import ServingConfig

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]
ModelControl = Literal["none", "explicit"]


@dataclass(frozen=True)
class ListenConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port; $PORT is used when neither flag nor env sets it"})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")


@dataclass(frozen=True)
class LimitsConfig:
    """What one request may carry."""

    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "largest request body accepted"})
    max_images_per_request: int = field(default=64, metadata={"help": "most files in one multipart request"})

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_images_per_request < 1:
            raise ValueError("max_body_bytes and max_images_per_request must be >= 1")


@dataclass(frozen=True)
class LifecycleConfig:
    """The shutdown sequence's timing (see server/lifecycle.py)."""

    drain_delay: float = field(
        default=1.0, metadata={"help": "seconds to keep serving after SIGTERM while /readyz says 503"}
    )
    shutdown_grace: float = field(default=8.0, metadata={"help": "seconds from SIGTERM to exit, all included"})

    def __post_init__(self) -> None:
        if self.shutdown_grace <= 0 or self.drain_delay < 0:
            raise ValueError("shutdown_grace must be > 0 and drain_delay >= 0")
        if self.drain_delay >= self.shutdown_grace:
            raise ValueError("drain_delay must be shorter than shutdown_grace")


@dataclass(frozen=True)
class ModelControlConfig:
    """Triton's explicit model control: the repository routes that load and unload models."""

    model_control: ModelControl = field(
        default="none", metadata={"help": "'explicit' enables the load/unload routes"}
    )
    admin_key: str | None = field(default=None, metadata={"help": "X-Admin-Key required by model control routes"})


@dataclass(frozen=True)
class LoggingConfig:
    log_level: LogLevel = field(default="info", metadata={"help": "least severe level logged"})
    log_format: LogFormat = field(default="text", metadata={"help": "text for people, json for log shippers"})
    access_log: bool = field(default=False, metadata={"help": "log one line per request"})


@dataclass(frozen=True)
class CloudWatchConfig:
    cloudwatch_emf: bool = field(default=False, metadata={"help": "log queue depth as CloudWatch embedded metrics"})
    asg_name: str | None = field(
        default=None, metadata={"help": "AutoScalingGroupName dimension for embedded metrics"}
    )


@dataclass(frozen=True)
class ServerConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    control: ModelControlConfig = field(default_factory=ModelControlConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cloudwatch: CloudWatchConfig = field(default_factory=CloudWatchConfig)
