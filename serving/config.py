"""What the serving core loads and how: the model repository, which models, ONNX Runtime, knobs.

Each field is documented once, in its `help`; the server derives its flags and environment names
from these fields (see batchserve.server.options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batchserve.model_repo.repository import DEFAULT_REPOSITORY
from batchserve.serving.knobs import KnobOverrides


@dataclass(frozen=True)
class ServingConfig:
    model_repo: Path = field(default=DEFAULT_REPOSITORY, metadata={"help": "model repository directory"})
    models: tuple[str, ...] = field(default=(), metadata={"help": "models to load (default: every built model)"})
    default_model: str | None = field(default=None, metadata={"help": "model used when a request names none"})
    simulate_model: str | None = field(
        default=None,
        metadata={"help": "serve a simulated accelerator named 'simulated': 'A+B' = a batch of n costs A + B*n ms"},
    )
    preprocess_threads: int = field(default=0, metadata={"help": "image decode threads (0: one per core)"})
    execution_providers: tuple[str, ...] = field(
        default=(), metadata={"help": "ONNX Runtime providers, overriding each model's list"}
    )
    trt_engine_cache_path: str | None = field(
        default=None, metadata={"help": "where TensorRT keeps built engines (they take minutes to build)"}
    )
    knobs: KnobOverrides = field(default_factory=KnobOverrides, metadata={"knobs": True})
    """Server-wide model knob overrides; their flags come from the knobs themselves (serving.knobs)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_repo", Path(self.model_repo))
        if self.preprocess_threads < 0:
            raise ValueError(f"preprocess_threads must be >= 0, not {self.preprocess_threads}")
