"""What the pages show, computed from the application state as plain typed values.

Templates stay free of logic beyond loops and conditionals: every number is formatted here,
where a unit test can check it without rendering HTML.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchserve.server.model_summary import model_summary
from batchserve.server.state import AppState


@dataclass(frozen=True)
class ModelCard:
    """One loaded model version as the home page lists it."""

    name: str
    version: int
    description: str
    providers: str
    classes: int
    max_batch_size: int
    max_queue_delay_ms: str
    preferred_batch_sizes: str
    max_queue_size: int
    max_inflight_batches: int
    requests_total: int     # batcher submissions: a multipart request of n images counts once
    batches_total: int
    mean_batch_size: str
    is_default: bool


@dataclass(frozen=True)
class ServiceStatus:
    """Readiness and age of the process, for the home and about pages."""

    ready: bool
    state: str          # "ready" | "loading models" | "draining"
    version: str
    started_at_iso: str
    uptime: str


def format_ms(value: float) -> str:
    """Batching delays are often fractions of a millisecond; show what matters, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} ms"


def format_uptime(seconds: float) -> str:
    """Two most significant units: '45 s', '3 min 12 s', '5 h 2 min', '3 d 4 h'."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    shown = parts[:2]
    if len(shown) == 2 and shown[1][0] == 0:
        shown = shown[:1]
    return " ".join(f"{n} {unit}" for n, unit in shown)


def model_card(summary: dict[str, Any], default_name: str | None) -> ModelCard:
    batching = summary["batching"]
    stats = summary["stats"]
    preferred = batching["preferred_batch_sizes"]
    return ModelCard(
        name=summary["name"],
        version=summary["version"],
        description=summary["description"],
        providers=", ".join(summary["execution_providers"]) or "none",
        classes=summary["classes"],
        max_batch_size=batching["max_batch_size"],
        max_queue_delay_ms=format_ms(batching["max_queue_delay_ms"]),
        preferred_batch_sizes=", ".join(str(n) for n in preferred) if preferred else "any",
        max_queue_size=batching["max_queue_size"],
        max_inflight_batches=batching["max_inflight_batches"],
        requests_total=stats["requests_total"],
        batches_total=stats["batches_total"],
        mean_batch_size=f"{stats['mean_batch_size']:.2f}" if stats["batches_total"] else "–",
        is_default=summary["name"] == default_name,
    )


def model_cards(state: AppState) -> list[ModelCard]:
    default_name = state.serving.registry.default_name()
    return [model_card(model_summary(m), default_name) for m in state.serving.registry.loaded()]


def service_status(state: AppState, version: str, now: float | None = None) -> ServiceStatus:
    life = state.lifecycle
    if life.draining:
        label = "draining"
    elif state.ready:
        label = "ready"
    elif life.warm and state.gpu.unmet(state.serving.registry.loaded()):
        label = "no GPU (--require-gpu)"
    else:
        label = "loading models"
    started = datetime.fromtimestamp(life.started_at, UTC)
    return ServiceStatus(
        ready=state.ready,
        state=label,
        version=version,
        started_at_iso=started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        uptime=format_uptime((time.time() if now is None else now) - life.started_at),
    )
