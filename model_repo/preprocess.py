"""Image bytes -> the float32 [3, crop, crop] tensor an ImageNet classifier expects.

(Or [crop, crop, 3], channels in BGR order, normalised per channel: whatever the model's
`[preprocessing]` table says; see `PreprocessConfig` and `_normalise`.)

The geometry is torchvision's `Resize(short_side)` + `CenterCrop(crop)` with bilinear filtering,
but computed without materialising the resized image: Pillow's `resize(box=...)` resamples only
the source rectangle that survives the crop, with the same filter scale and sample positions, so
a 10000 x 1 panorama costs the same 224 x 224 output as a square photo. JPEGs are additionally
decoded at 1/2, 1/4 or 1/8 size by libjpeg (draft mode) whenever the short side stays at or above
`resize_short_side`, which skips most of the decode work on camera-sized photos.

Everything here is synchronous, pure and thread-safe; callers run it in a thread pool (Pillow
releases the GIL while decoding and resampling).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from batchserve.model_repo.errors import ImageDecodeError, ImageTooLarge
from batchserve.model_repo.image_formats import pillow_format, require_format
from batchserve.model_repo.pixel_modes import to_resizable_mode

Image.init()  # register every plugin once, at import, rather than racing to do it in worker threads

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that displays the stored pixels upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WHITE: dict[str, int | tuple[int, int, int]] = {"RGBA": (255, 255, 255), "LA": 255}

Box = tuple[float, float, float, float]
"""(left, top, right, bottom) in source pixels, as Pillow's ``resize(box=...)`` takes it."""

Layout = Literal["NCHW", "NHWC"]
ChannelOrder = Literal["RGB", "BGR"]
Normalisation = float | tuple[float, ...]
"""One value for every channel, or one per channel in the model's channel order."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input (a model's `[preprocessing]` table in config.toml)."""

    resize_short_side: int = 256
    """The short side is scaled to this many pixels (bilinear) before the centre crop."""
    crop: int = 224
    """Side of the square centre crop; the tensor is [3, crop, crop] (NCHW) or [crop, crop, 3]."""
    mean: Normalisation = 127.0
    """Subtracted from every 0-255 channel value: one value, or three in the order of the model's
    input channels (`channel_order`: B, G, R for a BGR model)."""
    std: Normalisation = 128.0
    """Divides every channel value after the mean is subtracted: one value or three, as `mean`."""
    layout: Layout = "NCHW"
    """Axis order of the model's input: [N, 3, crop, crop] (NCHW) or [N, crop, crop, 3] (NHWC)."""
    channel_order: ChannelOrder = "RGB"
    """Order of the colour channels the model was trained on (OpenCV and Caffe models: BGR)."""
    max_pixels: int = 40_000_000
    """Decompression-bomb cap on width x height of the encoded image, checked from the header before
    any pixel is decoded. Pillow refuses images above twice its own MAX_IMAGE_PIXELS regardless.
    It also bounds a decode's memory: the decoded pixels (at most 4 bytes each in every mode the
    accepted formats produce) plus one 8-bit conversion (at most 4 bytes each) plus a fixed
    8 MiB tile for 16-bit samples, so at most max_pixels x 8 bytes + 8 MiB."""
    jpeg_draft: bool = True
    """Let libjpeg decode JPEGs at a reduced scale (never below resize_short_side); off only to
    measure what it saves."""

    def __post_init__(self) -> None:
        if self.resize_short_side < 1:
            raise ValueError(f"resize_short_side must be at least 1, not {self.resize_short_side}")
        if not 1 <= self.crop <= self.resize_short_side:
            raise ValueError(
                f"crop must be between 1 and resize_short_side ({self.resize_short_side}), not {self.crop}"
            )
        # frozen: the canonical forms are set through object.__setattr__
        object.__setattr__(self, "mean", _canonical("mean", self.mean))
        object.__setattr__(self, "std", _canonical("std", self.std))
        if not all(math.isfinite(v) for v in _values(self.mean)):
            raise ValueError(f"mean must be finite, not {self.mean}")
        if not all(math.isfinite(v) and v != 0 for v in _values(self.std)):
            raise ValueError(f"std must be non-zero and finite, not {self.std}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', not {self.layout!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, not {self.max_pixels}")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape of one prepared image: the model's input without its batch axis."""
        if self.layout == "NHWC":
            return (self.crop, self.crop, 3)
        return (3, self.crop, self.crop)


def _values(value: Normalisation) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


def _canonical(name: str, value: object) -> Normalisation:
    """One float, or a tuple of three that are not all equal: equal configs compare equal, and
    three equal values take the single-table path."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or a list of 1 or 3 numbers, not {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, tuple | list):
        if len(value) not in (1, 3) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{name} must be one number or 3 (one per channel), not {list(value)}")
        floats = tuple(float(v) for v in value)
        return floats[0] if len(set(floats)) == 1 else floats
    raise ValueError(f"{name} must be a number or a list of 1 or 3 numbers, not {value!r}")


@dataclass(frozen=True)
class PreparedImage:
    tensor: np.ndarray
    """float32 `config.sample_shape` ([3, crop, crop] by default), C-contiguous, normalised as
    (x - mean) / std, channels in the configured order."""
    width: int
    """Original width, after EXIF orientation."""
    height: int
    """Original height, after EXIF orientation."""
    format: str
    """"jpeg", "png", ... (see image_formats)."""


@dataclass(frozen=True)
class DecodedImage:
    """Fully decoded pixels, not yet oriented, resized or cropped."""

    pixels: Image.Image
    """Stored orientation, mode RGB, L, RGBA or LA; reduced by `scale` when JPEG draft applied."""
    format: str
    width: int
    """Full-resolution width after EXIF orientation."""
    height: int
    """Full-resolution height after EXIF orientation."""
    orientation: int
    """EXIF orientation 1-8 (1: stored upright)."""
    scale: int
    """JPEG draft reduction: 1, 2, 4 or 8."""


def prepare_image(data: bytes, config: PreprocessConfig) -> PreparedImage:
    """Decode, orient, resize, centre-crop and normalise one encoded image.

    Raises ImageDecodeError (ImageTooLarge for the pixel cap) or UnsupportedImageType; no other
    exception escapes for any input bytes.
    """
    decoded = decode_image(data, config)
    tensor = _to_tensor(decoded, config)
    return PreparedImage(tensor, decoded.width, decoded.height, decoded.format)


def decode_image(data: bytes, config: PreprocessConfig) -> DecodedImage:
    """Check the header against the pixel cap, then decode (with JPEG draft where it helps)."""
    fmt = require_format(data)
    pil_format = pillow_format(fmt)
    try:
        img = Image.open(io.BytesIO(data), formats=[pil_format])
    except Image.DecompressionBombError:
        raise ImageTooLarge(*_header_size(data, pil_format), config.max_pixels) from None
    except MemoryError:
        raise  # the process is short of memory: not the client's fault, not a 400
    except Exception as exc:  # any other failure means a bad image: see _decode_failure
        raise _decode_failure(fmt, exc) from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{fmt.upper()} image has no pixels ({width} x {height})")
    if width * height > config.max_pixels:
        raise ImageTooLarge(width, height, config.max_pixels)
    try:
        scale = _draft(img, config) if config.jpeg_draft and img.format in ("JPEG", "MPO") else 1
        img.load()
        orientation = _orientation(img)
        pixels = to_resizable_mode(img)
    except Image.DecompressionBombError:
        raise ImageTooLarge(width, height, config.max_pixels) from None
    except (ImageDecodeError, MemoryError):
        raise
    except Exception as exc:  # any other failure means a bad image: see _decode_failure
        raise _decode_failure(fmt, exc) from exc
    if orientation >= 5:  # these orientations swap the axes
        width, height = height, width
    return DecodedImage(pixels, fmt, width, height, orientation, scale)


def _decode_failure(fmt: str, exc: Exception) -> ImageDecodeError:
    """Pillow's decoders raise a wide, version-dependent set of types on hostile input (OSError,
    SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, ...). Only Pillow calls
    on untrusted bytes sit inside the broad `except`, so each of them means "not a decodable
    image" rather than a bug of ours, and none may escape as a 500."""
    name = fmt.upper()
    if isinstance(exc, UnidentifiedImageError):  # its message only names the BytesIO object
        return ImageDecodeError(f"not a valid {name} image: its header cannot be parsed")
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in detail.lower():
        return ImageDecodeError(f"truncated {name} image ({detail})")
    return ImageDecodeError(f"cannot decode {name} image: {detail}")


def _header_size(data: bytes, pil_format: str) -> tuple[int | None, int | None]:
    """Width and height from the header alone, for the message when Pillow's own bomb check fires
    inside Image.open (which then never hands the image back). The plugin factory is what
    Image.open calls, minus that check."""
    try:
        factory = Image.OPEN[pil_format][0]
        w, h = factory(io.BytesIO(data), "").size
        return int(w), int(h)
    except Exception:  # noqa: BLE001 - only decorates an error message
        return None, None


def _draft(img: Image.Image, config: PreprocessConfig) -> int:
    """Ask libjpeg for the largest 1/2^k reduction whose short side stays >= resize_short_side;
    returns the factor actually applied."""
    width, height = img.size
    target = config.resize_short_side
    img.draft("RGB", (target, target))
    dw, dh = img.size
    for s in (8, 4, 2):
        if -(-width // s) == dw and -(-height // s) == dh:
            return s
    return 1


def _orientation(img: Image.Image) -> int:
    """EXIF orientation, read only when the file carries EXIF (parsing it costs otherwise).

    A malformed EXIF block is ignored: the pixels are still good."""
    if "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - broken metadata only costs the orientation
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def crop_box(width: int, height: int, config: PreprocessConfig) -> Box:
    """The rectangle of a width x height image that torchvision's Resize(short) + CenterCrop(crop)
    keeps, in source pixel coordinates (floats: the crop is on the resized pixel grid)."""
    short = config.resize_short_side
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    top = round((new_h - config.crop) / 2)
    left = round((new_w - config.crop) / 2)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + config.crop) * sx, (top + config.crop) * sy)


def _to_stored(box: Box, orientation: int, w: int, h: int) -> Box:
    """Map a box on the upright image to the stored one; w x h is the STORED size."""
    x0, y0, x1, y1 = box
    match orientation:
        case 2:
            return (w - x1, y0, w - x0, y1)
        case 3:
            return (w - x1, h - y1, w - x0, h - y0)
        case 4:
            return (x0, h - y1, x1, h - y0)
        case 5:
            return (y0, x0, y1, x1)
        case 6:
            return (y0, h - x1, y1, h - x0)
        case 7:
            return (w - y1, h - x1, w - y0, h - x0)
        case 8:
            return (w - y1, x0, w - y0, x1)
        case _:
            return box


def _to_tensor(decoded: DecodedImage, config: PreprocessConfig) -> np.ndarray:
    """Resample the crop straight from the decoded pixels, then orient it, flatten alpha, normalise.

    Orientation is applied to the crop-sized result rather than the full image, which is the same
    picture at a fraction of the cost."""
    img = decoded.pixels
    stored_w, stored_h = decoded.width, decoded.height
    if decoded.orientation >= 5:
        stored_w, stored_h = stored_h, stored_w
    box = _to_stored(crop_box(decoded.width, decoded.height, config), decoded.orientation, stored_w, stored_h)
    # Draft decoding maps the full-resolution image onto (0, 0, w/scale, h/scale); clamp guards
    # against float rounding just past the edge, which Pillow rejects.
    limit = (img.width, img.height, img.width, img.height)
    x0, y0, x1, y1 = (min(max(v / decoded.scale, 0.0), lim) for v, lim in zip(box, limit, strict=True))
    out = img.resize((config.crop, config.crop), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
    if decoded.orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[decoded.orientation])
    if out.mode in _WHITE:
        out = _on_white(out)
    return _normalise(np.asarray(out), config)


def _on_white(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white, as a browser shows the image on a white page. Dropping the
    alpha instead would expose whatever colour fully transparent pixels happen to store (often
    black), which the picture never showed."""
    base_mode = img.mode[:-1]  # "RGBA" -> "RGB", "LA" -> "L"
    flat = Image.new(base_mode, img.size, _WHITE[img.mode])
    flat.paste(img.convert(base_mode), mask=img.getchannel("A"))
    return flat


@cache
def _lookup_table(mean: float, std: float) -> np.ndarray:
    """(v - mean) / std for every uint8 v: one gather replaces a subtract, a divide and a cast."""
    table = ((np.arange(256, dtype=np.float64) - mean) / std).astype(np.float32)
    table.setflags(write=False)
    return table


def _normalise(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 HWC (or HW for grayscale) -> float32 CHW, C-contiguous, in one gather.

    This is the hot path every default model takes; other layouts, channel orders and
    per-channel constants branch off to `_normalise_configured` so they cost it nothing."""
    mean, std = config.mean, config.std
    if not (isinstance(mean, float) and isinstance(std, float)
            and config.layout == "NCHW" and config.channel_order == "RGB"):
        return _normalise_configured(pixels, config)
    table = _lookup_table(mean, std)
    if pixels.ndim == 2:
        tensor = np.empty((3, *pixels.shape), dtype=np.float32)
        tensor[:] = np.take(table, pixels)
        return tensor
    return np.ascontiguousarray(np.take(table, pixels.transpose(2, 0, 1)))


def _three(value: Normalisation) -> tuple[float, float, float]:
    a, b, c = value if isinstance(value, tuple) else (value, value, value)
    return (a, b, c)


@cache
def _channel_tables(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """float32 [3, 256]: row i is (v - mean[i]) / std[i] for every uint8 v, model channel i."""
    values = np.arange(256, dtype=np.float64)
    tables = np.stack([((values - m) / s) for m, s in zip(mean, std, strict=True)]).astype(np.float32)
    tables.setflags(write=False)
    return tables


def _normalise_configured(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 HWC RGB (or HW grayscale) -> float32 in the model's layout and channel order, each
    model channel i normalised by mean[i] and std[i]: still one table lookup per value."""
    tables = _channel_tables(_three(config.mean), _three(config.std))
    if pixels.ndim == 2:  # grayscale: every model channel reads the one plane
        planes = [pixels, pixels, pixels]
    else:
        order = (2, 1, 0) if config.channel_order == "BGR" else (0, 1, 2)
        planes = [pixels[..., source] for source in order]
    height, width = pixels.shape[:2]
    if config.layout == "NCHW":
        tensor = np.empty((3, height, width), dtype=np.float32)
        for i, plane in enumerate(planes):
            np.take(tables[i], plane, out=tensor[i])
        return tensor
    if pixels.ndim == 3 and isinstance(config.mean, float) and isinstance(config.std, float):
        # NHWC with one table: the HWC pixels are already in this order (reversed for BGR).
        source = pixels[..., ::-1] if config.channel_order == "BGR" else pixels
        return np.take(tables[0], source)
    tensor = np.empty((height, width, 3), dtype=np.float32)
    for i, plane in enumerate(planes):
        tensor[..., i] = np.take(tables[i], plane)
    return tensor
