"""`--require-gpu`: a GPU deployment is not ready while a model runs on CPU only.

ONNX Runtime never refuses a session for want of a GPU: when CUDA (or TensorRT) cannot load —
the CPU build of onnxruntime installed, a CUDA or cuDNN library missing, no device visible — the
session quietly runs every node on CPU. A GPU instance doing that serves at a fraction of the
throughput its scaling targets assume, so with this requirement the server's /readyz answers 503
`gpu_unavailable` (the platform replaces the instance instead of sending it traffic) and a queue
worker stops at start (exit 1) instead of taking messages.

What counts is what each session really got (`session.get_providers()`, kept by the runner), not
what was asked for. Versions without a session of their own (the simulated accelerator, a queue or
remote web tier's catalogue) are not judged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from batchserve.model_repo.providers import CUDA, TENSORRT
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.readiness")
ACCELERATORS = (TENSORRT, CUDA)


def cpu_only(models: Iterable[LoadedModel]) -> list[LoadedModel]:
    """The versions whose ONNX Runtime session has no accelerator among its providers."""
    return [m for m in models if m.runner is not None and not any(p in ACCELERATORS for p in m.providers)]


def names(models: Iterable[LoadedModel]) -> list[str]:
    return [f"{m.name} v{m.version}" for m in models]


def reason(models: list[LoadedModel], available: list[str]) -> str:
    """Why the sessions got no GPU, as far as this process can tell."""
    asked = {p for m in models if m.runner is not None for p in m.runner.config.execution_providers}
    if not asked & set(ACCELERATORS):
        return "their execution_providers ask for CPU only"
    if not set(available) & set(ACCELERATORS):
        return (f"this ONNX Runtime build offers only {', '.join(available)}: the image needs onnxruntime-gpu "
                "instead of onnxruntime")
    return (f"ONNX Runtime offers {', '.join(p for p in available if p in ACCELERATORS)} but the session fell back "
            "to CPU: the CUDA or cuDNN libraries failed to load (ONNX Runtime's error is logged above) or no GPU "
            "is visible to the container")


class GpuRequirement:
    """Judges the loaded versions; logs once each time the set of CPU-only ones changes, so the log
    says why readiness fails without a line per probe."""

    def __init__(self, required: bool) -> None:
        self.required = required
        self._reported: frozenset[str] = frozenset()

    def unmet(self, models: Iterable[LoadedModel]) -> list[LoadedModel]:
        """The CPU-only versions when a GPU is required (none when it is not)."""
        if not self.required:
            return []
        missing = cpu_only(models)
        current = frozenset(names(missing))
        if current and current != self._reported:
            import onnxruntime as ort  # only here: a server that requires nothing never asks

            log.error("--require-gpu: %s %s on CPU only (%s); /readyz answers 503 gpu_unavailable",
                      ", ".join(sorted(current)), "runs" if len(current) == 1 else "run",
                      reason(missing, list(ort.get_available_providers())))
        self._reported = current
        return missing
