"""Loaded models: one ONNX Runtime runner and one batcher per model version.

Loading happens off the event loop and a version takes traffic only once warm. A version that a
reload or an unload retires leaves the registry at once but closes only when no running request
holds it any more (see serving/leases.py); closing its batcher then lets queued and in-flight
batches finish first.

An s3:// or gs:// repository is read from its local mirror (model_repo/sync.py): synced whole
before the configured models load, and one model's folder again on each `load` of that model, so
a pushed version reaches a running server through explicit model control. A version that fails
its checks (config, labels, ONNX) is not served and the versions already loaded keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchserve.batching import Batcher, BatchingConfig, BatchRecord
from batchserve.batching.cost import CostModel
from batchserve.model_repo.checks import check_classes
from batchserve.model_repo.errors import ModelLoadError, ModelNotFound
from batchserve.model_repo.labels import load_imagenet_labels
from batchserve.model_repo.preprocess import PreprocessConfig
from batchserve.model_repo.repository import ModelSpec, scan_repository
from batchserve.model_repo.runner import Runner, RunnerConfig
from batchserve.model_repo.sync import RepositoryCache
from batchserve.serving.config import ServingConfig
from batchserve.serving.knobs import ModelSettings, RequestLimits
from batchserve.serving.leases import LeaseCounter, lease
from batchserve.serving.simulated import SIMULATED_MODEL_NAME, SimulatedDevice

log = logging.getLogger("batchserve.models")
# Called once per batch with (model name, version, record), e.g. by the metrics.
BatchObserver = Callable[[str, int, BatchRecord], None]


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


class ModelRegistry:
    """The loaded model versions by name. `retire_grace_s` bounds how long a retired version waits
    for the requests that hold it before it closes anyway."""

    def __init__(self, config: ServingConfig, *, retire_grace_s: float = 8.0,
                 on_batch: BatchObserver | None = None, catalog_only: bool = False) -> None:
        self.config = config
        # A front end whose models run elsewhere (queue workers) knows their names, versions, labels
        # and limits, so it answers /v1/models, top_k bounds and model_not_found itself; no session loads.
        self.catalog_only = catalog_only
        self.retire_grace_s = retire_grace_s
        self._on_batch = on_batch
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.expected: list[str] = []
        remote = config.remote_repository
        self._mirror = None if remote is None else RepositoryCache(
            remote, config.model_cache_dir, endpoint_url=config.model_repo_endpoint_url)

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

    def find(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """The loaded version (default: the latest) of a model (default: the default model)."""
        name = name or self.default_name()
        if name is None or name not in self._models:
            raise ModelNotFound(name or "(default)", version, self.names())
        versions = self._models[name]
        if version is None:
            version = max(versions)
        elif version not in versions:
            raise ModelNotFound(name, version, self.names())
        return versions[version]

    def lease(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """`find`, and hold the version until the current request ends (see serving/leases.py),
        so a reload or an unload in between cannot close it under the request."""
        model = self.find(name, version)
        lease(model)
        return model

    def spec(self, name: str) -> ModelSpec | None:
        return self._specs.get(name)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model in the repository (loaded or not), as Triton's repository index lists them."""
        try:
            specs = scan_repository(self.config.repository_dir)
        except ModelLoadError:
            specs = {}
        rows = []
        for name, spec in specs.items():
            built = spec.built_versions()
            listed: list[int | None] = [*built] or [None]
            for version in listed:
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
        await self._sync()
        specs = await asyncio.to_thread(scan_repository, self.config.repository_dir)
        wanted = list(self.config.models) or [n for n, s in specs.items() if s.built_versions()]
        if not wanted:
            raise ModelLoadError(
                f"no built model in {self.config.model_repo}; run `batchserve models build efficientnet_lite0`"
            )
        for name in wanted:
            if name not in specs:
                raise ModelNotFound(name, None, sorted(specs))
            self.expected.append(name)
            await self.load(name, sync=False)

    async def load(self, name: str, versions: list[int] | None = None, *, sync: bool = True) -> list[LoadedModel]:
        """Load (or reload) a model's versions per its policy. New versions take traffic only once
        warm; versions already loaded from an unchanged file are kept as they are; versions the
        policy no longer selects are retired (they finish the requests that hold them first).
        A remote repository's folder of the model is synced first unless `sync` is False."""
        async with self._lock:
            if sync:
                known = self._specs.get(name)
                await self._sync(known.directory.name if known is not None else None)
            specs = await asyncio.to_thread(scan_repository, self.config.repository_dir)
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
                elif self.catalog_only:
                    fresh.append(self._catalog_version(spec, version))
                else:
                    try:
                        fresh.append(await asyncio.to_thread(self._load_version, spec, version))
                    except ModelLoadError as exc:
                        # Nothing changes: what this call loaded closes, what was serving keeps serving.
                        serving_ids = {id(m) for m in old.values()}
                        await asyncio.gather(*(m.close() for m in fresh if id(m) not in serving_ids))
                        serving = f"; still serving v{', v'.join(map(str, sorted(old)))}" if old else ""
                        raise ModelLoadError(f"{name} v{version} from {self.config.model_repo} was not "
                                             f"loaded: {exc}{serving}") from exc
            self._specs[name] = spec
            self._models[name] = {m.version: m for m in fresh}
            if name not in self.expected:
                self.expected.append(name)
        kept = {id(m) for m in fresh}
        for model in old.values():
            if id(model) not in kept:
                self._retire(model)
        return fresh

    async def _sync(self, folder: str | None = None) -> None:
        """Bring the local mirror of a remote repository (or one model folder of it) up to date."""
        if self._mirror is None:
            return
        report = await asyncio.to_thread(self._mirror.sync, folder)
        log.info("%s", report)

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
        grace = self.retire_grace_s
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
        await asyncio.gather(*(m.close(timeout=timeout) for m in models))
        await self.wait_retired(timeout)

    async def _install(self, model: LoadedModel) -> None:
        async with self._lock:
            self._models.setdefault(model.name, {})[model.version] = model

    def _observer(self, name: str, version: int) -> Callable[[BatchRecord], None] | None:
        on_batch = self._on_batch
        if on_batch is None:
            return None

        def observe(record: BatchRecord) -> None:
            on_batch(name, version, record)

        return observe

    def _settings(self, name: str, from_toml: dict[str, Any]) -> ModelSettings:
        return ModelSettings.from_knobs(self.config.knobs.for_model(name, from_toml))

    def _load_version(self, spec: ModelSpec, version: int) -> LoadedModel:
        """Runs in a worker thread: session creation and warm-up take seconds."""
        started = time.perf_counter()
        fingerprint = _fingerprint(spec, version)
        labels = spec.read_labels()
        settings = self._settings(spec.name, spec.batching)
        batching = settings.batching
        providers = self.config.execution_providers or spec.execution_providers
        runner = Runner(
            spec.model_path(version),
            RunnerConfig(
                execution_providers=tuple(providers),
                intra_op_threads=settings.runtime.intra_op_threads or spec.intra_op_threads,
                trt_engine_cache_path=self.config.trt_engine_cache_path,
                single_threaded_when_overlapping=batching.max_inflight_batches > 1,
            ),
            input_name=spec.input_name,
            output_name=spec.output_name,
            output_kind=spec.output_kind,
        )
        try:
            check_classes(spec, version, len(labels), runner.num_classes)
            runner.warmup(batching.max_batch_size)
        except Exception:
            runner.close()
            raise
        executor = ThreadPoolExecutor(batching.max_inflight_batches, thread_name_prefix=f"infer-{spec.name}")
        batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
            runner.infer_samples, batching, name=f"{spec.name}:{version}", executor=executor,
            on_batch=self._observer(spec.name, version),
        )
        log.info(
            "loaded %s v%d in %.1f s on %s (max batch %d, %d in flight, %s)",
            spec.name, version, time.perf_counter() - started, ", ".join(runner.providers),
            batching.max_batch_size, batching.max_inflight_batches,
            f"runs of at most {runner.run_size}" if runner.run_size else "one run per batch",
        )
        return LoadedModel(
            name=spec.name, version=version, description=spec.description, labels=labels,
            preprocess=spec.preprocessing, batching=batching, limits=settings.limits, batcher=batcher,
            providers=list(runner.providers), input_name=spec.input_name, input_shape=spec.input_shape,
            output_name=spec.output_name, runner=runner, executor=executor, fingerprint=fingerprint,
        )

    def _catalog_version(self, spec: ModelSpec, version: int) -> LoadedModel:
        """A version as a front end without the model sees it: everything but a session. Its batcher
        only keeps LoadedModel's shape (stats, drain state): no route sends it samples."""
        settings = self._settings(spec.name, spec.batching)

        async def run_elsewhere(samples: list[np.ndarray]) -> list[np.ndarray]:
            raise ModelLoadError(f"{spec.name} v{version} runs on the queue workers, not in this process")

        return LoadedModel(
            name=spec.name, version=version, description=spec.description, labels=spec.read_labels(),
            preprocess=spec.preprocessing, batching=settings.batching, limits=settings.limits,
            batcher=Batcher(run_elsewhere, settings.batching, name=f"{spec.name}:{version}"),
            providers=["queue workers"], input_name=spec.input_name, input_shape=spec.input_shape,
            output_name=spec.output_name, fingerprint=_fingerprint(spec, version),
        )

    def _simulated(self, cost: CostModel) -> LoadedModel:
        settings = self._settings(SIMULATED_MODEL_NAME, {"max_batch_size": 32, "max_inflight_batches": 1,
                                                          "max_queue_size": 1024})
        batching, limits = settings.batching, settings.limits
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
