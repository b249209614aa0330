"""The labelled sample photos that ship inside the package, so the load tools have a default
workload wherever batchserve is installed (a wheel holds no checkout to point into)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_IMAGES = Path(__file__).resolve().parent / "sample_images"
"""chelsea.jpg, coffee.jpg and rocket.jpg, with manifest.toml (their expected classes) and LICENSES.md."""

SAMPLE_PHOTO = SAMPLE_IMAGES / "chelsea.jpg"
"""The one photo a single-image benchmark posts."""
