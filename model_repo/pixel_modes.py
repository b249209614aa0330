"""Bring any decoded Pillow image to one of the four modes the resize path handles.

RGB and L resample as they are (grayscale stays one channel until the final tensor, a third of
the work); RGBA and LA resample with premultiplied alpha (Pillow does that itself) and are
flattened onto white after the crop. Everything else is converted here, at full size, because
resampling palette or 1-bit images would fall back to nearest-neighbour and wide integer or
float samples would be clipped rather than scaled.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from batchserve.model_repo.errors import ImageDecodeError

RESIZABLE_MODES = frozenset({"RGB", "L", "RGBA", "LA"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_resizable_mode(img: Image.Image) -> Image.Image:
    """The same picture in mode RGB, L, RGBA or LA (a transparency key becomes an alpha band)."""
    mode = img.mode
    has_key = img.info.get("transparency") is not None
    if mode in RESIZABLE_MODES and not (has_key and mode in ("RGB", "L")):
        return img
    if mode in ("RGB", "L"):  # a tRNS colour key: that one colour is transparent
        return img.convert("RGBA" if mode == "RGB" else "LA")
    if mode in ("P", "PA"):
        return img.convert("RGBA" if has_key or mode == "PA" else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode == "RGBa":
        return img.convert("RGBA")
    if mode == "La":
        return img.convert("LA")
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _wide_to_8bit(img)
    try:
        return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported pixel mode {mode!r}: {exc}") from exc


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float samples to 0-255 (Pillow's own convert("L") clips).

    - I;16*: full 16-bit range, v * 255 / 65535;
    - I: values within 0-255 are taken as 8-bit data in a wide container, within 0-65535 as
      16-bit, otherwise stretched from min..max;
    - F: within 0-1 is the usual float convention, within 0-255 taken as is, otherwise stretched;
      NaN counts as 0.
    A transparency key on the wide samples becomes an alpha band.
    """
    wide = np.asarray(img)
    if img.mode in _SIXTEEN_BIT:
        narrow = _scale(wide.astype(np.float64), 65535.0)
    elif img.mode == "I":
        narrow = _by_range(wide.astype(np.float64), ((255.0, 255.0), (65535.0, 65535.0)))
    else:
        narrow = _by_range(np.nan_to_num(wide.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0),
                           ((1.0, 1.0), (255.0, 255.0)))
    gray = Image.fromarray(narrow, "L")
    key = img.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):
        alpha = np.where(wide == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (gray, Image.fromarray(alpha, "L")))
    return gray


def _scale(values: np.ndarray, full: float) -> np.ndarray:
    return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def _by_range(values: np.ndarray, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Scale by the first (upper bound, full scale) range the non-negative samples fit in, else
    stretch min..max onto 0..255."""
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0:
        for upper, full in ranges:
            if hi <= upper:
                return _scale(values, full)
    if hi == lo:
        return np.full(values.shape, int(np.clip(lo, 0, 255)), dtype=np.uint8)
    return _scale(values - lo, hi - lo)
