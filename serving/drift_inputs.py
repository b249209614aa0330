"""Input statistics for drift monitoring that need the pixels: computed in the decode thread,
where the tensor is at hand and the event loop is not waiting."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from batchserve.model_repo.preprocess import PreprocessConfig

# Every 8th row and column of a 224 x 224 crop: 784 pixels per channel, within a fraction of a
# grey level of the full mean on photographs, for a few microseconds.
STRIDE = 8


def mean_brightness(tensor: np.ndarray, preprocess: PreprocessConfig) -> float | None:
    """Mean pixel value (0-255) of the crop the model sees, undoing the normalisation; None for a
    tensor of a shape this does not know (drift statistics must never fail a request)."""
    if tensor.ndim == 3 and preprocess.layout == "NHWC":
        tensor = tensor.transpose(2, 0, 1)  # a view: channels first, as below expects
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        return None
    channels = tensor.shape[0]
    mean = _per_channel(preprocess.mean, channels)
    std = _per_channel(preprocess.std, channels)
    if mean is None or std is None:
        return None
    sample = tensor[:, ::STRIDE, ::STRIDE]
    count = sample.shape[1] * sample.shape[2]
    # One float32 sum per channel, the rest in plain floats: small numpy operations cost more
    # than the arithmetic they do.
    sums = sample.sum(axis=(1, 2)).tolist()
    value = sum(s / count * d + m for s, d, m in zip(sums, std, mean, strict=True)) / channels
    return value if math.isfinite(value) else None


def _per_channel(value: float | Sequence[float], channels: int) -> list[float] | None:
    """A normalisation constant given once or per channel, as one value per channel."""
    if isinstance(value, int | float):
        return [float(value)] * channels
    values = [float(v) for v in value]
    if len(values) == 1:
        return values * channels
    return values if len(values) == channels else None
