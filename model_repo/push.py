"""`batchserve models push`: one model of a local repository uploaded to an object store repository.

The model's folder keeps its layout under the target prefix: `<prefix>/<folder>/config.toml`,
its labels file and `<version>/...`. Each version is checked first (model_repo/checks.py), so a
broken build never reaches the bucket. Version files go up first and config.toml last: a server
that syncs while a push runs sees either the old config or a new one whose files are all there.
Files whose bytes the bucket already has (same MD5 as the object's ETag) are not uploaded again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchserve.model_repo.checks import check_version
from batchserve.model_repo.errors import ModelLoadError
from batchserve.model_repo.location import ObjectStoreLocation
from batchserve.model_repo.object_store import ObjectStore, RemoteObject
from batchserve.model_repo.repository import ModelSpec, scan_repository

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PushReport:
    target: ObjectStoreLocation
    name: str
    versions: tuple[int, ...]
    uploaded: tuple[str, ...]
    unchanged: tuple[str, ...]

    def __str__(self) -> str:
        versions = ", ".join(map(str, self.versions))
        return (f"pushed {self.name} (versions {versions}) to {self.target}: {len(self.uploaded)} file(s) uploaded, "
                f"{len(self.unchanged)} already there")


def files_to_push(spec: ModelSpec, versions: list[int]) -> list[tuple[Path, str]]:
    """(local file, path relative to the repository) in upload order: versions, labels, config.toml."""
    folder = spec.directory.name
    files: list[tuple[Path, str]] = []
    for version in versions:
        version_dir = spec.directory / str(version)
        for path in sorted(version_dir.rglob("*")):
            parts = path.relative_to(version_dir).parts
            if path.is_file() and not path.is_symlink() and not any(p.startswith(".") for p in parts):
                files.append((path, "/".join((folder, str(version), *parts))))
    files.append((spec.labels_path, f"{folder}/{spec.labels_file}"))
    files.append((spec.directory / "config.toml", f"{folder}/config.toml"))
    return files


def push_model(repository: Path, name: str, target: ObjectStoreLocation, *, versions: list[int] | None = None,
               endpoint_url: str | None = None, progress: Progress = print) -> PushReport:
    """Check and upload `name` (its `versions`, default every built one). Raises ModelLoadError
    (no such model, a failed check) or ObjectStoreError."""
    specs = scan_repository(repository)
    if name not in specs:
        raise ModelLoadError(f"there is no model {name!r} in {repository} "
                             f"(models there: {', '.join(sorted(specs)) or 'none'})")
    spec = specs[name]
    built = spec.built_versions()
    chosen = sorted(set(versions)) if versions else built
    if not chosen:
        raise ModelLoadError(f"model {name!r} has no built version in {spec.directory}; "
                             f"run `batchserve models build {name}` first")
    missing = [v for v in chosen if v not in built]
    if missing:
        raise ModelLoadError(f"model {name!r} has no built version {', '.join(map(str, missing))} in "
                             f"{spec.directory} (built: {', '.join(map(str, built)) or 'none'})")
    for version in chosen:
        check_version(spec, version)
    store = ObjectStore(target, endpoint_url)
    remote = store.list(f"{spec.directory.name}/")
    uploaded: list[str] = []
    unchanged: list[str] = []
    for path, relative in files_to_push(spec, chosen):
        if _same_bytes(path, remote.get(relative)):
            unchanged.append(relative)
            continue
        progress(f"  uploading {relative} ({path.stat().st_size / 1e6:.1f} MB)")
        store.upload(path, relative)
        uploaded.append(relative)
    return PushReport(target, name, tuple(chosen), tuple(uploaded), tuple(unchanged))


def _same_bytes(path: Path, remote: RemoteObject | None) -> bool:
    if remote is None or remote.size != path.stat().st_size:
        return False
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == remote.etag
