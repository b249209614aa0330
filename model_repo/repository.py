"""The model repository on disk: `<repo>/<model>/config.toml`, `labels.txt`, `<version>/model.onnx`.

Reading it is cheap and has no side effects, so `batchserve models list`, the server and the
build command all share this one parser.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

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
    output_kind: str = "logits"
    """"logits", or "probabilities" for a graph that ends in a softmax (see runner.Runner)."""
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
            if child.is_dir() and child.name.isascii() and child.name.isdigit() and (child / MODEL_FILENAME).is_file():
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


class _InputTable(msgspec.Struct, frozen=True):
    name: str = "input"
    shape: tuple[int, ...] = (3, 224, 224)


class _OutputTable(msgspec.Struct, frozen=True):
    name: str = "logits"
    classes: int = 1000
    kind: Literal["logits", "probabilities"] = "logits"


class _RuntimeTable(msgspec.Struct, frozen=True):
    execution_providers: tuple[str, ...] = DEFAULT_EXECUTION_PROVIDERS
    intra_op_threads: int = 0


class _ConfigFile(msgspec.Struct, frozen=True):
    """config.toml as written: its tables, typed. Keys it does not know are left alone, as notes."""

    name: str | None = None
    """None: the directory's name."""
    description: str = ""
    builder: str | None = None
    labels: str = "labels.txt"
    input: _InputTable = _InputTable()
    output: _OutputTable = _OutputTable()
    preprocessing: PreprocessConfig = PreprocessConfig()
    batching: dict[str, Any] = {}
    runtime: _RuntimeTable = _RuntimeTable()
    versions: VersionPolicy = VersionPolicy()


def parse_model_config(path: Path) -> ModelSpec:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    try:
        config = msgspec.convert(raw, _ConfigFile)
    except msgspec.ValidationError as exc:  # the message ends with the key's path, e.g. `$.output.classes`
        raise ModelLoadError(f"{path}: {exc}") from None
    fed = config.preprocessing.sample_shape
    if tuple(config.input.shape) != fed:  # V2 clients send [N, *shape]; images become [N, *fed]
        raise ModelLoadError(
            f"{path}: [input] shape {list(config.input.shape)} does not match [preprocessing], which makes "
            f"{list(fed)} (crop {config.preprocessing.crop}, layout {config.preprocessing.layout})"
        )
    return ModelSpec(
        name=path.parent.name if config.name is None else config.name,
        directory=path.parent,
        description=config.description,
        builder=config.builder,
        labels_file=config.labels,
        input_name=config.input.name,
        input_shape=config.input.shape,
        output_name=config.output.name,
        classes=config.output.classes,
        output_kind=config.output.kind,
        preprocessing=config.preprocessing,
        batching=dict(config.batching),
        execution_providers=config.runtime.execution_providers,
        intra_op_threads=config.runtime.intra_op_threads,
        versions=config.versions,
    )


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
