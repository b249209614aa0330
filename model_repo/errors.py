"""The exceptions `model_repo` raises.

The server maps each class to one HTTP answer in a single place, so the class (not the message)
carries the meaning; messages are human sentences that say what was wrong with the input.
"""

from __future__ import annotations

from collections.abc import Sequence


class ModelRepoError(Exception):
    """Base class: every failure `model_repo` reports on purpose derives from it."""


class ImageDecodeError(ModelRepoError):
    """The bytes are not an image we can decode (HTTP 400 `invalid_image`)."""


class ImageTooLarge(ImageDecodeError):
    """The image declares more pixels than the decompression-bomb cap allows (HTTP 413).

    Raised from the header alone, before any pixel data is decoded.
    """

    def __init__(self, width: int | None, height: int | None, max_pixels: int) -> None:
        self.width = width
        self.height = height
        self.max_pixels = max_pixels
        if width is not None and height is not None:
            size = f"{width} x {height} = {width * height:,} pixels"
        else:
            size = "its declared size"
        super().__init__(
            f"image is too large to decode: {size} exceeds the limit of {max_pixels:,} pixels"
        )


class UnsupportedImageType(ModelRepoError):
    """The declared (or recognised) type is not one we decode (HTTP 415)."""


class ModelNotFound(ModelRepoError):
    """No loaded model answers to this name (and version) (HTTP 404 `model_not_found`)."""

    def __init__(self, name: str, version: int | str | None = None, available: Sequence[str] = ()) -> None:
        self.name = name
        self.version = version
        self.available = list(available)
        what = f"model {name!r}" if version is None else f"model {name!r} version {version}"
        known = ", ".join(repr(a) for a in self.available) if self.available else "none"
        super().__init__(f"{what} is not loaded; available models: {known}")


class ModelLoadError(ModelRepoError):
    """A model file is missing or cannot be loaded; the message names the path and the fix."""


class ObjectStoreError(ModelLoadError):
    """An object store repository cannot be read or written: no such bucket, no credentials, no
    connection, a refused request. The message names the bucket and what to check."""
