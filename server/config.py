"""The server's one configuration object.

Each field is documented once, here; `batchserve serve --help` and the env names are derived from
it, so a flag, its `BATCHSERVE_<NAME>` variable and the field can never drift apart.
Precedence: CLI flag > environment > model config.toml > built-in default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from batchserve.model_repo.repository import DEFAULT_REPOSITORY

ENV_PREFIX = "BATCHSERVE_"

# Batching and runtime knobs that a model's config.toml sets and the server may override,
# globally (flag / BATCHSERVE_<KNOB>) or per model (BATCHSERVE_MODEL_<MODEL>_<KNOB>).
MODEL_KNOBS = (
    "max_batch_size",
    "max_queue_delay_ms",
    "preferred_batch_sizes",
    "max_queue_size",
    "max_inflight_batches",
    "default_timeout_ms",
    "max_timeout_ms",
    "intra_op_threads",
)


def _opt(help: str, **extra: Any) -> dict[str, Any]:
    return {"help": help, **extra}


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata=_opt("interface to listen on"))
    port: int = field(default=8000, metadata=_opt("TCP port; $PORT is used when neither flag nor env sets it"))
    model_repo: Path = field(default=DEFAULT_REPOSITORY, metadata=_opt("model repository directory"))
    models: tuple[str, ...] = field(default=(), metadata=_opt("models to load (default: every built model)"))
    default_model: str | None = field(default=None, metadata=_opt("model used when a request names none"))
    simulate_model: str | None = field(
        default=None,
        metadata=_opt("serve a simulated accelerator named 'simulated': 'A+B' = a batch of n costs A + B*n ms"),
    )
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata=_opt("largest request body accepted"))
    max_images_per_request: int = field(default=64, metadata=_opt("most files in one multipart request"))
    preprocess_threads: int = field(default=0, metadata=_opt("image decode threads (0: one per core)"))
    execution_providers: tuple[str, ...] = field(
        default=(), metadata=_opt("ONNX Runtime providers, overriding each model's list")
    )
    trt_engine_cache_path: str | None = field(
        default=None, metadata=_opt("where TensorRT keeps built engines (they take minutes to build)")
    )
    # Model knob overrides; None = the model's config.toml decides.
    max_batch_size: int | None = field(default=None, metadata=_opt("samples per batch", knob=True))
    max_queue_delay_ms: float | None = field(
        default=None, metadata=_opt("wait this long for a fuller batch once a slot is free", knob=True)
    )
    preferred_batch_sizes: tuple[int, ...] | None = field(
        default=None, metadata=_opt("batch sizes to prefer, e.g. 8,16,32", knob=True)
    )
    max_queue_size: int | None = field(default=None, metadata=_opt("samples waiting before 503", knob=True))
    max_inflight_batches: int | None = field(default=None, metadata=_opt("concurrent batches per model", knob=True))
    default_timeout_ms: float | None = field(
        default=None, metadata=_opt("deadline for requests that set none (0: none)", knob=True)
    )
    max_timeout_ms: float | None = field(default=None, metadata=_opt("cap on a client's timeout_ms", knob=True))
    intra_op_threads: int | None = field(default=None, metadata=_opt("ONNX Runtime intra-op threads", knob=True))
    # Events
    database_url: str | None = field(default=None, metadata=_opt("PostgreSQL URL for events (default: SQLite)"))
    events_path: Path = field(default=Path("batchserve-events.sqlite3"), metadata=_opt("SQLite event store"))
    journal_dir: Path = field(default=Path("batchserve-journal"), metadata=_opt("spill journal for events"))
    events: bool = field(default=True, metadata=_opt("record an event per classification"))
    events_pii: str = field(
        default="truncated", metadata=_opt("client IP / user agent: full | truncated | off", choices=("full", "truncated", "off"))
    )
    events_flush_interval_ms: int = field(default=200, metadata=_opt("event writer flush period"))
    # Lifecycle
    drain_delay: float = field(default=1.0, metadata=_opt("seconds to keep serving after SIGTERM while /readyz says 503"))
    shutdown_grace: float = field(default=8.0, metadata=_opt("seconds from SIGTERM to exit, all included"))
    model_control: str = field(
        default="none", metadata=_opt("'explicit' enables the load/unload routes", choices=("none", "explicit"))
    )
    admin_key: str | None = field(default=None, metadata=_opt("X-Admin-Key required by model control routes"))
    # Observability
    log_level: str = field(default="info", metadata=_opt("debug | info | warning | error"))
    log_format: str = field(default="text", metadata=_opt("text | json", choices=("text", "json")))
    access_log: bool = field(default=False, metadata=_opt("log one line per request"))
    cloudwatch_emf: bool = field(default=False, metadata=_opt("log queue depth as CloudWatch embedded metrics"))
    asg_name: str | None = field(default=None, metadata=_opt("AutoScalingGroupName dimension for embedded metrics"))
    # Which model knobs came from the command line: they beat per-model env variables too.
    cli_knobs: tuple[str, ...] = field(default=(), metadata={"internal": True})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if self.shutdown_grace <= 0 or self.drain_delay < 0:
            raise ValueError("shutdown_grace must be > 0 and drain_delay >= 0")
        if self.drain_delay >= self.shutdown_grace:
            raise ValueError("drain_delay must be shorter than shutdown_grace")
        if self.max_body_bytes < 1 or self.max_images_per_request < 1:
            raise ValueError("max_body_bytes and max_images_per_request must be >= 1")

    def model_knobs(self, model: str, from_toml: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
        """One model's knobs: config.toml < global env < BATCHSERVE_MODEL_<MODEL>_<KNOB> < CLI flag."""
        merged = dict(from_toml)
        for knob in MODEL_KNOBS:
            if getattr(self, knob) is not None and knob not in self.cli_knobs:
                merged[knob] = getattr(self, knob)
        merged.update(per_model_env(model, environ))
        merged.update({k: getattr(self, k) for k in self.cli_knobs})
        return merged


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _base_type(tp: Any) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) is not None and len(args) == 1 and get_origin(tp) is not tuple else tp


def parse_value(tp: Any, raw: str) -> Any:
    """Turn a flag or env string into the field's type."""
    tp = _base_type(tp)
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        return tuple(parse_value(item, part.strip()) for part in raw.split(",") if part.strip())
    if tp is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {raw!r}")
    if tp in (int, float, Path, str):
        return tp(raw)
    raise TypeError(f"unsupported config type {tp!r}")


def field_types() -> dict[str, Any]:
    return get_type_hints(ServerConfig)


def from_sources(cli: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> ServerConfig:
    """Build the config: CLI values (already typed; None = not given) beat env, env beats defaults."""
    types = field_types()
    values: dict[str, Any] = {}
    for f in fields(ServerConfig):
        if f.metadata.get("internal"):
            continue
        given = cli.get(f.name)
        if given is not None:
            values[f.name] = given
            continue
        raw = environ.get(env_name(f.name))
        if raw is not None and raw != "":
            try:
                values[f.name] = parse_value(types[f.name], raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{env_name(f.name)}={raw!r}: {exc}") from None
    values["cli_knobs"] = tuple(k for k in MODEL_KNOBS if cli.get(k) is not None)
    if "port" not in values and environ.get("PORT"):
        values["port"] = int(environ["PORT"])  # Cloud Run tells the container its port this way
    return ServerConfig(**values)


def per_model_env(model: str, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """`BATCHSERVE_MODEL_<MODEL>_<KNOB>` overrides for one model, typed."""
    types = field_types()
    prefix = f"{ENV_PREFIX}MODEL_{model.upper()}_"
    found: dict[str, Any] = {}
    for knob in MODEL_KNOBS:
        raw = environ.get(prefix + knob.upper())
        if raw:
            try:
                found[knob] = parse_value(types[knob], raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{prefix + knob.upper()}={raw!r}: {exc}") from None
    return found


def default_of(name: str) -> Any:
    f = next(f for f in fields(ServerConfig) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
