"""The server's per-image work without HTTP, asyncio or the batcher: what one process could reach.

Three measurements, all on one encoded image (the bench posts the same file to the server):
- `ort_rate`: ONNX Runtime alone on a ready [n, 3, 224, 224] batch;
- `pipeline_rate`: decode + preprocess in a thread pool (as the server does), stack, infer (through
  the runner's batch function, in runs of its `run_size` as in the server), rank. The next batch
  decodes while the current one infers, as the server's decode threads do while a batch runs, and
  as many batches run at once as the model's `max_inflight_batches` lets the server run (on a
  CPU, side by side single-threaded, as there: model_repo/runner.py), so this is the ceiling a
  batching server can approach;
- `single_latency`: one image at a time, start to finish (the floor for a request at concurrency 1).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image
from batchserve.model_repo.repository import find_model
from batchserve.model_repo.runner import Runner, RunnerConfig
from batchserve.model_repo.topk import softmax, top_k

TOP_K = 5  # what the server ranks by default


@dataclass(frozen=True)
class Rate:
    images: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    samples_ms: list[float]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_ms)


def _prepare(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """The server's decode step: preprocess, plus the content hash it records for events."""
    tensor = prepare_image(data, config).tensor
    hashlib.sha256(data).hexdigest()
    return tensor


def _rank(logits: Iterable[np.ndarray]) -> None:
    for row in logits:
        top_k(softmax(row), TOP_K)


class InProcess:
    """One model's runner and a decode pool sized like the server's (one thread per core)."""

    def __init__(self, model: str, model_repo: Path, image: bytes, decode_threads: int = 0) -> None:
        spec = find_model(model_repo, model)
        version = spec.servable_versions()[-1] if spec.servable_versions() else 1
        self.callers = max(1, int(spec.batching.get("max_inflight_batches", 1)))
        """Batches in progress at once, as the server's execution slots for this model."""
        self.runner = Runner(
            spec.model_path(version),
            RunnerConfig(execution_providers=spec.execution_providers, intra_op_threads=spec.intra_op_threads,
                         single_threaded_when_overlapping=self.callers > 1),
            input_name=spec.input_name,
            output_name=spec.output_name,
            output_kind=spec.output_kind,
        )
        self.providers = list(self.runner.providers)
        self.preprocess = spec.preprocessing
        self.image = image
        self.pool = ThreadPoolExecutor(decode_threads or os.cpu_count() or 2, thread_name_prefix="bench-decode")
        self.tensor = _prepare(image, self.preprocess)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.runner.close()

    def warmup(self, batch_sizes: list[int]) -> None:
        for n in batch_sizes:
            self.runner.infer(self._batch(n))
        if batch_sizes:
            self.runner.warmup(max(batch_sizes))  # the runs of overlapping batches too, if any

    def _batch(self, n: int) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(self.tensor, (n, *self.tensor.shape)))

    def ort_rate(self, batch_size: int, duration: float) -> Rate:
        batch = self._batch(batch_size)
        self.runner.infer(batch)  # not timed: the first run at a new size allocates
        images, start = 0, time.perf_counter()
        while True:
            self.runner.infer(batch)
            images += batch_size
            elapsed = time.perf_counter() - start
            if elapsed >= duration:
                return Rate(images, elapsed)

    def _submit(self, n: int) -> list[Future[np.ndarray]]:
        return [self.pool.submit(_prepare, self.image, self.preprocess) for _ in range(n)]

    def pipeline_rate(self, batch_size: int, duration: float) -> Rate:
        start = time.perf_counter()
        with ThreadPoolExecutor(self.callers, thread_name_prefix="bench-batch") as callers:
            runs = [callers.submit(self._pipeline, batch_size, start + duration) for _ in range(self.callers)]
            images = sum(run.result() for run in runs)
        return Rate(images, time.perf_counter() - start)

    def _pipeline(self, batch_size: int, deadline: float) -> int:
        """One caller's batches until `deadline`: how many images it classified."""
        pending = self._submit(batch_size)
        images = 0
        while True:
            tensors = [f.result() for f in pending]
            pending = self._submit(batch_size)  # decodes while this batch infers
            _rank(self.runner.infer_samples(tensors))
            images += batch_size
            if time.perf_counter() >= deadline:
                for f in pending:
                    f.result()
                return images

    def single_latency(self, duration: float) -> Latency:
        samples: list[float] = []
        deadline = time.perf_counter() + duration
        while True:
            t0 = time.perf_counter()
            tensor = self.pool.submit(_prepare, self.image, self.preprocess).result()
            _rank(self.runner.infer_samples([tensor]))
            now = time.perf_counter()
            samples.append((now - t0) * 1000.0)
            if now >= deadline:
                return Latency(samples)
