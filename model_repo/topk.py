"""Logits -> probabilities -> the k best classes."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along `axis`, stable for any finite logits (the maximum is subtracted first, so
    exp never overflows). float32 stays float32, float64 stays float64, integers become float64.

    Raises ValueError for NaN or infinite logits, which only a broken model produces."""
    x = np.asarray(logits)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.size == 0:
        raise ValueError("softmax of an empty array")
    if not np.isfinite(x).all():
        raise ValueError("logits contain NaN or infinity")
    shifted = x - x.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def top_k(probs_row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k highest (class_id, score) pairs of a 1-D row, by score descending, equal scores by
    class id ascending. Selection is O(n) (partition), only the k winners are sorted; ties at the
    k-th place are broken by class id as well, so the answer never depends on partition order."""
    row = np.asarray(probs_row)
    if row.ndim != 1:
        raise ValueError(f"top_k takes one row of scores, got shape {row.shape}")
    n = row.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, not {k}")
    if np.isnan(row).any():
        raise ValueError("scores contain NaN")
    if k == n:
        idx = np.arange(n)
    else:
        pivot = np.argpartition(row, n - k)[n - k]
        kth = row[pivot]  # the k-th largest value
        above = np.flatnonzero(row > kth)
        tied = np.flatnonzero(row == kth)[: k - above.size]
        idx = np.concatenate((above, tied))
    order = np.lexsort((idx, -row[idx]))  # last key is primary: score desc, then class id
    return [(int(i), float(row[i])) for i in idx[order]]
