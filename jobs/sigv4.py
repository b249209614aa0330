"""AWS Signature Version 4 for the short path's requests (jobs/short_path.py), as botocore's
`SigV4Auth` (SQS) and `S3SigV4Auth` (S3) sign them, byte for byte (tests/jobs/test_sigv4.py).

botocore's signer builds an `AWSRequest`, a header map and the key derivation anew for every call:
about 80-90 µs each, on the CPU a worker's model uses, for a call every image makes. This one
derives the signing key once a day per service and region, and signs only what the short path
sends: a path without a query string, a body in memory, headers without repeats. The payload is
always signed (its SHA-256 is part of the signature), as botocore does for these requests.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, urlsplit

from botocore.utils import normalize_url_path

ALGORITHM = "AWS4-HMAC-SHA256"
# Never signed (botocore's SIGNED_HEADERS_BLACKLIST): proxies and tracing may change them.
_UNSIGNED = frozenset({"expect", "user-agent", "x-amzn-trace-id"})
# Set by the signer: a caller's own copies are dropped, as botocore drops them.
_ADDED_LOWER = frozenset({"x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "authorization"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SigV4Signer:
    """Signs requests to one service (`s3` signs its payload hash into a header too) in one region."""

    def __init__(self, service: str, region: str) -> None:
        self.service = service
        self.region = region
        self._s3 = service == "s3"
        self._key: tuple[str, str, bytes] = ("", "", b"")  # (secret, day, signing key)

    def header_lines(self, method: str, url: str, headers: dict[str, str], body: bytes, access_key: str,
                     secret_key: str, token: str | None, now: datetime | None = None) -> str:
        """The request's header lines (`Name: value\\r\\n` each), the signature's among them."""
        base, path = _split(url)
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        payload_hash = hashlib.sha256(body).hexdigest()
        added = {"X-Amz-Date": stamp}
        if token:
            added["X-Amz-Security-Token"] = token
        if self._s3:
            added["X-Amz-Content-SHA256"] = payload_hash
        sent = {name: value for name, value in headers.items() if name.lower() not in _ADDED_LOWER}
        sent.update(added)
        signed = {name.lower(): " ".join(value.split()) for name, value in sent.items()
                  if name.lower() not in _UNSIGNED}
        signed.setdefault("host", _host(base))
        names = sorted(signed)
        signed_headers = ";".join(names)
        canonical = "\n".join((
            method.upper(),
            path if self._s3 else _canonical_path(path),
            "",  # no query string on this path
            "".join(f"{name}:{signed[name]}\n" for name in names),
            signed_headers,
            payload_hash,
        ))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        string_to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(secret_key, day), string_to_sign.encode(), hashlib.sha256).hexdigest()
        sent["Authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, "
                                 f"Signature={signature}")
        return "".join(f"{name}: {value}\r\n" for name, value in sent.items())

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        cached_secret, cached_day, key = self._key
        if cached_secret != secret_key or cached_day != day:
            key = _derive(f"AWS4{secret_key}".encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _derive(key, part)
            self._key = (secret_key, day, key)
        return key


def signable(url: str) -> bool:
    """Whether this signer handles `url` (else botocore's signs it): no query string, no fragment."""
    return "?" not in url and "#" not in url


def _derive(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _split(url: str) -> tuple[str, str]:
    """(scheme://authority, path) of `url`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", parts.path or "/"


@lru_cache(maxsize=64)
def _host(base: str) -> str:
    """The Host header as botocore signs it: the port only when it is not the scheme's default."""
    parts = urlsplit(base)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


@lru_cache(maxsize=256)
def _canonical_path(path: str) -> str:
    """Every service but S3 signs the normalised path, percent-encoded once more."""
    return quote(normalize_url_path(path), safe="/~")
