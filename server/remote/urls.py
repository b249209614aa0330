"""An upstream's base URL as `--upstream` takes it: http(s)://host[:port][/prefix], nothing else."""

from __future__ import annotations

from urllib.parse import urlsplit


def upstream_url(text: str) -> str:
    """The URL without a trailing slash; ValueError saying what is wrong with it otherwise."""
    url = text.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0..65535
    except ValueError as exc:
        raise ValueError(f"upstream {text!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream {text!r} must be an http:// or https:// URL with a host, "
                         "e.g. http://10.0.0.5:8000")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"upstream {text!r} must not carry a query, a fragment or credentials "
                         "(the key goes in --upstream-api-key)")
    if port == 0:
        raise ValueError(f"upstream {text!r} has port 0")
    return url


def upstream_urls(texts: tuple[str, ...]) -> tuple[str, ...]:
    urls = tuple(upstream_url(t) for t in texts if t.strip())
    repeated = sorted({u for u in urls if urls.count(u) > 1})
    if repeated:
        raise ValueError(f"upstream {repeated[0]} is listed twice")
    return urls
