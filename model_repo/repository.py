"""The model repository on disk: `<repo>/<model>/config.toml`, `labels.txt`, `<version>/model.onnx`.

Reading it is cheap and has no side effects, so `batchserve models list`, the server and the
build command all share this one parser.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchserve.model_repo.errors import ModelLoadError, ModelNotFound
from batchserve.model_repo.preprocess import PreprocessConfig

DEFAULT_REPOSITORY = Path(__file__).resolve().parent / "models"
MODEL_FILENAME = "model.onnx"
DEFAULT_EXECUTION_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class VersionPolicy:
    """Which built versions the server loads: the newest `latest`, or exactly `specific`."""

    policy: str = "latest"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.policy not in ("latest", "specific"):
            raise ValueError(f"version policy must be 'latest' or 'specific', not {self.policy!r}")
        if self.policy == "latest" and self.latest < 1:
            raise ValueError("versions.latest must be >= 1")

    def select(self, built: list[int]) -> list[int]:
        if self.policy == "specific":
            return [v for v in sorted(built) if v in self.specific]
        return sorted(built)[-self.latest :]


@dataclass(frozen=True)
class ModelSpec:
    """One model directory's config.toml, typed. Batching knobs stay a plain mapping here:
    the server merges them with env and CLI overrides before building a BatchingConfig."""

    name: str
    directory: Path
    description: str = ""
    builder: str | None = None
    labels_file: str = "labels.txt"
    input_name: str = "input"
    input_shape: tuple[int, ...] = (3, 224, 224)
    output_name: str = "logits"
    classes: int = 1000
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    batching: dict[str, Any] = field(default_factory=dict)
    execution_providers: tuple[str, ...] = DEFAULT_EXECUTION_PROVIDERS
    intra_op_threads: int = 0
    versions: VersionPolicy = field(default_factory=VersionPolicy)

    @property
    def labels_path(self) -> Path:
        return self.directory / self.labels_file

    def model_path(self, version: int) -> Path:
        return self.directory / str(version) / MODEL_FILENAME

    def built_versions(self) -> list[int]:
        """Integer-named subdirectories that hold a model file, ascending."""
        found = []
        for child in self.directory.iterdir():
            if child.is_dir() and child.name.isdigit() and (child / MODEL_FILENAME).is_file():
                found.append(int(child.name))
        return sorted(found)

    def servable_versions(self) -> list[int]:
        return self.versions.select(self.built_versions())

    def read_labels(self) -> list[str]:
        try:
            labels = self.labels_path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelLoadError(f"cannot read labels for {self.name}: {exc}") from exc
        if len(labels) != self.classes:
            raise ModelLoadError(
                f"{self.labels_path} has {len(labels)} labels but the model has {self.classes} classes"
            )
        return labels


def _section(raw: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: [{name}] must be a table")
    return value


def parse_model_config(path: Path) -> ModelSpec:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    inp = _section(raw, "input", path)
    out = _section(raw, "output", path)
    pre = _section(raw, "preprocessing", path)
    runtime = _section(raw, "runtime", path)
    versions = _section(raw, "versions", path)
    try:
        return ModelSpec(
            name=str(raw.get("name", path.parent.name)),
            directory=path.parent,
            description=str(raw.get("description", "")),
            builder=raw.get("builder"),
            labels_file=str(raw.get("labels", "labels.txt")),
            input_name=str(inp.get("name", "input")),
            input_shape=tuple(int(d) for d in inp.get("shape", (3, 224, 224))),
            output_name=str(out.get("name", "logits")),
            classes=int(out.get("classes", 1000)),
            preprocessing=PreprocessConfig(
                **{k: pre[k] for k in ("resize_short_side", "crop", "mean", "std", "max_pixels") if k in pre}
            ),
            batching=dict(_section(raw, "batching", path)),
            execution_providers=tuple(runtime.get("execution_providers", DEFAULT_EXECUTION_PROVIDERS)),
            intra_op_threads=int(runtime.get("intra_op_threads", 0)),
            versions=VersionPolicy(
                policy=str(versions.get("policy", "latest")),
                latest=int(versions.get("latest", 1)),
                specific=tuple(int(v) for v in versions.get("specific", ())),
            ),
        )
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


def scan_repository(root: Path = DEFAULT_REPOSITORY) -> dict[str, ModelSpec]:
    """Every `<root>/<model>/config.toml`, by model name (sorted)."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} does not exist")
    specs = {}
    for config in sorted(root.glob("*/config.toml")):
        spec = parse_model_config(config)
        specs[spec.name] = spec
    return specs


def find_model(root: Path, name: str) -> ModelSpec:
    specs = scan_repository(root)
    if name not in specs:
        raise ModelNotFound(name, None, sorted(specs))
    return specs[name]
