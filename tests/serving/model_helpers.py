"""Small model repositories for cache and fallback tests: copies of the tiny model under other
names, with fewer classes, a `fallback` knob, or a graph whose batches fail (NaN scores)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

from batchserve.model_repo.repository import DEFAULT_REPOSITORY
from batchserve.model_repo.synthetic import build_tiny
from batchserve.serving.classifier import ImageInput

TINY = DEFAULT_REPOSITORY / "tiny"


def add_model(repo: Path, name: str, *, classes: int = 1000, seed: int = 0, fallback: str | None = None,
              broken: bool = False) -> Path:
    """`<repo>/<name>`: tiny's config under another name, version 1 built from a seeded graph.
    `broken`: every score the graph gives is NaN, so each of its batches fails."""
    directory = repo / name
    (directory / "1").mkdir(parents=True)
    config = TINY.joinpath("config.toml").read_text()
    config = config.replace('name = "tiny"', f'name = "{name}"').replace("classes = 1000", f"classes = {classes}")
    if fallback is not None:
        config = config.replace("[batching]\n", f'[batching]\nfallback = "{fallback}"\n')
    (directory / "config.toml").write_text(config)
    labels = TINY.joinpath("labels.txt").read_text().splitlines()[:classes]
    (directory / "labels.txt").write_text("\n".join(labels) + "\n")
    graph = build_tiny(seed, num_classes=classes)
    if broken:
        for initializer in graph.graph.initializer:
            if initializer.name == "fc.bias":
                nan = np.full(classes, np.nan, dtype=np.float32)
                initializer.CopyFrom(numpy_helper.from_array(nan, "fc.bias"))
    onnx.save(graph, str(directory / "1" / "model.onnx"))
    return directory


def rebuild(repo: Path, name: str, seed: int) -> None:
    """Replace version 1's graph in place (another seed: other scores), as a rebuild would."""
    onnx.save(build_tiny(seed), str(repo / name / "1" / "model.onnx"))


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> ImageInput:
    """A JPEG whose pixels (and so bytes and scores) differ with `seed`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return ImageInput(buffer.getvalue(), f"photo-{seed}.jpg", "image/jpeg")
