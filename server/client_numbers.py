"""Numbers that clients write as text (headers, query strings, path segments), parsed strictly.

Python's own parsers are generous in ways a network boundary must not be: `str.isdigit()` accepts
digits that `int()` rejects (a superscript "¹"), `int()` and `float()` accept every Unicode decimal
digit, underscores and surrounding whitespace, `float()` takes "nan" and "inf", and an unbounded
digit string costs quadratic time to convert. Here an integer is 1 to `max_digits` ASCII digits and
a decimal is a plain ASCII number (optional fraction and exponent) that is finite.
"""

from __future__ import annotations

import math
import re

MAX_INT_DIGITS = 19  # every value of a signed 64-bit integer
MAX_MODEL_VERSION = 2**31 - 1
MODEL_VERSION_PATTERN = "^[1-9][0-9]{0,9}$"
_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_DECIMAL_MAX_CHARS = 40


def ascii_int(text: str, max_digits: int = MAX_INT_DIGITS) -> int | None:
    """A non-negative integer written in ASCII digits, or None when `text` is anything else."""
    if len(text) > max_digits or _INTEGER.fullmatch(text) is None:
        return None
    return int(text)


def model_version(text: str) -> int | None:
    """A model version: 1 to MAX_MODEL_VERSION in ASCII digits, or None."""
    value = ascii_int(text, max_digits=10)
    return value if value is not None and 1 <= value <= MAX_MODEL_VERSION else None


def finite_decimal(text: str) -> float | None:
    """A finite non-negative number such as "250", "0.5" or "1e3", or None when `text` is anything else."""
    if len(text) > _DECIMAL_MAX_CHARS or _DECIMAL.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def header_value(text: str) -> str:
    """A header value without the optional whitespace HTTP allows around it (spaces and tabs only)."""
    return text.strip(" \t")
