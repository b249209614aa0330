"""The result cache's configuration (one section of `batchserve serve`'s and `batchserve worker`'s
settings; their flags and `BATCHSERVE_<NAME>` variables derive from these fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

CacheKind = Literal["off", "memory", "redis"]
DEFAULT_KEY_PREFIX = "batchserve:cache:"


@dataclass(frozen=True)
class CacheConfig:
    cache: CacheKind = field(default="off", metadata={
        "help": "answer an image seen before from its cached scores: 'memory' (this process) or 'redis' (shared "
                "by every replica naming the same Redis, with --cache-redis-url)"})
    cache_max_bytes: int = field(default=256 * 1024 * 1024, metadata={
        "help": "memory cache: bytes it may hold; past them the least recently used answers go first"})
    cache_ttl_s: float = field(default=3600.0, metadata={
        "help": "seconds an answer stays cached (0: until evicted)"})
    cache_redis_url: str | None = field(default=None, metadata={
        "help": "Redis for --cache redis, e.g. redis://10.0.0.7:6379/0"})
    cache_key_prefix: str = field(default=DEFAULT_KEY_PREFIX, metadata={
        "help": "prefix of the cache's Redis keys (deployments sharing one Redis keep apart by it)"})
    cache_redis_timeout_s: float = field(default=0.1, metadata={
        "help": "bound on one Redis call of the cache; past it the image is classified as if not cached"})

    def __post_init__(self) -> None:
        if isinstance(self.cache_max_bytes, bool) or not isinstance(self.cache_max_bytes, int) \
                or self.cache_max_bytes < 1:
            raise ValueError(f"cache_max_bytes must be a positive integer, not {self.cache_max_bytes!r}")
        if not math.isfinite(self.cache_ttl_s) or self.cache_ttl_s < 0:
            raise ValueError(f"cache_ttl_s must be a finite number >= 0, not {self.cache_ttl_s!r}")
        if not math.isfinite(self.cache_redis_timeout_s) or not 0 < self.cache_redis_timeout_s <= 10:
            raise ValueError(f"cache_redis_timeout_s must be in (0, 10], not {self.cache_redis_timeout_s!r}")
        if self.cache == "redis" and not self.cache_redis_url:
            raise ValueError("--cache redis needs the Redis to use: --cache-redis-url URL "
                             "(or BATCHSERVE_CACHE_REDIS_URL)")

    @property
    def enabled(self) -> bool:
        return self.cache != "off"
