"""Population stability index (PSI) between two count distributions.

PSI = sum over bins of (a - e) * ln(a / e), with e the reference's share of a bin and a the
window's. It is symmetric in spirit (a Jeffreys divergence): 0 for the same mix, growing as the
mixes part. Rule of thumb from credit scoring, where it comes from: under 0.1 no real change,
0.1-0.25 a moderate shift, above 0.25 a significant one.

Classifiers have hundreds of classes but a window holds a thousand answers or so, and PSI over
sparse bins measures mostly sampling noise (its expected value with no drift at all is about
(bins - 1) * (1/n_reference + 1/n_window)). So the bins are the reference's most frequent classes,
each alone, plus one bin for all others, which keeps the no-drift value small. A class that
surges in the window from rare in the reference would hide in the others' bin, so a class that
holds as much of the window as a typical bin does (1/bins of it) gets its own bin too
(`window_bins`). Either way a class needs MIN_BIN_ANSWERS on the side that picks it: picking the
largest of many small counts picks chance (from 1000 equally likely classes and 1000 answers,
the top 20 hold 4 or 5 answers each where 1 is expected), and the other side would then look
shifted when nothing moved.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

__all__ = ["FLOOR", "MIN_BIN_ANSWERS", "psi", "top_bins", "window_bins"]

K = TypeVar("K", bound=Hashable)

FLOOR = 1e-4
"""Share given to an empty bin, so ln(a / e) stays finite; a bin empty on one side only then adds
about its other side's share times ln(share / FLOOR)."""


MIN_BIN_ANSWERS = 10
"""Answers a class needs on the side that gives it a bin of its own: with about one expected,
ten or more come by chance with a probability near 1e-7."""


def top_bins(reference: Mapping[K, int], count: int) -> tuple[K, ...]:
    """The `count` most frequent keys of `reference` with MIN_BIN_ANSWERS or more (ties: the
    smaller key first, so the choice is the same on every replica)."""
    ranked = sorted(reference.items(), key=lambda item: (-item[1], item[0]))
    return tuple(key for key, n in ranked[:count] if n >= MIN_BIN_ANSWERS)


def window_bins(reference_bins: Sequence[K], window: Mapping[K, int], count: int) -> tuple[K, ...]:
    """`reference_bins` plus the window's classes holding at least 1/`count` of it (and MIN_BIN_ANSWERS)."""
    total = sum(window.values())
    least = max(MIN_BIN_ANSWERS, -(-total // count))
    chosen = set(reference_bins)
    surging = sorted(key for key, n in window.items() if n >= least and key not in chosen)  # type: ignore[type-var]
    return (*reference_bins, *surging)


def psi(reference: Mapping[K, int], window: Mapping[K, int], bins: Sequence[K] | None = None) -> float:
    """PSI of `window` against `reference`, over `bins` plus one bin for every other key (None:
    every key of either side gets its own bin). Both sides need at least one count."""
    expected_total = sum(reference.values())
    actual_total = sum(window.values())
    if expected_total <= 0 or actual_total <= 0:
        raise ValueError("PSI needs at least one count on each side")
    keys: Sequence[K] = bins if bins is not None else sorted(set(reference) | set(window))  # type: ignore[type-var]
    expected = [reference.get(key, 0) for key in keys]
    actual = [window.get(key, 0) for key in keys]
    expected.append(expected_total - sum(expected))  # the others' bin (empty when every key has its own)
    actual.append(actual_total - sum(actual))
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe = max(e / expected_total, FLOOR)
        pa = max(a / actual_total, FLOOR)
        total += (pa - pe) * math.log(pa / pe)
    return total
