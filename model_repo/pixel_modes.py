"""Bring any decoded Pillow image to one of the four modes the resize path handles.

RGB and L resample as they are (grayscale stays one channel until the final tensor, a third of
the work); RGBA and LA resample with premultiplied alpha (Pillow does that itself) and are
flattened onto white after the crop. Everything else is converted here, at full size, because
resampling palette or 1-bit images would fall back to nearest-neighbour and wide integer or
float samples would be clipped rather than scaled. Wide samples are scaled one tile at a time,
so their conversion needs the 8-bit result plus a fixed working buffer, whatever the image size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

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


# Wide samples are mapped to 8 bits one tile at a time: a 16-bit or float image is never copied
# whole into 64-bit floats (that costs 8-16 bytes per pixel: about 1 GB for a 40-megapixel image
# that a few kilobytes of PNG can declare). A tile of this many pixels needs 8 MiB of float64.
TILE_PIXELS = 1 << 20


def _tiles(width: int, height: int) -> Iterator[tuple[int, int, int, int]]:
    """(left, top, right, bottom) boxes of at most TILE_PIXELS pixels covering the image, row-major."""
    tile_w = min(width, TILE_PIXELS)
    tile_h = max(1, TILE_PIXELS // tile_w)
    for top in range(0, height, tile_h):
        for left in range(0, width, tile_w):
            yield left, top, min(left + tile_w, width), min(top + tile_h, height)


def _samples(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """One tile's samples as float64 (NaN and infinities as 0 for float images)."""
    values = np.asarray(img.crop(box)).astype(np.float64)
    if img.mode == "F":
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return values


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float samples to 0-255 (Pillow's own convert("L") clips).

    - I;16*: full 16-bit range, v * 255 / 65535;
    - I: values within 0-255 are taken as 8-bit data in a wide container, within 0-65535 as
      16-bit, otherwise stretched from min..max;
    - F: within 0-1 is the usual float convention, within 0-255 taken as is, otherwise stretched;
      NaN and infinities count as 0.
    A transparency key on the wide samples becomes an alpha band. Working memory beyond the
    decoded image: the 8-bit result (and alpha) plus one tile.
    """
    width, height = img.size
    if img.mode in _SIXTEEN_BIT:
        offset, full = 0.0, 65535.0
    else:
        offset, full = _mapping(img, _extrema(img))
    key = img.info.get("transparency")
    keyed = isinstance(key, int) and not isinstance(key, bool)
    gray = np.empty((height, width), dtype=np.uint8)
    alpha = np.empty((height, width), dtype=np.uint8) if keyed else None
    for box in _tiles(width, height):
        left, top, right, bottom = box
        values = _samples(img, box)
        if offset:
            values -= offset
        gray[top:bottom, left:right] = _scale(values, full)
        if alpha is not None:
            alpha[top:bottom, left:right] = np.where(np.asarray(img.crop(box)) == key, 0, 255)
    narrow = Image.fromarray(gray, "L")
    if alpha is not None:
        return Image.merge("LA", (narrow, Image.fromarray(alpha, "L")))
    return narrow


def _extrema(img: Image.Image) -> tuple[float, float]:
    width, height = img.size
    lo, hi = math.inf, -math.inf
    for box in _tiles(width, height):
        values = _samples(img, box)
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return lo, hi


def _mapping(img: Image.Image, extrema: tuple[float, float]) -> tuple[float, float]:
    """(offset, full scale) for an I or F image: the first range the non-negative samples fit in
    (I: 0-255 as 8-bit, 0-65535 as 16-bit; F: 0-1, 0-255), else min..max stretched onto 0..255."""
    lo, hi = extrema
    ranges = (255.0, 65535.0) if img.mode == "I" else (1.0, 255.0)
    if lo >= 0:
        for upper in ranges:
            if hi <= upper:
                return 0.0, upper
    if hi == lo:  # one value outside every range: clipping makes it 0 (negative) or 255
        return 0.0, 1.0
    return lo, hi - lo


def _scale(values: np.ndarray, full: float) -> np.ndarray:
    """round(v * 255 / full) clipped to 0..255, computed in place in the (float64) tile."""
    np.multiply(values, 255.0 / full, out=values)
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)
