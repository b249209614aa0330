"""Progress of a bulk run on stderr, and its closing summary.

On a terminal one line redraws in place (done/total, rate, ETA, failures) at most ten times a
second; elsewhere (a log file, CI) a plain line every `interval_s`, so logs stay readable. `quiet`
keeps only the summary. The clock is injectable so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "format_duration"]

_REDRAW_S = 0.1
_BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(self, stream: TextIO, total: int | None, *, tty: bool, quiet: bool = False,
                 interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.total = total  # None while unknown (a job over an s3 prefix, before the server counts it)
        self.tty, self.quiet, self.interval_s = tty, quiet, interval_s
        self.clock = clock
        self.started = clock()
        self.ok = 0
        self.failed = 0
        self.retries = 0
        self._shown_at: float | None = None
        self._drawn = False

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def add(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.show()

    def retried(self) -> None:
        self.retries += 1
        self.show()

    def set_counts(self, ok: int, failed: int, total: int | None = None) -> None:
        """For jobs, whose counts come from the server."""
        self.ok, self.failed = ok, failed
        if total is not None:
            self.total = total
        self.show()

    def line(self) -> str:
        rate = self.rate()
        total = "?" if self.total is None else str(self.total)
        parts = [f"{self.done}/{total}", f"{rate:.1f} img/s"]
        if self.total is not None and rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        parts.append(f"{self.failed} failed")
        if self.retries:
            parts.append(f"{self.retries} retries")
        text = "  ".join(parts)
        if self.tty and self.total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * self.done // self.total)
            text = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {text}"
        return text

    def show(self, *, force: bool = False) -> None:
        if self.quiet:
            return
        now = self.clock()
        wait = _REDRAW_S if self.tty else self.interval_s
        if not force and self._shown_at is not None and now - self._shown_at < wait:
            return
        if not force and self._shown_at is None and not self.tty and now - self.started < wait:
            return  # a short run in a log prints its summary alone
        self._shown_at = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
            self._drawn = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a warning), not overwritten by the bar."""
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, skipped: int, extra: str = "") -> str:
        """Clear the bar and print the summary line; returns it."""
        self._clear()
        elapsed = self.clock() - self.started
        summary = (f"{self.ok} ok, {self.failed} failed, {skipped} skipped in {elapsed:.1f} s "
                   f"({self.rate():.1f} img/s){extra}")
        self.stream.write(summary + "\n")
        self.stream.flush()
        return summary

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False
