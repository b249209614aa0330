"""Queue mode's configuration: where the queues and buckets are, and how a worker uses them.

Each field is documented once, in its `help`; the commands derive their flags and
`BATCHSERVE_<NAME>` environment twins from the fields (see batchserve.jobs.options): those of
`QueueSettings` for `batchserve queue`, those of `WorkerSettings` for `batchserve worker`. The
names of a deployment's resources all derive from one name (see `ResourceNames`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from batchserve.events.config import EventsConfig
from batchserve.serving.cache_config import CacheConfig
from batchserve.serving.config import ServingConfig
from batchserve.serving.drift_config import DriftConfig

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]

# SQS: a receive returns at most 10 messages and a long poll waits at most 20 s.
MAX_RECEIVE_MESSAGES = 10
MAX_WAIT_TIME_S = 20
# A message received this often without being deleted moves to the dead-letter queue.
MAX_RECEIVE_COUNT = 3
# SQS keeps a message between 60 s and 14 days; a dead-letter queue keeps its messages for the
# maximum, since a standard queue's message keeps its first enqueue time when it moves there.
MIN_RETENTION_S, MAX_RETENTION_S = 60, 14 * 24 * 3600
DEFAULT_REGION = "us-east-1"
# Small images travel inside their request message too (base64 in the JSON: a third larger). An
# SQS message holds 256 KiB, the other fields included; SQS bills each 64 KiB of a message as one
# request, so by default a message with its image (45 KiB, 60 KiB encoded) stays within one.
INLINE_CEILING_BYTES = 160 * 1024
INLINE_DEFAULT_BYTES = 45 * 1024
# Queue names: letters, digits, '-' and '_', at most 80 characters; the longest derived one is
# NAME-reply-<32 hex>, so NAME keeps room for it. Bucket names are stricter (lower case, dots).
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,37}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class QueueLocation:
    """Where one deployment's buckets and queues are: what every queue-mode process needs to find them."""

    queue_name: str | None = field(default=None, metadata=_help(
        "deployment name NAME: buckets NAME-input and NAME-output, queues NAME-requests (+ NAME-requests-dlq) and "
        "NAME-responses"))
    aws_endpoint_url: str | None = field(default=None, metadata=_help(
        "S3 and SQS endpoint (moto, LocalStack, MinIO/ElasticMQ); default: $AWS_ENDPOINT_URL, else AWS itself"))
    aws_region: str | None = field(default=None, metadata=_help(
        f"AWS region; default: $AWS_REGION, else $AWS_DEFAULT_REGION, else {DEFAULT_REGION}"))
    input_bucket: str | None = field(default=None, metadata=_help(
        "bucket the web tier stores uploads in (default NAME-input; bucket names are global)"))
    output_bucket: str | None = field(default=None, metadata=_help(
        "bucket results go to (default NAME-output)"))

    def __post_init__(self) -> None:
        if self.queue_name is not None and not _NAME.match(self.queue_name):
            raise ValueError(f"queue name must be 1-38 lower-case letters, digits or '-', not {self.queue_name!r}")
        for bucket in (self.input_bucket, self.output_bucket):
            if bucket is not None and not _BUCKET.match(bucket):
                raise ValueError(f"{bucket!r} is not a valid S3 bucket name")

    @property
    def names(self) -> ResourceNames:
        if self.queue_name is None:
            raise ValueError("no queue name: pass --queue-name NAME (or set BATCHSERVE_QUEUE_NAME)")
        return ResourceNames.of(self.queue_name, self.input_bucket, self.output_bucket)

    def endpoint_url(self, environ: Mapping[str, str] = os.environ) -> str | None:
        return self.aws_endpoint_url or environ.get("AWS_ENDPOINT_URL") or None

    def region(self, environ: Mapping[str, str] = os.environ) -> str:
        return self.aws_region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


@dataclass(frozen=True)
class QueueConfig(QueueLocation):
    """A deployment's location, and how its queues are set up and polled (by `queue up` and workers)."""

    visibility_timeout_s: int = field(default=30, metadata=_help(
        "seconds a received message stays hidden from other workers; a worker extends it while the image waits "
        "or runs, so this only bounds how soon a crashed worker's messages are delivered again"))
    wait_time_s: int = field(default=MAX_WAIT_TIME_S, metadata=_help(
        f"long-poll wait of one receive, 1..{MAX_WAIT_TIME_S} s"))
    receive_max_messages: int = field(default=MAX_RECEIVE_MESSAGES, metadata=_help(
        f"messages asked for by one receive, 1..{MAX_RECEIVE_MESSAGES}"))
    pollers: int = field(default=4, metadata=_help(
        "long polls a worker keeps in flight at once; their messages all feed the same batcher"))
    retention_s: int = field(default=4 * 24 * 3600, metadata=_help(
        f"how long the request and response queues keep a message ({MIN_RETENTION_S}..{MAX_RETENTION_S} s); "
        "the dead-letter queue keeps its messages for the maximum"))
    sync_results_days: int = field(default=1, metadata=_help(
        "days after which the output bucket's lifecycle rule expires synchronous results (prefix sync/)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        _within("visibility_timeout_s", self.visibility_timeout_s, 1, 12 * 3600)
        _within("wait_time_s", self.wait_time_s, 1, MAX_WAIT_TIME_S)
        _within("receive_max_messages", self.receive_max_messages, 1, MAX_RECEIVE_MESSAGES)
        _within("pollers", self.pollers, 1, 64)
        _within("retention_s", self.retention_s, MIN_RETENTION_S, MAX_RETENTION_S)
        _within("sync_results_days", self.sync_results_days, 1, 36500)


@dataclass(frozen=True)
class ResourceNames:
    """The buckets and queues of a deployment named `name`."""

    name: str
    input_bucket: str
    output_bucket: str

    @classmethod
    def of(cls, name: str, input_bucket: str | None = None, output_bucket: str | None = None) -> ResourceNames:
        return cls(name, input_bucket or f"{name}-input", output_bucket or f"{name}-output")

    @property
    def requests(self) -> str:
        return f"{self.name}-requests"

    @property
    def dead_letters(self) -> str:
        return f"{self.name}-requests-dlq"

    @property
    def responses(self) -> str:
        return f"{self.name}-responses"

    @property
    def reply_prefix(self) -> str:
        """Web instances answer synchronous requests through their own queue, NAME-reply-<id>."""
        return f"{self.name}-reply-"

    @property
    def queues(self) -> tuple[str, ...]:
        return (self.requests, self.dead_letters, self.responses)

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.input_bucket, self.output_bucket)


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker process holds and answers messages."""

    max_held: int = field(default=64, metadata=_help(
        "messages a worker holds at once (received, not answered yet): enough to fill the next batch while one "
        "runs; receiving stops while it is reached"))
    max_image_bytes: int = field(default=16 * 1024 * 1024, metadata=_help(
        "largest image object read from S3; a larger one is answered payload_too_large"))
    shutdown_grace_s: float = field(default=20.0, metadata=_help(
        "on SIGTERM, how long the worker may take to finish what it holds before handing the rest back"))
    log_level: LogLevel = field(default="info", metadata=_help("log level"))
    log_format: LogFormat = field(default="text", metadata=_help("text for people, json for log shippers"))
    scale_in_protection: bool = field(default=False, metadata=_help(
        "on an EC2 Auto Scaling instance: protect it from scale-in while this worker holds messages "
        "(autoscaling:SetInstanceProtection), and lift the protection after --scale-in-idle-s without one and at "
        "exit; a failed call is logged, never fatal"))
    scale_in_idle_s: float = field(default=30.0, metadata=_help(
        "seconds without a held message before the scale-in protection is lifted (short gaps keep it on)"))
    instance_id: str | None = field(default=None, metadata=_help(
        "with --scale-in-protection: this EC2 instance's id (default: from the instance metadata service)"))
    autoscaling_group: str | None = field(default=None, metadata=_help(
        "with --scale-in-protection: the instance's Auto Scaling group (default: its aws:autoscaling:groupName "
        "tag, from the instance metadata service when instance metadata tags are enabled)"))
    require_gpu: bool = field(default=False, metadata=_help(
        "stop at start (exit 1) when a model's ONNX Runtime session got neither CUDA nor TensorRT, instead of "
        "taking a GPU worker's share of the queue at CPU speed"))
    metrics_port: int | None = field(default=None, metadata=_help(
        "serve Prometheus metrics (batches, the batcher, drift, messages) on this port at /metrics, without auth; "
        "0 picks a free port"))
    metrics_host: str = field(default="0.0.0.0", metadata=_help(
        "interface of the metrics listener"))

    def __post_init__(self) -> None:
        _within("max_held", self.max_held, 1, 10_000)
        _within("max_image_bytes", self.max_image_bytes, 1, 1 << 31)
        if not 0 < self.shutdown_grace_s <= 3600:
            raise ValueError(f"shutdown_grace_s must be in (0, 3600], not {self.shutdown_grace_s}")
        if not 0 < self.scale_in_idle_s <= 3600:
            raise ValueError(f"scale_in_idle_s must be in (0, 3600], not {self.scale_in_idle_s}")
        if self.metrics_port is not None:
            _within("metrics_port", self.metrics_port, 0, 65535)


@dataclass(frozen=True)
class QueueSettings:
    """What `batchserve queue` commands read: the deployment's buckets and queues."""

    queue: QueueConfig


@dataclass(frozen=True)
class WorkerSettings:
    """What `batchserve worker` reads: the queues, how to hold their messages, the models, the events."""

    queue: QueueConfig
    worker: WorkerConfig
    serving: ServingConfig
    events: EventsConfig
    cache: CacheConfig = field(default_factory=CacheConfig)  # the worker keeps the result cache in queue mode
    drift: DriftConfig = field(default_factory=DriftConfig)  # watched when --metrics-port exports it


def _within(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, not {value!r}")
