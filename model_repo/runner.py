"""One ONNX Runtime session behind the batch function the batcher calls."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from batchserve.model_repo.errors import ModelLoadError
from batchserve.model_repo.providers import CPU, DEFAULT_PROVIDERS, choose_providers, session_providers

log = logging.getLogger("batchserve.runner")
OUTPUT_KINDS = ("logits", "probabilities")
# log(0) would be -inf, which softmax refuses: a probability is floored at the smallest normal
# float32 (log: -87.3), whose softmax weight rounds to nothing next to any real class.
_SMALLEST_PROBABILITY = float(np.finfo(np.float32).tiny)
# A batch on a CPU-only session runs as consecutive runs of at most this many samples. On an idle
# CPU a run of 8 costs what a run of 32 does per image; on a busy one it costs less: other threads
# on the same cores (the server's own decoders and event loop, other processes) evict a long run's
# activations from the caches. EfficientNet-Lite0 fp32 on 2 shared vCPUs, ONNX Runtime alone, 10
# alternating rounds: 11.3 ms of CPU per image in runs of 8, 12.9 ms in runs of 32 (medians; the
# least of each, 10.4 and 10.6 ms, agree). The HTTP server at 32-64 connections, interleaved with
# whole-batch runs while other work loaded the machine: 5-46 % less CPU per image, 0.99-1.85x the
# images/s (medians of per-round ratios; 1.1-1.3x in most runs); on the machine alone, the same
# within noise. The int8 variant, loaded: 7-9 % less CPU per image, 1.11-1.14x the images/s.
# An accelerator keeps whole batches: it is what they are gathered for.
CPU_RUN_SIZE = 8
# A run made while another batch runs too is single-threaded, and takes at most this many samples.
# One thread, ONNX Runtime alone, EfficientNet-Lite0 fp32, ms per image (3 rounds): runs of 2:
# 9.2-10.0, of 4: 9.3-9.6, of 8: 9.9-10.3; its arena grows by about 26, 58 and 110 MB for them.
# Two such runs at once hold two runs' activations: 4 keeps that near one run of 8's memory.
OVERLAPPING_RUN_SIZE = 4


@dataclass(frozen=True)
class RunnerConfig:
    execution_providers: tuple[str, ...] = DEFAULT_PROVIDERS
    """Requested providers; filtered by what this build offers, CPU always last (see providers)."""
    intra_op_threads: int = 0
    """Threads one operator may use; 0 lets ONNX Runtime pick (one per physical core)."""
    inter_op_threads: int = 1
    """Threads for running independent nodes in parallel; unused in sequential execution."""
    trt_engine_cache_path: str | None = None
    """Where TensorRT keeps compiled engines, so a restart does not rebuild them for minutes."""
    allow_spinning: bool = False
    """Let idle intra-op threads spin-wait for work. Off: the server decodes images on the same
    cores while a batch runs, and spinning threads take the CPU the decoder needs (measured on
    2 cores: ~6 % more throughput and a lower single-request latency with spinning off; ONNX
    Runtime alone, 2 threads: 11 ms of CPU per image spinning off, 14 ms spinning)."""
    run_size: int | None = None
    """Most samples one ONNX Runtime run takes; a larger batch runs as consecutive runs of this
    size. None: CPU_RUN_SIZE on a CPU-only session, a whole batch per run with an accelerator."""
    single_threaded_when_overlapping: bool = False
    """On a CPU-only session whose runs use several threads: while two batches run at once, each
    runs on one thread of its own (a second, single-threaded session) rather than both sharing
    the intra-op pool; a batch running alone still uses every thread. See `Runner`. The server
    sets it where batches can overlap (`max_inflight_batches` > 1)."""

    def __post_init__(self) -> None:
        if self.run_size is not None and self.run_size < 1:
            raise ValueError(f"run_size must be at least 1, not {self.run_size}")


class Runner:
    """A loaded model graph: float32 [N, C, H, W] (or [N, H, W, C]) in, float32 [N, classes] logits out.

    A graph whose output is already probabilities (`output_kind="probabilities"`, one ending in a
    softmax) answers their logarithm: log-probabilities are logits whose softmax gives the same
    probabilities back, so everything downstream (ranking, V2's `probabilities`, the cache, drift)
    treats every model alike, and applying softmax to probabilities (which would flatten them
    towards uniform) never happens.

    `infer` and `infer_samples` may be called from several threads at once: ONNX Runtime's
    `run` is thread-safe and releases the GIL, and each thread stacks its batch into a buffer
    of its own.

    Overlapping batches on a CPU (`single_threaded_when_overlapping`). One run spread over every
    core waits, operator by operator, for the slowest of its threads, and on cores it shares
    with the server's decoders and event loop one of them is often preempted: the others then
    sit idle. Two batches each on a thread of its own never wait for each other. So a CPU-only
    runner with several intra-op threads keeps a second session with one, and a run made while
    another batch is in `infer_samples` uses it; a batch alone, the lowest-latency case, keeps
    every thread. With two execution slots (`max_inflight_batches = 2`), batches overlap only
    when requests pile up. EfficientNet-Lite0 fp32 behind the HTTP server on 2 vCPUs, against
    one slot and two threads: see docs/performance.md#cpu-lanes.
    """

    def __init__(
        self,
        model_path: Path,
        config: RunnerConfig = RunnerConfig(),
        *,
        input_name: str = "input",
        output_name: str = "logits",
        output_kind: str = "logits",
    ) -> None:
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, not {output_kind!r}")
        self.model_path = Path(model_path)
        self.config = config
        self.input_name = input_name
        self.output_name = output_name
        self.output_kind = output_kind
        # A single-threaded twin shares the process-wide CPU arena with its session: their runs'
        # activations then take the memory of two runs at once at most, not two arenas' peaks.
        twin = config.single_threaded_when_overlapping and _threads_per_run(config.intra_op_threads) > 1 \
            and choose_providers(config.execution_providers, ort.get_available_providers()) == [CPU] \
            and _shared_cpu_arena()
        self._session: ort.InferenceSession | None = _open_session(self.model_path, config, shared_arena=twin)
        self.providers: list[str] = list(self._session.get_providers())
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if input_name not in inputs or output_name not in outputs:
            raise ModelLoadError(
                f"{self.model_path}: expected input {input_name!r} and output {output_name!r}, "
                f"the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        self.input_shape: list[int | str | None] = list(inputs[input_name].shape)
        fixed = tuple(d for d in self.input_shape[1:] if isinstance(d, int))
        if len(self.input_shape) != 4 or len(fixed) != 3:
            raise ModelLoadError(
                f"{self.model_path}: input {input_name!r} must be [N, C, H, W] with fixed C, H and W, "
                f"not {self.input_shape}"
            )
        self.sample_shape: tuple[int, int, int] = fixed
        # A graph exported with a fixed batch size takes exactly that many samples per run.
        self.fixed_batch: int | None = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        self.num_classes = self._classes(outputs[output_name].shape)
        self.run_size: int | None = config.run_size
        """Most samples per ONNX Runtime run (None: a whole batch per run)."""
        if self.run_size is None and self.providers == [CPU]:
            self.run_size = CPU_RUN_SIZE
        self._local = threading.local()
        self._single_threaded: ort.InferenceSession | None = None
        """The session for runs made while batches overlap (None: every run uses `_session`)."""
        if twin:
            self._single_threaded = _open_session(self.model_path, replace(config, intra_op_threads=1),
                                                  shared_arena=True)
        self._batches_running = 0
        self._running_lock = threading.Lock()
        log.info("%s: ONNX Runtime session on %s%s", self.model_path, ", ".join(self.providers),
                 "; overlapping batches run single-threaded" if self._single_threaded is not None else "")

    def _classes(self, output_shape: Sequence[int | str | None]) -> int:
        if output_shape and isinstance(output_shape[-1], int):
            return int(output_shape[-1])
        # A symbolic class dimension: one probe run says what it is.
        return int(self.infer(np.zeros((self.fixed_batch or 1, *self.sample_shape), dtype=np.float32)).shape[-1])

    @property
    def overlapping_single_threaded(self) -> bool:
        """Whether runs made while another batch runs use a single-threaded session of their own."""
        return self._single_threaded is not None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, *sample_shape] -> float32 [N, classes] logits."""
        return self._infer(batch, overlapping=False)

    def _infer(self, batch: np.ndarray, *, overlapping: bool) -> np.ndarray:
        # A local reference: close() during a run must not break it.
        session = self._single_threaded if overlapping else self._session
        if session is None:
            raise RuntimeError(f"runner for {self.model_path} is closed")
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            raise ValueError(f"batch must be a float32 numpy array, not {getattr(batch, 'dtype', type(batch))}")
        if batch.ndim != 4 or batch.shape[1:] != self.sample_shape or batch.shape[0] < 1:
            dims = ", ".join(map(str, self.sample_shape))
            raise ValueError(f"batch must have shape [N>=1, {dims}], not {list(batch.shape)}")
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise ValueError(f"this graph takes batches of exactly {self.fixed_batch}, not {batch.shape[0]}")
        out: np.ndarray = session.run([self.output_name], {self.input_name: batch})[0]
        return as_logits(out, self.output_kind)

    def infer_samples(self, samples: list[np.ndarray]) -> list[np.ndarray]:
        """The batcher's batch function: one sample (the input's shape minus the batch axis) per
        request in, one logits row each out.

        The rows are views of the runs' [n, classes] arrays (no per-row copies). A graph with a
        fixed batch size gets its batch padded with zeros up to that size; any other batch larger
        than `run_size` runs as consecutive runs of at most that many samples."""
        n = len(samples)
        if n == 0:
            return []
        with self._running():
            return self._infer_samples(samples)

    @contextmanager
    def _running(self) -> Iterator[None]:
        with self._running_lock:
            self._batches_running += 1
        try:
            yield
        finally:
            with self._running_lock:
                self._batches_running -= 1

    def _overlapping(self) -> bool:
        """Whether a run made now shares the CPU with another batch's (and so runs single-threaded):
        decided run by run, so a batch that started alone stops taking every thread at its next run."""
        return self._single_threaded is not None and self._batches_running > 1

    def _infer_samples(self, samples: list[np.ndarray]) -> list[np.ndarray]:
        n = len(samples)
        for i, sample in enumerate(samples):
            if sample.shape != self.sample_shape:
                raise ValueError(f"sample {i} has shape {list(sample.shape)}, expected {list(self.sample_shape)}")
        if self.fixed_batch is not None:
            if n > self.fixed_batch:
                raise ValueError(f"this graph takes at most {self.fixed_batch} samples per run, not {n}")
            batch = self._buffer(self.fixed_batch)
            np.stack(samples, out=batch[:n])
            batch[n:] = 0.0
            return list(self._infer(batch, overlapping=self._overlapping())[:n])
        run_size = self.run_size or n
        results: list[np.ndarray] = []
        start = 0
        while start < n:
            overlapping = self._overlapping()
            size = min(run_size, OVERLAPPING_RUN_SIZE) if overlapping else run_size
            part = samples[start : start + size]
            batch = self._buffer(len(part))
            np.stack(part, out=batch)
            results.extend(self._infer(batch, overlapping=overlapping))
            start += len(part)
        return results

    def _buffer(self, n: int) -> np.ndarray:
        """This thread's staging buffer, grown to the largest batch seen; a view of its first n rows.

        Reusing it spares a 600 KB-per-sample allocation on every batch; keeping one per thread
        means concurrent batches never write into each other's input."""
        buf: np.ndarray | None = getattr(self._local, "buffer", None)
        if buf is None or buf.shape[0] < n:
            buf = np.empty((n, *self.sample_shape), dtype=np.float32)
            self._local.buffer = buf
        return buf[:n]

    def warmup(self, max_batch_size: int) -> None:
        """Run once at batch size 1 and once at the largest, so memory pools (and, on GPUs, kernel
        choices) reach their working size before traffic arrives rather than under it."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if self.fixed_batch is not None and max_batch_size > self.fixed_batch:
            raise ModelLoadError(
                f"{self.model_path}: the graph has a fixed batch size of {self.fixed_batch}, below "
                f"max_batch_size {max_batch_size}; lower max_batch_size or export it with a dynamic batch"
            )
        for n in sorted({1, max_batch_size}):
            samples = [np.zeros(self.sample_shape, dtype=np.float32)] * n
            self.infer_samples(samples)
            if self._single_threaded is not None:
                with self._running(), self._running():  # as if another batch ran beside it
                    self._infer_samples(samples)

    def close(self) -> None:
        """Release the sessions; runs already in progress finish, later calls raise RuntimeError."""
        self._session = None
        self._single_threaded = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _threads_per_run(intra_op_threads: int) -> int:
    """The intra-op threads a session gets: the setting, or for 0 ONNX Runtime's default of one per
    core (physical cores; this counts the CPUs the process may use, which only ever errs high)."""
    if intra_op_threads > 0:
        return intra_op_threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def as_logits(scores: np.ndarray, output_kind: str) -> np.ndarray:
    """A graph's output as logits: unchanged, or the logarithm of probabilities (see Runner)."""
    if output_kind == "probabilities":
        return np.log(np.maximum(scores, _SMALLEST_PROBABILITY))
    return scores


_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


def _shared_cpu_arena() -> bool:
    """ONNX Runtime's process-wide CPU arena, drawn on by sessions opened with
    `session.use_env_allocators` instead of an arena each; it grows by what is asked, not to the
    next power of two. Measured (EfficientNet-Lite0 fp32, runs of 8): a second session with an
    arena of its own added 112 MB once warm, sharing this one 40 MB (its weights and graph).
    False when this build of ONNX Runtime cannot make one (a runner then keeps a single session)."""
    global _shared_arena_registered
    with _shared_arena_lock:
        if not _shared_arena_registered:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            except Exception as exc:  # noqa: BLE001 - ORT's pybind errors share no useful base class
                log.warning("no shared CPU arena (%s): overlapping batches share the cores' threads", exc)
                return False
            _shared_arena_registered = True
        return True


def _open_session(path: Path, config: RunnerConfig, *, shared_arena: bool = False) -> ort.InferenceSession:
    model_name = path.parent.parent.name or "NAME"
    build_hint = f"build it with `batchserve models build {model_name}`"
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; {build_hint}")
    providers = session_providers(
        path, config.execution_providers, ort.get_available_providers(), config.trt_engine_cache_path
    )
    names = [name for name, _ in providers]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
    options.enable_mem_pattern = True
    options.enable_cpu_mem_arena = True
    if shared_arena:
        options.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT's pybind exceptions share no useful base class
        raise ModelLoadError(f"cannot load model file {path}: {exc}; {build_hint} again") from exc
    actual = session.get_providers()
    if actual != names:
        log.warning("%s: asked ONNX Runtime for %s, the session uses %s", path, names, actual)
    return session
