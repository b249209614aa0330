"""A drift reference: what one model's answers looked like while all was well, as a JSON file.

The server compares its rolling window of answers against one (serving/drift.py); it is either
the first answers after start or a file `batchserve drift save-reference` wrote from the event
store (events/drift_source.py). Both hold the same numbers, so this module owns the format and
the input-size buckets both sides count in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

__all__ = [
    "FORMAT",
    "SHORT_SIDE_BUCKETS",
    "SHORT_SIDE_EDGES",
    "DriftReference",
    "ReferenceFileError",
    "load_reference",
    "now_iso",
    "save_reference",
    "short_side_bucket",
]

FORMAT = "batchserve-drift-reference"
VERSION = 1

# Lower edges (pixels) of the buckets an image's shorter side falls in: thumbnails below the
# model's 224 crop, web images, phone screenshots, camera photos, and scans or panoramas.
SHORT_SIDE_EDGES = (224, 512, 1024, 2048)
SHORT_SIDE_BUCKETS = ("<224", "224-511", "512-1023", "1024-2047", ">=2048")


def short_side_bucket(width: int, height: int) -> int:
    """Index into SHORT_SIDE_BUCKETS of an image `width` x `height` pixels (bisect of
    SHORT_SIDE_EDGES, spelt out: this runs once per answer, on the request path)."""
    short = width if width < height else height
    if short < 512:
        return 0 if short < 224 else 1
    if short < 1024:
        return 2
    return 3 if short < 2048 else 4


class ReferenceFileError(ValueError):
    """A reference file that cannot be read or does not hold a drift reference."""


class DriftReference(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of one model's answers over the reference period."""

    model: str
    answers: int
    """Successful answers counted (each one image)."""
    classes: dict[int, int]
    """Top-1 class id -> answers."""
    mean_confidence: float
    """Mean top-1 score (softmax probability)."""
    confidence_threshold: float
    low_confidence_ratio: float
    """Share of answers whose top-1 score was under `confidence_threshold`."""
    short_sides: dict[str, int] = msgspec.field(default_factory=dict)
    """SHORT_SIDE_BUCKETS label -> answers whose image size is known (none: sent as tensors)."""
    brightness_mean: float | None = None
    """Mean pixel value (0-255) of the crops the model saw; the event store does not keep it."""
    source: str = ""
    """Where the counts come from, for people reading the file."""
    created_at: str = ""
    format: str = FORMAT
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"not a drift reference (format {self.format!r}, expected {FORMAT!r})")
        if self.version != VERSION:
            raise ValueError(f"drift reference version {self.version} is not supported "
                             f"(this batchserve reads {VERSION})")
        if self.answers < 1 or sum(self.classes.values()) != self.answers:
            raise ValueError(f"its class counts ({sum(self.classes.values())}) must add up to its answers "
                             f"({self.answers}), at least one")
        if any(count < 0 for count in self.classes.values()) or any(n < 0 for n in self.short_sides.values()):
            raise ValueError("counts must not be negative")
        unknown = sorted(set(self.short_sides) - set(SHORT_SIDE_BUCKETS))
        if unknown:
            raise ValueError(f"unknown short-side bucket(s) {', '.join(unknown)}")
        if not 0.0 <= self.mean_confidence <= 1.0 or not 0.0 <= self.low_confidence_ratio <= 1.0:
            raise ValueError("mean_confidence and low_confidence_ratio must be between 0 and 1")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_reference(reference: DriftReference, path: Path) -> None:
    """Written whole to a sibling file first, so a reader never sees half a reference."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(msgspec.json.format(msgspec.json.encode(reference), indent=2) + b"\n")
    partial.replace(path)


def load_reference(path: Path) -> DriftReference:
    """Raises ReferenceFileError naming the file and what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReferenceFileError(f"cannot read drift reference {path}: {exc.strerror or exc}") from None
    try:
        return msgspec.json.decode(data, type=DriftReference)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ReferenceFileError(f"{path} is not a usable drift reference: {exc}") from None
