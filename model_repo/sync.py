"""An object store repository mirrored into a local cache directory, which is what the server reads.

Layout under the cache root: `<scheme>/<bucket>/<escaped prefix>/` holds `repository/` (the
mirror, an ordinary repository directory), `index.json` (the ETag and size each mirrored file was
downloaded with) and `.lock`.

A sync lists the prefix (or one model's folder), downloads only the objects whose ETag or size
differ from the index (or whose local file is missing or has another size), and deletes local
files the bucket no longer has. Downloads go to a staging folder first and move into the mirror
only once every one of them arrived, so a sync that fails half-way (a dropped connection, a
refused request) leaves the mirror as it was: the server never loads a version whose files come
from two different pushes. Object keys that would leave the mirror (`..`, empty components) are
skipped. A file lock serialises syncs of processes that share one cache directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchserve.model_repo.errors import ObjectStoreError
from batchserve.model_repo.location import ObjectStoreLocation
from batchserve.model_repo.object_store import ObjectStore, RemoteObject

log = logging.getLogger("batchserve.model_repo")

REPOSITORY_DIR = "repository"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
INDEX_FORMAT = 1


@dataclass(frozen=True)
class SyncReport:
    location: ObjectStoreLocation
    model: str | None  # the folder synced; None: the whole repository
    downloaded: tuple[str, ...]
    deleted: tuple[str, ...]
    unchanged: int
    skipped: tuple[str, ...] = ()  # keys that would leave the mirror

    def __str__(self) -> str:
        what = f"{self.location}/{self.model}" if self.model else str(self.location)
        text = (f"synced {what}: {len(self.downloaded)} downloaded, {len(self.deleted)} deleted, "
                f"{self.unchanged} unchanged")
        return text + (f", {len(self.skipped)} unsafe key(s) skipped" if self.skipped else "")


def is_safe_relative(path: str) -> bool:
    """A relative object path that stays inside the mirror: no empty, '.' or '..' components."""
    parts = path.split("/")
    return all(part not in ("", ".", "..") and "\\" not in part and "\0" not in part for part in parts)


class RepositoryCache:
    """One object store repository and its local mirror. `sync` blocks: run it in a worker thread."""

    def __init__(self, location: ObjectStoreLocation, cache_root: Path, *, endpoint_url: str | None = None) -> None:
        self.location = location
        self.endpoint_url = endpoint_url
        self.root = location.cache_dir(cache_root)
        self.directory = self.root / REPOSITORY_DIR
        self._store: ObjectStore | None = None

    @property
    def store(self) -> ObjectStore:
        if self._store is None:  # made on first use: creating a client reads credentials and files
            self._store = ObjectStore(self.location, self.endpoint_url)
        return self._store

    def sync(self, model: str | None = None) -> SyncReport:
        """Bring the mirror (or one model's folder of it) up to date with the bucket."""
        if model is not None and (not model or "/" in model or not is_safe_relative(model)):
            raise ValueError(f"{model!r} is not a model folder name")
        under = f"{model}/" if model else ""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"cannot create the model cache {self.directory}: {exc}") from exc
        with _file_lock(self.root / LOCK_FILE):
            _remove_stale_staging(self.root)
            listing = self.store.list(under)
            wanted = {path: obj for path, obj in listing.items() if is_safe_relative(path)}
            skipped = tuple(sorted(set(listing) - set(wanted)))
            for path in skipped:
                log.warning("%s: skipping the object %r: its key would leave the model cache", self.location, path)
            index = self._read_index()
            stale = [obj for path, obj in sorted(wanted.items()) if not self._is_current(obj, index)]
            try:
                downloaded = self._download(stale, index)
                deleted = self._delete_missing(under, wanted, index)
            finally:
                self._write_index(index)
        return SyncReport(self.location, model, downloaded, deleted, len(wanted) - len(stale), skipped)

    def _is_current(self, obj: RemoteObject, index: dict[str, Any]) -> bool:
        entry = index.get(obj.path)
        if entry != {"etag": obj.etag, "size": obj.size}:
            return False
        try:
            return (self.directory / obj.path).stat().st_size == obj.size
        except OSError:
            return False

    def _download(self, objects: list[RemoteObject], index: dict[str, Any]) -> tuple[str, ...]:
        """All of `objects` into staging, then into the mirror; nothing moves unless all arrived."""
        if not objects:
            return ()
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        try:
            arrived = [(self.store.download(obj.path, staging / str(n)), staging / str(n))
                       for n, obj in enumerate(objects)]
            for got, staged in arrived:
                target = self.directory / got.path
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, target)
                except OSError as exc:
                    raise ObjectStoreError(f"cannot place {got.path!r} of {self.location} in the model cache "
                                           f"at {target}: {exc}") from exc
                index[got.path] = {"etag": got.etag, "size": got.size}
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return tuple(got.path for got, _ in arrived)

    def _delete_missing(self, under: str, wanted: dict[str, RemoteObject], index: dict[str, Any]) -> tuple[str, ...]:
        scope = self.directory / under if under else self.directory
        deleted: list[str] = []
        if scope.is_dir():
            for path in sorted(scope.rglob("*"), reverse=True):  # children before their folders
                relative = path.relative_to(self.directory).as_posix()
                if path.is_dir() and not path.is_symlink():
                    if not any(path.iterdir()):
                        path.rmdir()
                elif relative not in wanted:
                    path.unlink()
                    deleted.append(relative)
            if under and not any(scope.iterdir()):
                scope.rmdir()
        for relative in [r for r in index if r.startswith(under) and r not in wanted]:
            del index[relative]
        return tuple(sorted(deleted))

    def _read_index(self) -> dict[str, Any]:
        try:
            raw = json.loads((self.root / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # no index (or a damaged one): every file is checked against the bucket again
        files = raw.get("files") if isinstance(raw, dict) and raw.get("format") == INDEX_FORMAT else None
        return dict(files) if isinstance(files, dict) else {}

    def _write_index(self, index: dict[str, Any]) -> None:
        text = json.dumps({"format": INDEX_FORMAT, "location": str(self.location), "files": index},
                          indent=1, sort_keys=True)
        temporary = self.root / f"{INDEX_FILE}.{os.getpid()}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.root / INDEX_FILE)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_staging(root: Path) -> None:
    """Staging folders a killed process left behind (the lock is held: no live sync owns one)."""
    for leftover in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
