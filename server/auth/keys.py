"""API keys as callers present them: their format, their digest, their scopes and rate limits.

A key is `bsk_` followed by 43 URL-safe characters (32 random bytes from `secrets`). The server
and the database only ever hold its SHA-256; the key itself is printed once, when created.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

KEY_PREFIX = "bsk_"
_KEY_BYTES = 32
# Longer headers are refused unread: nothing that long is a key, and hashing it would be wasted work.
MAX_KEY_LENGTH = 256

Scope = Literal["classify", "stats", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Names events already use for callers without a valid key: a key may not take them.
RESERVED_PREFIXES = ("key-",)
RESERVED_NAMES = frozenset({"anonymous", "admin-key"})
BOOTSTRAP_NAME = "admin-key"  # the --admin-key caller, as events name it

_RATE = re.compile(r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>s|sec|second|m|min|minute|h|hour)\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def key_digest(key: str) -> str:
    """The hex SHA-256 that identifies a key in the database."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"a key name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                         f"not {name!r}")
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        raise ValueError(f"{name!r} is reserved for callers without a key of their own")
    return name


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """`classify,stats` → ('classify', 'stats'), in the canonical order, each once."""
    given = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(given - set(SCOPES))
    if unknown or not given:
        raise ValueError(f"scopes are a comma-separated list of {', '.join(SCOPES)}, not {text!r}")
    return tuple(s for s in SCOPES if s in given)


def parse_rate(text: str) -> float:
    """`20/s`, `600/min`, `1000/h` → requests per second."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"a rate is COUNT/s, COUNT/min or COUNT/h, e.g. 20/s, not {text!r}")
    rate = float(match["count"]) / _UNIT_SECONDS[match["unit"].lower()]
    if not rate > 0:
        raise ValueError(f"a rate must be above zero, not {text!r}")
    return rate


def format_rate(per_s: float) -> str:
    for unit, seconds in (("s", 1), ("min", 60), ("h", 3600)):
        count = per_s * seconds
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}/{unit}"
    return f"{per_s:.4g}/s"


def default_burst(per_s: float) -> int:
    """Two seconds' worth of requests, at least one: short bursts pass, a steady flood does not."""
    return max(1, math.ceil(2 * per_s))


@dataclass(frozen=True)
class Identity:
    """A caller whose key the server recognised."""

    name: str
    scopes: frozenset[str]
    rate_per_s: float | None = None  # None: no rate limit
    burst: int | None = None
    expires_at: datetime | None = None

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at
