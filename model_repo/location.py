"""Where a model repository lives: a local directory, or a prefix in an object store bucket.

`--model-repo` takes a path, `file://PATH`, `s3://BUCKET/PREFIX` or `gs://BUCKET/PREFIX`. A local
repository is read in place; an object store one is synced into a local cache first (see
model_repo/sync.py), so everything that reads a repository keeps reading a directory.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ObjectStoreScheme = Literal["s3", "gs"]
OBJECT_STORE_SCHEMES: tuple[ObjectStoreScheme, ...] = ("s3", "gs")
# S3's rule, which GCS's (without dots) also satisfies: lowercase letters, digits, dots and hyphens,
# 3 to 63 characters, starting and ending with a letter or digit. GCS also allows underscores.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
URL_FORMS = "a directory, file://PATH, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"


@dataclass(frozen=True)
class ObjectStoreLocation:
    """`scheme://bucket/prefix`; the prefix has no leading or trailing slash ('' = the bucket's root)."""

    scheme: ObjectStoreScheme
    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, relative: str) -> str:
        """The object key of a path relative to the repository, e.g. `tiny/1/model.onnx`."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @property
    def key_prefix(self) -> str:
        """What every key of the repository starts with: the prefix and a slash ('' at the root)."""
        return f"{self.prefix}/" if self.prefix else ""

    def cache_dir(self, cache_root: Path) -> Path:
        """This repository's own folder under the cache root. The prefix is one escaped path
        component, so no two repositories (say `repo` and `repo/old`) ever share or nest folders."""
        return cache_root / self.scheme / self.bucket / urllib.parse.quote(self.key_prefix or "/", safe="")


RepositoryLocation = Path | ObjectStoreLocation


def parse_object_store_url(raw: str) -> ObjectStoreLocation:
    """`s3://BUCKET/PREFIX` or `gs://BUCKET/PREFIX`; ValueError saying what is wrong otherwise."""
    parsed = urllib.parse.urlsplit(raw.strip())
    scheme = parsed.scheme.lower()
    if scheme not in OBJECT_STORE_SCHEMES:
        raise ValueError(f"{raw!r} is not an object store URL: use s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    bucket = parsed.netloc
    if not bucket:
        raise ValueError(f"{raw!r} names no bucket: use {scheme}://BUCKET/PREFIX")
    if not _BUCKET.match(bucket) and not (scheme == "gs" and _BUCKET.match(bucket.replace("_", "-"))):
        raise ValueError(f"{bucket!r} in {raw!r} is not a valid bucket name "
                         "(3-63 lowercase letters, digits, dots and hyphens)")
    if parsed.query or parsed.fragment:
        raise ValueError(f"{raw!r}: an object store URL takes no query or fragment")
    parts = [p for p in parsed.path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{raw!r}: the prefix may not contain '.' or '..'")
    return ObjectStoreLocation(scheme, bucket, "/".join(parts))


def parse_repository(raw: str | RepositoryLocation) -> RepositoryLocation:
    """A `--model-repo` value: a Path for a directory (given as a path or `file://`), an
    ObjectStoreLocation for `s3://` and `gs://`. ValueError for any other URL."""
    if isinstance(raw, Path | ObjectStoreLocation):
        return raw
    text = raw.strip()
    if not text:
        raise ValueError(f"the model repository is empty: give {URL_FORMS}")
    scheme = urllib.parse.urlsplit(text).scheme.lower() if "://" in text else ""
    if not scheme:
        return Path(text)
    if scheme == "file":
        parsed = urllib.parse.urlsplit(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{text!r}: a file:// URL names a local path (file:///PATH), "
                             f"not the host {parsed.netloc!r}")
        if not parsed.path:
            raise ValueError(f"{text!r} names no path: use file:///PATH")
        return Path(urllib.parse.unquote(parsed.path))
    if scheme in OBJECT_STORE_SCHEMES:
        return parse_object_store_url(text)
    raise ValueError(f"unsupported model repository {text!r}: give {URL_FORMS}")
