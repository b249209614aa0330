"""The web tier's models: what its upstreams serve, as their /v1/models answers say.

The routes read models from the serving core's registry (names, versions, top_k bounds, deadline
limits, model_not_found), so the web tier's registry is a catalog built from the upstreams'
listings: the models of the upstreams in rotation or, while none is, the last ones known (so
requests then answer 503 upstream_unavailable, not 404). Nothing loads here: each version's
batcher only keeps LoadedModel's shape. Labels stay upstream too: every prediction arrives with its
label, and the web tier ranks nothing itself, so it knows only how many classes there are.
`--models` narrows the catalog (readiness waits for those); `--default-model` wins over the
upstreams' default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchserve.batching import Batcher, BatchingConfig
from batchserve.model_repo.preprocess import PreprocessConfig
from batchserve.server.remote.errors import UpstreamUnavailable
from batchserve.server.remote.listing import ModelEntry
from batchserve.server.remote.upstreams import Upstream, UpstreamPool
from batchserve.serving.config import ServingConfig
from batchserve.serving.errors import retry_after
from batchserve.serving.knobs import RequestLimits
from batchserve.serving.registry import LoadedModel, ModelRegistry

SUMMED_STATS = ("queue_depth", "inflight_batches", "requests_total", "batches_total", "rejected_total",
                "expired_total")


@dataclass
class ForwardedModel(LoadedModel):
    """A version the upstreams serve; `listings` are their /v1/models entries for it."""

    listings: dict[Upstream, ModelEntry] = field(default_factory=dict)  # in --upstream order

    def available(self) -> bool:
        """Whether an upstream that serves it can take a request now."""
        return any(u.available() for u in self.listings)

    def forwarded_summary(self) -> dict[str, Any]:
        """What /v1/models says of a forwarded version: the first upstream's entry as it wrote it, with
        the stats of all that serve it summed (as of their last listing), and `upstreams`: who serves
        it and whether each takes requests now."""
        entries = list(self.listings.values())
        summary = dict(entries[0].raw)
        histogram: dict[str, int] = {}
        for entry in entries:
            for size, count in dict(entry.stats.get("batch_size_histogram") or {}).items():
                if str(size).isdigit() and isinstance(count, int):
                    histogram[str(size)] = histogram.get(str(size), 0) + count
        stats = dict(entries[0].stats)
        stats.update({name: sum(_count(e.stats.get(name)) for e in entries) for name in SUMMED_STATS})
        batches = sum(histogram.values())
        stats["mean_batch_size"] = (sum(int(size) * count for size, count in histogram.items()) / batches
                                    if batches else 0.0)
        stats["batch_size_histogram"] = dict(sorted(histogram.items(), key=lambda item: int(item[0])))
        summary.update(stats=stats, upstreams=[{"url": u.url, "ready": u.available()} for u in self.listings])
        return summary


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


async def _runs_upstream(samples: list[np.ndarray]) -> list[np.ndarray]:
    raise RuntimeError("a forwarded model runs on the upstreams, never in the web tier")


def forwarded_model(entry: ModelEntry, listings: dict[Upstream, ModelEntry]) -> ForwardedModel:
    """Raises ValueError for settings no batchserve server would list."""
    b = entry.batching
    batching = BatchingConfig(max_batch_size=b.max_batch_size, max_queue_delay_ms=b.max_queue_delay_ms,
                              preferred_batch_sizes=tuple(b.preferred_batch_sizes), max_queue_size=b.max_queue_size,
                              max_inflight_batches=b.max_inflight_batches)
    return ForwardedModel(
        name=entry.name, version=entry.version, description=entry.description,
        labels=[""] * entry.classes,  # see the module docstring: only their number is used here
        preprocess=PreprocessConfig(), batching=batching,
        limits=RequestLimits(b.default_timeout_ms, b.max_timeout_ms),
        batcher=Batcher(_runs_upstream, batching, name=f"{entry.name}:{entry.version}"),
        providers=list(entry.execution_providers),
        input_name=entry.input.name if entry.input else "input",
        input_shape=tuple(entry.input.shape[1:]) if entry.input else (3, 224, 224),
        output_name=entry.output.name if entry.output else "logits",
        loaded_at=entry.loaded_at, listings=listings,
    )


def _same_model(model: LoadedModel, entry: ModelEntry) -> bool:
    """Whether `model` still stands for `entry` (only stats moved), so it is kept, leases and all."""
    b = entry.batching
    return (model.description == entry.description and model.classes == entry.classes
            and model.loaded_at == entry.loaded_at and model.providers == entry.execution_providers
            and model.limits == RequestLimits(b.default_timeout_ms, b.max_timeout_ms)
            and model.batching.max_batch_size == b.max_batch_size)


class UpstreamCatalog(ModelRegistry):
    """The registry of `--backend remote`: see the module docstring."""

    def __init__(self, config: ServingConfig, pool: UpstreamPool, *, retire_grace_s: float) -> None:
        super().__init__(config, retire_grace_s=retire_grace_s, catalog_only=True)
        self.pool = pool
        self.listed = False  # some upstream's models are known
        self._upstream_default: str | None = None

    async def load_configured(self) -> None:
        self.expected = list(self.config.models)

    def refresh(self) -> None:
        """Rebuild from the upstreams' latest listings (called whenever a check changed them or the
        rotation). An upstream out of rotation keeps its last listing: its models stay known, so
        requests for them answer 503 upstream_unavailable while it is away, not 404."""
        sources = [u for u in self.pool.upstreams if u.listed_at is not None]
        if not sources:
            return
        wanted = set(self.config.models)
        listings: dict[tuple[str, int], dict[Upstream, ModelEntry]] = {}
        for upstream in sources:
            for key, entry in upstream.models.items():
                if not wanted or key[0] in wanted:
                    listings.setdefault(key, {})[upstream] = entry
        models: dict[str, dict[int, LoadedModel]] = {}
        for (name, version), by_upstream in sorted(listings.items()):
            entry = next(iter(by_upstream.values()))  # upstreams in --upstream order: the first one's settings
            current = self._models.get(name, {}).get(version)
            if isinstance(current, ForwardedModel) and _same_model(current, entry):
                current.listings = by_upstream
                model: LoadedModel = current
            else:
                try:
                    model = forwarded_model(entry, by_upstream)
                except ValueError:
                    continue  # an upstream listing impossible settings: it cannot be forwarded to sensibly
            models.setdefault(name, {})[version] = model
        self._models = models
        ranked = sorted(sources, key=lambda u: not u.available())  # what the ones up now say first
        self._upstream_default = next((u.default_model for u in ranked if u.default_model in models), None)
        self.listed = True

    # ---- queries the routes make -------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Until an upstream lists its models there is nothing to wait for here: readiness then says
        why through the backend (no upstream in rotation), not as models still loading."""
        return not self.listed or super().ready

    def default_name(self) -> str | None:
        configured = self.config.default_model
        if configured and configured in self._models:
            return configured
        return self._upstream_default or super().default_name()

    def find(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        if not self.listed:
            raise UpstreamUnavailable(f"no upstream has listed its models yet: {_reasons(self.pool.upstreams)}",
                                      headers=retry_after(self.pool.check_interval_s))
        if version is None:
            # The latest version some upstream can answer now; while none can, the latest known
            # (its requests then say why: 503 upstream_unavailable).
            name = name or self.default_name()
            live = [m for m in self._models.get(name or "", {}).values()
                    if isinstance(m, ForwardedModel) and m.available()]
            if live:
                return max(live, key=lambda m: m.version)
        return super().find(name, version)

    def repository_index(self) -> list[dict[str, Any]]:
        return [{"name": m.name, "version": str(m.version), "state": "READY",
                 "reason": "served by " + ", ".join(u.url for u in m.listings) if isinstance(m, ForwardedModel)
                 else ""}
                for m in self.loaded()]


def _reasons(upstreams: Iterable[Upstream]) -> str:
    return "; ".join(f"{u.url}: {u.why_not() if not u.available() else 'listing pending'}" for u in upstreams)
