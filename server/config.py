"""The server's configuration: one typed object per concern, composed.

Each field is documented once, in its `help`; `batchserve serve`'s flags and their
`BATCHSERVE_<NAME>` environment twins are derived from the fields (batchserve.server.options),
so a flag, its variable and the field can never drift apart. A field's option name is the field
name unless its metadata gives a `flag` (the events fields keep the names users know).
Precedence: CLI flag > environment > model config.toml > built-in default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from batchserve.events.config import EventsConfig
from batchserve.jobs.config import INLINE_CEILING_BYTES, INLINE_DEFAULT_BYTES, QueueLocation
from batchserve.server.remote.urls import upstream_urls
from batchserve.serving.backend import BackendName
from batchserve.serving.cache_config import CacheConfig
from batchserve.serving.config import ServingConfig
from batchserve.serving.drift_config import DriftConfig
from batchserve.serving.pressure import MAX_PENDING_DECODES

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]
ModelControl = Literal["none", "explicit"]
AuthMode = Literal["off", "required"]


@dataclass(frozen=True)
class ListenConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port; $PORT is used when neither flag nor env sets it"})
    metrics_port: int | None = field(
        default=None,
        metadata={"help": "second listener serving /metrics alone, without auth, for a private network's scrapers"},
    )
    ssl_certfile: Path | None = field(
        default=None, metadata={"help": "PEM certificate (chain): serve HTTPS instead of HTTP (with --ssl-keyfile)"}
    )
    ssl_keyfile: Path | None = field(default=None, metadata={"help": "PEM private key of --ssl-certfile"})

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be 0..65535, not {value}")
        if self.metrics_port is not None and self.metrics_port != 0 and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: give both or neither")


@dataclass(frozen=True)
class LimitsConfig:
    """What one request may carry."""

    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "largest request body accepted"})
    max_images_per_request: int = field(default=64, metadata={"help": "most files in one multipart request"})

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_images_per_request < 1:
            raise ValueError("max_body_bytes and max_images_per_request must be >= 1")


# Bounds of --max-header-bytes: below 1 KiB a browser's ordinary request (cookies and all) may not
# fit; past 1 MiB per connection the bound no longer protects memory.
MIN_HEADER_BYTES = 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_HEADER_READ_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class AdmissionConfig:
    """What the server takes on at once; past it a request is refused (503 `overloaded`) before its
    body is read or decoded, so overload costs almost nothing."""

    max_concurrent_requests: int = field(
        default=64, metadata={"help": "classify/infer requests admitted at once; more get 503 overloaded"}
    )
    max_pending_decodes: int = field(
        default=MAX_PENDING_DECODES, metadata={"help": "images waiting for a decode thread; more get 503 overloaded"}
    )
    body_read_timeout_s: float = field(
        default=30.0, metadata={"help": "seconds a client may take to send its whole body (408 past it)"}
    )
    refusal_ratio: float = field(
        default=4.0, metadata={"help": "refusals answered at once per admitted request completed; past it "
                                       "(clients retrying at once) each refusal waits its turn"}
    )
    max_connections: int = field(
        default=4096, metadata={"help": "open connections at most; past it new ones get a bare 503"}
    )
    early_refusal: bool = field(default=True, metadata={
        "help": "answer overload refusals of classification requests without a key in the HTTP protocol, before "
                "the app runs (the same answers, events and metrics, at a fraction of the CPU)"})
    max_header_bytes: int = field(default=64 * 1024, metadata={
        "help": f"largest request head in bytes: the request line and all headers of one request; past it the "
                f"answer is 431 headers_too_large and the connection closes ({MIN_HEADER_BYTES}..{MAX_HEADER_BYTES})"})
    header_read_timeout_s: float = field(default=10.0, metadata={
        "help": "seconds a client may take to send a request's head (request line and headers), from its first "
                "byte (for a connection's first request, from the connection's opening); past it the answer is "
                f"408 request_timeout and the connection closes (0 < s <= {MAX_HEADER_READ_TIMEOUT_S:g})"})

    def __post_init__(self) -> None:
        if min(self.max_concurrent_requests, self.max_pending_decodes, self.max_connections) < 1:
            raise ValueError("max_concurrent_requests, max_pending_decodes and max_connections must be >= 1")
        if not self.body_read_timeout_s > 0 or not self.refusal_ratio > 0:
            raise ValueError("body_read_timeout_s and refusal_ratio must be > 0")
        if not MIN_HEADER_BYTES <= self.max_header_bytes <= MAX_HEADER_BYTES:
            raise ValueError(f"max_header_bytes must be in {MIN_HEADER_BYTES}..{MAX_HEADER_BYTES}, "
                             f"not {self.max_header_bytes}")
        if not 0 < self.header_read_timeout_s <= MAX_HEADER_READ_TIMEOUT_S:
            raise ValueError(f"header_read_timeout_s must be in (0, {MAX_HEADER_READ_TIMEOUT_S:g}], "
                             f"not {self.header_read_timeout_s:g}")


@dataclass(frozen=True)
class AuthConfig:
    """Who may call what (see server/auth): API keys with scopes, and per-key rate limits."""

    auth: AuthMode = field(
        default="off", metadata={"help": "'required' closes every API route to callers without a key"}
    )
    redis_url: str | None = field(
        default=None, metadata={"help": "Redis shared by replicas for rate limits (per process without it)"}
    )
    admin_key: str | None = field(default=None, metadata={
        "help": "bootstrap API key with every scope (also read from X-Admin-Key); --model-control explicit needs it"})
    key_refresh_s: float = field(
        default=5.0, metadata={"help": "seconds between reads of the key table: a revoked key stops working within it"}
    )
    redis_timeout_s: float = field(
        default=0.25, metadata={"help": "bound on one Redis call of the rate limiter; past it this process decides"}
    )

    def __post_init__(self) -> None:
        if self.admin_key is not None and not self.admin_key.strip():
            raise ValueError("admin_key must not be empty")
        if not self.key_refresh_s > 0 or not self.redis_timeout_s > 0:
            raise ValueError("key_refresh_s and redis_timeout_s must be > 0")


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
class ReadinessConfig:
    """What /readyz asks for besides warm models and a server that is not draining."""

    require_gpu: bool = field(default=False, metadata={
        "help": "/readyz answers 503 gpu_unavailable while a model runs on CPU only (its ONNX Runtime session got "
                "neither CUDA nor TensorRT), instead of serving a GPU deployment's traffic at CPU speed"})


@dataclass(frozen=True)
class ModelControlConfig:
    """Triton's explicit model control: the repository routes that load and unload models."""

    model_control: ModelControl = field(
        default="none", metadata={"help": "'explicit' enables the load/unload routes (needs --admin-key)"}
    )


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
class BackendConfig:
    """Who classifies: this process, queue workers behind S3 and SQS (docs/queue-mode.md), or other
    batchserve servers over HTTP (docs/remote-backend.md)."""

    backend: BackendName = field(default="direct", metadata={
        "help": "'direct' classifies in this process; 'queue' is a web tier: images go to workers through "
                "S3 + SQS (with --queue-name), and /v1/jobs takes bulk work; 'remote' is a web tier forwarding "
                "to other batchserve servers (with --upstream)"})
    queue_timeout_ms: float = field(default=30000.0, metadata={
        "help": "queue backend: longest wait for a worker's answer (a request's own shorter deadline wins); "
                "past it the answer is 504 deadline_exceeded"})
    allowed_buckets: tuple[str, ...] = field(default=(), metadata={
        "help": "queue backend: buckets a job may name in s3:// inputs (none: only uploads)"})
    reply_pollers: int = field(default=2, metadata={
        "help": "queue backend: long polls kept on this instance's reply queue"})
    queue_inline_max_bytes: int = field(default=INLINE_DEFAULT_BYTES, metadata={
        "help": "queue backend: an image up to this size travels inside its request message as well as to the "
                "input bucket, so the worker reads no object (one S3 call less per image); the default keeps such "
                f"a message within one 64 KiB SQS billing unit; 0: never; at most {INLINE_CEILING_BYTES}"})
    upstream: tuple[str, ...] = field(default=(), metadata={
        "help": "remote backend: base URLs of the batchserve servers that classify, e.g. "
                "http://10.0.0.5:8000,http://10.0.0.6:8000"})
    upstream_api_key: str | None = field(default=None, metadata={
        "help": "remote backend: API key sent to every upstream as 'Authorization: Bearer KEY' (for upstreams "
                "run with --auth required; it needs the classify scope)"})
    upstream_check_interval_s: float = field(default=1.0, metadata={
        "help": "remote backend: seconds between /readyz checks of an upstream that needs one: out of rotation "
                "(until it passes and returns), its circuit not closed, or sent requests since its last check; "
                "an idle web tier checks none (the first request finds a dead upstream)"})
    upstream_connect_timeout_s: float = field(default=1.0, metadata={
        "help": "remote backend: longest wait for a connection to an upstream; past it the request is tried "
                "on another"})
    upstream_timeout_ms: float = field(default=60000.0, metadata={
        "help": "remote backend: longest wait for an upstream's answer to a request that sets no deadline "
                "(past it: 504 deadline_exceeded)"})
    upstream_retries: int = field(default=2, metadata={
        "help": "remote backend: further tries of a request, each on another upstream when there is one, "
                "after a connection failure or a 503/429 refusal"})
    upstream_failure_threshold: int = field(default=3, metadata={
        "help": "remote backend: consecutive connection failures that open an upstream's circuit: it gets no "
                "requests until a probe or its /readyz passes"})
    upstream_connections: int = field(default=64, metadata={
        "help": "remote backend: most connections kept open to each upstream (they are reused: keep-alive)"})

    def __post_init__(self) -> None:
        if not 0 < self.queue_timeout_ms <= 15 * 60 * 1000:
            raise ValueError(f"queue_timeout_ms must be in (0, 900000], not {self.queue_timeout_ms:g}")
        if not 1 <= self.reply_pollers <= 16:
            raise ValueError(f"reply_pollers must be in 1..16, not {self.reply_pollers}")
        if not 0 <= self.queue_inline_max_bytes <= INLINE_CEILING_BYTES:
            raise ValueError(f"queue_inline_max_bytes must be in 0..{INLINE_CEILING_BYTES}, "
                             f"not {self.queue_inline_max_bytes}")
        object.__setattr__(self, "upstream", upstream_urls(tuple(self.upstream)))
        if self.upstream_api_key is not None and (not self.upstream_api_key.strip()
                                                  or any(c in self.upstream_api_key for c in "\r\n")):
            raise ValueError("upstream_api_key must not be empty or hold line breaks")
        if not 0 < self.upstream_check_interval_s <= 60 or not 0 < self.upstream_connect_timeout_s <= 60:
            raise ValueError("upstream_check_interval_s and upstream_connect_timeout_s must be in (0, 60]")
        if not 0 < self.upstream_timeout_ms <= 15 * 60 * 1000:
            raise ValueError(f"upstream_timeout_ms must be in (0, 900000], not {self.upstream_timeout_ms:g}")
        if not 0 <= self.upstream_retries <= 8:
            raise ValueError(f"upstream_retries must be in 0..8, not {self.upstream_retries}")
        if not 1 <= self.upstream_failure_threshold <= 100 or not 1 <= self.upstream_connections <= 4096:
            raise ValueError("upstream_failure_threshold must be in 1..100 and upstream_connections in 1..4096")
        if self.backend == "remote" and not self.upstream:
            raise ValueError("--backend remote needs the servers to forward to: --upstream URL[,URL...] "
                             "(or BATCHSERVE_UPSTREAM)")
        if self.upstream and self.backend != "remote":
            raise ValueError("--upstream is for --backend remote (this server's backend is "
                             f"{self.backend!r})")


@dataclass(frozen=True)
class ServerConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    queue: QueueLocation = field(default_factory=QueueLocation)
    serving: ServingConfig = field(default_factory=ServingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    control: ModelControlConfig = field(default_factory=ModelControlConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cloudwatch: CloudWatchConfig = field(default_factory=CloudWatchConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)

    def __post_init__(self) -> None:
        if self.backend.backend == "queue" and self.queue.queue_name is None:
            raise ValueError("--backend queue needs the deployment's name: --queue-name NAME "
                             "(or BATCHSERVE_QUEUE_NAME)")
        if self.backend.backend == "remote":
            if self.serving.simulate_model is not None:
                raise ValueError("--simulate-model serves a model in this process; with --backend remote the "
                                 "upstreams serve the models (start them with --simulate-model)")
            if self.control.model_control == "explicit":
                raise ValueError("--model-control explicit loads models in this process; with --backend remote "
                                 "models load on the upstreams (run them with --model-control explicit)")
        if self.readiness.require_gpu and self.backend.backend != "direct":
            raise ValueError(f"--require-gpu checks the models this process runs; with --backend "
                             f"{self.backend.backend} they run elsewhere (give the flag to the servers that run them)")
        if self.control.model_control == "explicit" and self.auth.admin_key is None:
            raise ValueError("--model-control explicit needs an admin key (--admin-key or BATCHSERVE_ADMIN_KEY): "
                             "loading and unloading models is never open to anyone who can reach the port")
