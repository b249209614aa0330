"""The ledger of events that never reach the store: one counter per reason, one log line per burst.

Every event put is committed, waiting (in memory or the journal), or recorded here with why it
was not stored.  Some reasons keep a copy in the dead-letter directory (``kept``), where an
operator can inspect or re-queue it; the others are gone.  Every reason is listed from the start
so a dashboard sees a zero before the first loss, not a missing series.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Literal, get_args

from batchserve.events.ratelog import RateLimitedLog

__all__ = ["LOSS_REASONS", "LossLedger", "LossReason"]

LossReason = Literal[
    "rejected",  # the store refused the event for what it holds (kept)
    "unprocessable",  # preparing the event for the store raised (kept)
    "corrupt_line",  # a journal line that is not an event (kept as written)
    "torn_line",  # a journal line cut short by a crash (kept as written)
    "overflow",  # buffer and spill queue both full
    "journal_full",  # the journal reached its cap
    "journal_error",  # the disk refused the journal append
    "close_deadline",  # still unwritten when the shutdown deadline passed
    "after_close",  # put after the writer closed
    "invalid",  # put() was given something other than an Event
]
LOSS_REASONS: tuple[str, ...] = get_args(LossReason)


class LossLedger:
    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._counts: dict[str, int] = dict.fromkeys(LOSS_REASONS, 0)
        self._lines: dict[str, RateLimitedLog] = {}
        self.kept_total = 0  # of the lost events, those with a copy in the dead-letter directory
        self.gone_total = 0  # of the lost events, those without

    @property
    def counts(self) -> MappingProxyType[str, int]:
        return MappingProxyType(self._counts)

    @property
    def total(self) -> int:
        return self.kept_total + self.gone_total

    def record(self, reason: LossReason, n: int, detail: str, *, kept: bool) -> None:
        """Count ``n`` events lost for ``reason`` and log it, at most one line per reason every 5 s."""
        if n <= 0:
            return
        self._counts[reason] += n
        if kept:
            self.kept_total += n
        else:
            self.gone_total += n
        line = self._lines.get(reason)
        if line is None:
            line = self._lines[reason] = RateLimitedLog(self._log, logging.ERROR)
        line(
            "%d events not stored (%s): %s; %s (%d lost for this reason in total)",
            n,
            reason,
            detail,
            "a copy is in the dead-letter directory" if kept else "they are gone",
            self._counts[reason],
        )
