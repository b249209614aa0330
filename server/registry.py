"""Loaded models: one ONNX Runtime runner and one batcher per model version.

Loading happens off the event loop and a version takes traffic only once warm. A version that a
reload or an unload retires leaves the registry at once but closes only when no running request
holds it any more (see server/leases.py); closing its batcher then lets queued and in-flight
batches finish first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchserve.batching import Batcher, BatchingConfig, BatchRecord
from batchserve.model_repo.errors import ModelLoadError, ModelNotFound
from batchserve.model_repo.labels import load_imagenet_labels
from batchserve.model_repo.preprocess import PreprocessConfig
from batchserve.model_repo.repository import ModelSpec, scan_repository
from batchserve.model_repo.runner import Runner, RunnerConfig
from batchserve.server.config import ServerConfig
from batchserve.server.leases import LeaseCounter, lease
from batchserve.server.simulated import SIMULATED_MODEL_NAME, CostModel, SimulatedDevice

log = logging.getLogger("batchserve.models")

# Knobs a model's [batching] table may hold besides the batcher's own.
SERVER_KNOBS = ("default_timeout_ms", "max_timeout_ms", "intra_op_threads")


@dataclass(frozen=True)
class RequestLimits:
    """Per-model deadline policy: a default for requests that set none, and a cap."""

    default_timeout_ms: float = 0.0
    max_timeout_ms: float = 60_000.0


@dataclass
class LoadedModel:
    name: str
    version: int
    description: str
    labels: list[str]
    preprocess: PreprocessConfig
    batching: BatchingConfig
    limits: RequestLimits
    batcher: Batcher[np.ndarray, np.ndarray]
    providers: list[str]
    input_name: str = "input"
    input_shape: tuple[int, ...] = (3, 224, 224)
    output_name: str = "logits"
    runner: Runner | None = None
    executor: ThreadPoolExecutor | None = None
    loaded_at: float = field(default_factory=time.time)
    fingerprint: tuple[int, ...] | None = None  # what it was loaded from: see _fingerprint
    leases: LeaseCounter = field(default_factory=LeaseCounter)

    @property
    def classes(self) -> int:
        return len(self.labels)

    def acquire(self) -> None:
        self.leases.acquire()

    def release(self) -> None:
        self.leases.release()

    async def close(self, timeout: float | None = None) -> None:
        await self.batcher.close(timeout=timeout)
        if self.runner is not None:
            self.runner.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False)


def split_knobs(knobs: dict[str, Any]) -> tuple[BatchingConfig, RequestLimits, int]:
    """The merged knob mapping, as the three typed configs it feeds. A misspelt knob is refused
    (a silently ignored `max_bach_size` would be worse)."""
    batching_knobs = BatchingConfig.knobs()
    unknown = sorted(set(knobs) - set(batching_knobs) - set(SERVER_KNOBS))
    if unknown:
        raise ModelLoadError(
            f"unknown model setting(s) {', '.join(unknown)}; known: {', '.join((*batching_knobs, *SERVER_KNOBS))}"
        )
    try:
        batching = BatchingConfig.from_mapping({k: v for k, v in knobs.items() if k in batching_knobs})
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    limits = RequestLimits(
        default_timeout_ms=float(knobs.get("default_timeout_ms") or 0.0),
        max_timeout_ms=float(knobs.get("max_timeout_ms") or RequestLimits.max_timeout_ms),
    )
    return batching, limits, int(knobs.get("intra_op_threads") or 0)


class ModelRegistry:
    def __init__(self, config: ServerConfig, on_batch: Any = None) -> None:
        self.config = config
        self._on_batch = on_batch  # callable(model_name, version, BatchRecord) for metrics
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.expected: list[str] = []

    # ---- queries -------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._models)

    def loaded(self) -> list[LoadedModel]:
        return [m for name in self.names() for _, m in sorted(self._models[name].items())]

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    @property
    def ready(self) -> bool:
        return bool(self._models) and all(name in self._models for name in self.expected)

    def default_name(self) -> str | None:
        if self.config.default_model and self.config.default_model in self._models:
            return self.config.default_model
        names = self.names()
        return names[0] if names else None

    def get(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        name = name or self.default_name()
        if name is None or name not in self._models:
            raise ModelNotFound(name or "(default)", version, self.names())
        versions = self._models[name]
        if version is None:
            version = max(versions)
        elif version not in versions:
            raise ModelNotFound(name, version, self.names())
        model = versions[version]
        lease(model)  # held until the current request has answered
        return model

    def spec(self, name: str) -> ModelSpec | None:
        return self._specs.get(name)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model in the repository (loaded or not), as Triton's repository index lists them."""
        try:
            specs = scan_repository(self.config.model_repo)
        except ModelLoadError:
            specs = {}
        rows = []
        for name, spec in specs.items():
            built = spec.built_versions()
            for version in built or [None]:
                state = "READY" if version in self._models.get(name, {}) else "UNAVAILABLE"
                rows.append({"name": name, "version": "" if version is None else str(version), "state": state,
                             "reason": "" if built else "not built"})
        if SIMULATED_MODEL_NAME in self._models:
            rows.append({"name": SIMULATED_MODEL_NAME, "version": "1", "state": "READY", "reason": ""})
        return rows

    # ---- loading -------------------------------------------------------------------------
    async def load_configured(self) -> None:
        """Load what the server config asks for: the simulated device, and/or repository models."""
        if self.config.simulate_model:
            self.expected.append(SIMULATED_MODEL_NAME)
            await self._install(self._simulated(CostModel.parse(self.config.simulate_model)))
            if not self.config.models:
                return
        specs = scan_repository(self.config.model_repo)
        wanted = list(self.config.models) or [n for n, s in specs.items() if s.built_versions()]
        if not wanted:
            raise ModelLoadError(
                f"no built model in {self.config.model_repo}; run `batchserve models build efficientnet_lite0`"
            )
        for name in wanted:
            if name not in specs:
                raise ModelNotFound(name, None, sorted(specs))
            self.expected.append(name)
            await self.load(name)

    async def load(self, name: str, versions: list[int] | None = None) -> list[LoadedModel]:
        """Load (or reload) a model's versions per its policy. New versions take traffic only once
        warm; versions already loaded from an unchanged file are kept as they are; versions the
        policy no longer selects are retired (they finish the requests that hold them first)."""
        async with self._lock:
            specs = await asyncio.to_thread(scan_repository, self.config.model_repo)
            if name not in specs:
                raise ModelNotFound(name, None, sorted(specs))
            spec = specs[name]
            targets = versions or spec.servable_versions()
            if not targets:
                raise ModelLoadError(
                    f"model {name!r} has no built version in {spec.directory}; run `batchserve models build {name}`"
                )
            old = self._models.get(name, {})
            fresh: list[LoadedModel] = []
            for version in targets:
                current = old.get(version)
                if current is not None and current.fingerprint is not None \
                        and current.fingerprint == _fingerprint(spec, version):
                    fresh.append(current)
                else:
                    fresh.append(await asyncio.to_thread(self._load_version, spec, version))
            self._specs[name] = spec
            self._models[name] = {m.version: m for m in fresh}
            if name not in self.expected:
                self.expected.append(name)
        kept = {id(m) for m in fresh}
        for model in old.values():
            if id(model) not in kept:
                self._retire(model)
        return fresh

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self._models:
                raise ModelNotFound(name, None, self.names())
            old = self._models.pop(name)
            if name in self.expected:
                self.expected.remove(name)
        for model in old.values():
            self._retire(model)

    def _retire(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._close_when_released(model), name=f"retire-{model.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_released(self, model: LoadedModel) -> None:
        grace = self.config.shutdown_grace
        log.info("retiring %s v%d once its %d running request(s) finish", model.name, model.version, model.leases.count)
        if not await model.leases.wait_idle(grace):
            log.warning("retiring %s v%d: %d request(s) still hold it after %.1f s; closing anyway",
                        model.name, model.version, model.leases.count, grace)
        await model.close(timeout=grace)
        log.info("retired %s v%d", model.name, model.version)

    async def wait_retired(self, timeout: float | None = None) -> bool:
        """Wait until every retired version has closed; False when `timeout` passed first."""
        if not self._retiring:
            return True
        _, pending = await asyncio.wait(list(self._retiring), timeout=timeout)
        return not pending

    async def close(self, timeout: float | None = None) -> None:
        models = self.loaded()
        self._models.clear()
        retiring = list(self._retiring)
        await asyncio.gather(*(m.close(timeout=timeout) for m in models))
        if retiring:
            await asyncio.wait(retiring, timeout=timeout)

    async def _install(self, model: LoadedModel) -> None:
        async with self._lock:
            self._models.setdefault(model.name, {})[model.version] = model

    def _observer(self, name: str, version: int):
        if self._on_batch is None:
            return None

        def observe(record: BatchRecord) -> None:
            self._on_batch(name, version, record)

        return observe

    def _load_version(self, spec: ModelSpec, version: int) -> LoadedModel:
        """Runs in a worker thread: session creation and warm-up take seconds."""
        started = time.perf_counter()
        fingerprint = _fingerprint(spec, version)
        batching, limits, intra = split_knobs(self.config.model_knobs(spec.name, spec.batching))
        providers = self.config.execution_providers or spec.execution_providers
        runner = Runner(
            spec.model_path(version),
            RunnerConfig(
                execution_providers=tuple(providers),
                intra_op_threads=intra or spec.intra_op_threads,
                trt_engine_cache_path=self.config.trt_engine_cache_path,
            ),
            input_name=spec.input_name,
            output_name=spec.output_name,
        )
        runner.warmup(batching.max_batch_size)
        executor = ThreadPoolExecutor(batching.max_inflight_batches, thread_name_prefix=f"infer-{spec.name}")
        batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
            runner.infer_samples, batching, name=f"{spec.name}:{version}", executor=executor,
            on_batch=self._observer(spec.name, version),
        )
        log.info(
            "loaded %s v%d in %.1f s on %s (max batch %d, %d in flight)",
            spec.name, version, time.perf_counter() - started, ", ".join(runner.providers),
            batching.max_batch_size, batching.max_inflight_batches,
        )
        return LoadedModel(
            name=spec.name, version=version, description=spec.description, labels=spec.read_labels(),
            preprocess=spec.preprocessing, batching=batching, limits=limits, batcher=batcher,
            providers=list(runner.providers), input_name=spec.input_name, input_shape=spec.input_shape,
            output_name=spec.output_name, runner=runner, executor=executor, fingerprint=fingerprint,
        )

    def _simulated(self, cost: CostModel) -> LoadedModel:
        knobs = self.config.model_knobs(SIMULATED_MODEL_NAME, {"max_batch_size": 32, "max_inflight_batches": 1,
                                                                "max_queue_size": 1024})
        batching, limits, _ = split_knobs(knobs)
        device = SimulatedDevice(cost)
        log.info("serving the simulated accelerator %r: a batch of n costs %s", SIMULATED_MODEL_NAME, cost)
        return LoadedModel(
            name=SIMULATED_MODEL_NAME, version=1, description=f"simulated accelerator, batch cost {cost}",
            labels=load_imagenet_labels(), preprocess=PreprocessConfig(), batching=batching, limits=limits,
            batcher=Batcher(device, batching, name=f"{SIMULATED_MODEL_NAME}:1",
                            on_batch=self._observer(SIMULATED_MODEL_NAME, 1)),
            providers=["simulated"],
        )


def _fingerprint(spec: ModelSpec, version: int) -> tuple[int, ...] | None:
    """Size and mtime of the files a loaded version depends on: a reload keeps a running version
    only when none of them changed (a rebuilt graph, new labels, edited batching knobs)."""
    stamps: list[int] = []
    for path in (spec.model_path(version), spec.directory / "config.toml", spec.labels_path):
        try:
            st = path.stat()
        except OSError:
            return None
        stamps += [st.st_mtime_ns, st.st_size]
    return tuple(stamps)


def model_summary(model: LoadedModel) -> dict[str, Any]:
    """What /v1/models says about one loaded version."""
    stats = model.batcher.stats
    return {
        "name": model.name,
        "version": model.version,
        "description": model.description,
        "state": "ready",
        "execution_providers": model.providers,
        "input": {"name": model.input_name, "shape": [-1, *model.input_shape], "datatype": "FP32"},
        "output": {"name": model.output_name, "shape": [-1, model.classes], "datatype": "FP32"},
        "classes": model.classes,
        "batching": {
            "max_batch_size": model.batching.max_batch_size,
            "max_queue_delay_ms": model.batching.max_queue_delay_ms,
            "preferred_batch_sizes": list(model.batching.preferred_batch_sizes),
            "max_queue_size": model.batching.max_queue_size,
            "max_inflight_batches": model.batching.max_inflight_batches,
            "default_timeout_ms": model.limits.default_timeout_ms,
            "max_timeout_ms": model.limits.max_timeout_ms,
        },
        "stats": {
            "queue_depth": stats.queue_depth,
            "inflight_batches": stats.inflight_batches,
            "requests_total": stats.requests_total,
            "batches_total": stats.batches_total,
            "mean_batch_size": stats.mean_batch_size,
            "rejected_total": stats.rejected_total,
            "expired_total": stats.expired_total,
            "batch_size_histogram": {str(k): v for k, v in sorted(stats.batch_size_histogram.items())},
        },
        "loaded_at": model.loaded_at,
    }
