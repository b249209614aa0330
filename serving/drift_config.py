"""Drift monitoring's settings (serving/drift.py): `batchserve serve --drift-*` and BATCHSERVE_DRIFT_*."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batchserve.events.drift_reference import DriftReference, load_reference


@dataclass(frozen=True)
class DriftConfig:
    drift: bool = field(default=True, metadata={
        "help": "watch each model's answers for drift (class mix PSI, confidence, input statistics) on /metrics"})
    drift_window: int = field(default=1000, metadata={
        "help": "answers per model in the rolling window compared against the reference"})
    drift_reference_size: int = field(default=1000, metadata={
        "help": "without a reference file, the first this many answers of a model after start are its reference"})
    drift_reference: tuple[Path, ...] = field(default=(), metadata={
        "help": "reference files written by `batchserve drift save-reference` (comma-separated, one per model); "
                "models without one use their first answers"})
    drift_bins: int = field(default=20, metadata={
        "help": "the reference's most frequent classes each get a PSI bin (so does a class holding 1/N of the "
                "window); the rest share one"})
    drift_confidence_threshold: float = field(default=0.5, metadata={
        "help": "top-1 score under which an answer counts as low-confidence"})

    def __post_init__(self) -> None:
        for name in ("drift_window", "drift_reference_size", "drift_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0.0 < self.drift_confidence_threshold < 1.0:
            raise ValueError(f"drift_confidence_threshold must be between 0 and 1, not "
                             f"{self.drift_confidence_threshold:g}")
        self.references()  # a file that cannot be used stops the server at start, with the reason

    def references(self) -> dict[str, DriftReference]:
        """The reference files by the model they describe. Raises ValueError (ReferenceFileError)
        for a file that cannot be read, or two files of one model."""
        found: dict[str, tuple[Path, DriftReference]] = {}
        for path in self.drift_reference:
            reference = load_reference(path)
            if reference.model in found:
                raise ValueError(f"drift references {found[reference.model][0]} and {path} both describe "
                                 f"model {reference.model!r}")
            found[reference.model] = (path, reference)
        return {model: reference for model, (_, reference) in found.items()}
