"""The cost of a batch, a + b·n, fitted online to the batches a batcher has run.

Least squares over a window of recent (batch size, service time) pairs: recent enough to follow a device
that speeds up after its warm-up or slows down under contention, long enough that timer jitter averages
out. Two things make a naive fit go wrong, and both are guarded against:

- a stalled process (a pause in the event loop, a descheduled VM) makes one batch look several times
  slower than it was: after a first fit, the batches far off the line (by their median deviation) are left
  out and the fit is taken again;
- steady full batches under load say nothing of how their cost splits into a and b, and the odd smaller
  batch among them would then decide the split alone: a new fit replaces the last one only when at least
  MIN_OTHER_SIZES batches are of another size than the window's commonest, and its standard error of a is
  small against the cost of a batch (MAX_RELATIVE_ERROR).

Until the first fit passes, there is no estimate at all, and callers fall back on their static settings.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CostEstimate", "CostFit", "fit"]

WINDOW = 128
"""Batches the fit is taken over."""
MIN_BATCHES = 8
"""Observations needed for a fit."""
SKIPPED_FIRST = 2
"""First batches left out: a runtime's first calls allocate, compile or tune and say nothing of the rest."""
MIN_OTHER_SIZES = 4
"""Batches of another size than the window's commonest needed for a fit."""
MAX_RELATIVE_ERROR = 0.1
"""A fit is taken when the standard error of a is at most this share of the mean batch's cost."""
OUTLIER_DEVIATIONS = 4.0
"""Batches further off the first line than this many (robust) standard deviations are left out."""


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """A batch of n samples is expected to take ``fixed_s + per_sample_s * n`` seconds."""

    fixed_s: float
    per_sample_s: float
    residual_s: float
    """Root mean square of the fit's errors over the batches it kept: how far one batch strays from the line."""
    batches: int
    """Observations behind it."""

    def seconds(self, size: int) -> float:
        return self.fixed_s + self.per_sample_s * size

    @property
    def fixed_ms(self) -> float:
        return self.fixed_s * 1000.0

    @property
    def per_sample_ms(self) -> float:
        return self.per_sample_s * 1000.0


class CostFit:
    """Collects (size, seconds) per batch; :attr:`estimate` refits lazily, at most once per new observation."""

    __slots__ = ("_window", "_skip", "_estimate", "_stale")

    def __init__(self, window: int = WINDOW, *, skip_first: int = SKIPPED_FIRST) -> None:
        if window < MIN_BATCHES:
            raise ValueError(f"window must hold at least {MIN_BATCHES} batches, got {window}")
        self._window: deque[tuple[int, float]] = deque(maxlen=window)
        self._skip = skip_first
        self._estimate: CostEstimate | None = None
        self._stale = False

    def add(self, size: int, seconds: float) -> None:
        if self._skip:
            self._skip -= 1
            return
        if size < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        self._window.append((size, seconds))
        self._stale = True

    @property
    def estimate(self) -> CostEstimate | None:
        if self._stale:
            self._stale = False
            fitted = fit(list(self._window))
            if fitted is not None:
                self._estimate = fitted
        return self._estimate


@dataclass(frozen=True, slots=True)
class _Line:
    a: float
    b: float
    mean_n: float
    mean_d: float
    sxx: float


def _least_squares(observations: Sequence[tuple[int, float]]) -> _Line | None:
    count = len(observations)
    mean_n = sum(n for n, _ in observations) / count
    mean_d = sum(d for _, d in observations) / count
    sxx = sum((n - mean_n) ** 2 for n, _ in observations)
    if sxx <= 0.0:
        return None
    b = sum((n - mean_n) * (d - mean_d) for n, d in observations) / sxx
    return _Line(mean_d - b * mean_n, b, mean_n, mean_d, sxx)


def fit(observations: Sequence[tuple[int, float]]) -> CostEstimate | None:
    """Least-squares a + b·n with a, b >= 0, outliers left out; None when the batches cannot tell a from b
    (too few, sizes too alike for their scatter)."""
    if len(observations) < MIN_BATCHES:
        return None
    commonest = max(Counter(n for n, _ in observations).values())
    if len(observations) - commonest < MIN_OTHER_SIZES:
        return None
    line = _least_squares(observations)
    if line is None:
        return None
    residuals = sorted(abs(d - line.a - line.b * n) for n, d in observations)
    spread = 1.4826 * residuals[len(residuals) // 2]  # the median absolute deviation, as a standard deviation
    if spread > 0.0:
        limit = OUTLIER_DEVIATIONS * spread
        kept = [(n, d) for n, d in observations if abs(d - line.a - line.b * n) <= limit]
        if len(kept) >= MIN_BATCHES and len(kept) < len(observations):
            refitted = _least_squares(kept)
            if refitted is None:
                return None
            observations, line = kept, refitted
    count = len(observations)
    rss = sum((d - line.a - line.b * n) ** 2 for n, d in observations)
    sigma2 = rss / (count - 2)
    a_error = math.sqrt(sigma2 * (1.0 / count + line.mean_n**2 / line.sxx))
    if a_error > MAX_RELATIVE_ERROR * line.mean_d:
        return None
    a, b = line.a, line.b
    # Noise can push either term below zero; the best fit with that term at zero is the honest answer:
    # a cost that does not grow with n is all fixed, one that is all per-sample goes through the origin.
    if b < 0.0:
        a, b = line.mean_d, 0.0
    elif a < 0.0:
        a, b = 0.0, sum(n * d for n, d in observations) / sum(n * n for n, _ in observations)
    residual = math.sqrt(sum((d - a - b * n) ** 2 for n, d in observations) / count)
    return CostEstimate(fixed_s=a, per_sample_s=b, residual_s=residual, batches=count)
