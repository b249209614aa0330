"""What `batchserve classify` is asked to classify: files, folders, globs and (for jobs) s3:// URIs.

Globs are expanded here rather than by the shell, so `'photos/**/*.jpg'` works quoted and on shells
that do not expand `**`. Folders are walked recursively. Only files whose extension names an image
format the server decodes are kept, whether found in a folder or named one by one (a shell's `*`
names every file of a folder, notes and all); the others are counted as skipped. Each file is listed
once however many arguments reach it, in a stable order: arguments in the order given, each
argument's files sorted.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["IMAGE_TYPES", "BadInput", "Inputs", "S3Object", "S3Prefix", "collect_inputs", "content_type_of"]

# Extension → the Content-Type sent with the raw body.
IMAGE_TYPES: dict[str, str] = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
_GLOB_CHARS = frozenset("*?[")


class BadInput(ValueError):
    """An argument names nothing usable (a missing file, s3:// without --jobs, a malformed URI)."""


@dataclass(frozen=True)
class S3Object:
    """One object, sent in a job's `{"images": [...]}`."""

    uri: str


@dataclass(frozen=True)
class S3Prefix:
    """Every object under a prefix, sent as a job's `{"prefix": ...}`; the server lists it."""

    uri: str


@dataclass
class Inputs:
    files: list[str] = field(default_factory=list)  # local image paths as the user named them (normalised)
    s3_objects: list[S3Object] = field(default_factory=list)
    s3_prefixes: list[S3Prefix] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files left out: not an image by their extension
    empty_globs: list[str] = field(default_factory=list)  # patterns that matched nothing

    @property
    def count(self) -> int:
        """Images known before the server is asked (a prefix counts as none until its job says)."""
        return len(self.files) + len(self.s3_objects)

    @property
    def empty(self) -> bool:
        return not (self.files or self.s3_objects or self.s3_prefixes)


def content_type_of(path: str) -> str:
    return IMAGE_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_TYPES


def collect_inputs(arguments: list[str], *, allow_s3: bool) -> Inputs:
    """Expand every argument; raises BadInput for one that names nothing (a glob may match nothing)."""
    inputs = Inputs()
    seen: set[str] = set()

    def add_file(path: str) -> None:
        identity = os.path.realpath(path)
        if identity not in seen:
            seen.add(identity)
            (inputs.files if is_image(path) else inputs.skipped).append(path)

    for argument in arguments:
        if argument.startswith("s3://"):
            _add_s3(argument, inputs, allow_s3=allow_s3)
        elif os.path.exists(argument):  # before globbing: `photo[1].jpg` may be a name
            _add_path(os.path.normpath(argument), add_file)
        elif _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                inputs.empty_globs.append(argument)
            for match in matches:
                _add_path(os.path.normpath(match), add_file)
        else:
            raise BadInput(f"{argument}: no such file or folder")
    return inputs


def _add_path(path: str, add_file: Callable[[str], None]) -> None:
    if os.path.isdir(path):
        for folder, subfolders, names in os.walk(path):
            subfolders.sort()
            for name in sorted(names):
                add_file(os.path.normpath(os.path.join(folder, name)))
    elif os.path.isfile(path):
        add_file(path)


def _add_s3(uri: str, inputs: Inputs, *, allow_s3: bool) -> None:
    if not allow_s3:
        raise BadInput(f"{uri}: s3:// inputs are classified by the server's workers; add --jobs (queue backend)")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise BadInput(f"{uri}: an s3:// URI names a bucket: s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    if not key or key.endswith("/"):
        inputs.s3_prefixes.append(S3Prefix(uri if key else uri.rstrip("/") + "/"))
    else:
        inputs.s3_objects.append(S3Object(uri))
