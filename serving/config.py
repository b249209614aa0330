"""What the serving core loads and how: the model repository, which models, ONNX Runtime, knobs.

Each field is documented once, in its `help`; the server derives its flags and environment names
from these fields (see batchserve.server.options).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batchserve.model_repo.location import URL_FORMS, ObjectStoreLocation, RepositoryLocation, parse_repository
from batchserve.model_repo.repository import DEFAULT_REPOSITORY
from batchserve.model_repo.sync import REPOSITORY_DIR
from batchserve.serving.knobs import KnobOverrides

if TYPE_CHECKING:
    RepositoryField = RepositoryLocation
else:
    # Litestar's signature models reach this config through the app state, and msgspec cannot build a
    # union of a custom type (Path) with a dataclass: at run time the field's annotation says nothing.
    # Its value is always what parse_repository returns (see __post_init__).
    RepositoryField = object


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/batchserve/models`, else `~/.cache/batchserve/models` (the temporary
    directory when there is no home, as for some container users)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            base = tempfile.gettempdir()
    return Path(base) / "batchserve" / "models"


@dataclass(frozen=True)
class ServingConfig:
    model_repo: RepositoryField = field(
        default=DEFAULT_REPOSITORY, metadata={"help": f"model repository: {URL_FORMS}", "parse": parse_repository}
    )
    model_cache_dir: Path = field(
        default_factory=default_cache_dir,
        metadata={"help": "where an s3:// or gs:// model repository is synced to "
                          "($XDG_CACHE_HOME/batchserve/models, else ~/.cache/batchserve/models)"},
    )
    model_repo_endpoint_url: str | None = field(
        default=None,
        metadata={"help": "object store endpoint for --model-repo (default: AWS's chain, e.g. AWS_ENDPOINT_URL, "
                          "for s3://; https://storage.googleapis.com for gs://)"},
    )
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
        object.__setattr__(self, "model_repo", parse_repository(self.model_repo))
        object.__setattr__(self, "model_cache_dir", Path(self.model_cache_dir).expanduser())
        if self.preprocess_threads < 0:
            raise ValueError(f"preprocess_threads must be >= 0, not {self.preprocess_threads}")

    @property
    def remote_repository(self) -> ObjectStoreLocation | None:
        return self.model_repo if isinstance(self.model_repo, ObjectStoreLocation) else None

    @property
    def repository_dir(self) -> Path:
        """The directory the repository is read from: itself, or the local mirror of an object store one."""
        if isinstance(self.model_repo, ObjectStoreLocation):
            return self.model_repo.cache_dir(self.model_cache_dir) / REPOSITORY_DIR
        return self.model_repo
