"""Bounded LRU of dimension surrogate keys, so steady traffic skips the dimension upserts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping

__all__ = ["KeyCache"]


class KeyCache:
    """Maps (dimension, natural key) to the surrogate key the store assigned.

    Filled only after the transaction that created or read the keys committed: a key cached from
    a rolled-back transaction would point at a row that does not exist.  Stores clear it when a
    foreign key check fails (dimension rows deleted behind the writer's back).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, Hashable], int] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, dim: str, nks: Iterable[Hashable]) -> dict[Hashable, int]:
        """The cached keys among ``nks`` (the others are misses)."""
        found: dict[Hashable, int] = {}
        for nk in nks:
            key = self._entries.get((dim, nk))
            if key is None:
                self.misses += 1
                continue
            self._entries.move_to_end((dim, nk))
            found[nk] = key
            self.hits += 1
        return found

    def store(self, dim: str, keys: Mapping[Hashable, int]) -> None:
        for nk, key in keys.items():
            self._entries[(dim, nk)] = key
            self._entries.move_to_end((dim, nk))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
