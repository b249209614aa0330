"""What one decode may cost, and which formats reach a decoder at all.

16-bit samples are scaled to 8 bits tile by tile, so memory stays near the 8-bit result however
large the image (it used to be copied whole into 64-bit floats: ~26 bytes per pixel); the result
equals the 8-bit reference exactly. TIFF and AVIF are refused before any decoder runs."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, features

from batchserve.model_repo.errors import ImageTooLarge, UnsupportedImageType
from batchserve.model_repo.image_formats import accepted_media_types, check_declared_type, require_format
from batchserve.model_repo.pixel_modes import TILE_PIXELS, to_resizable_mode
from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image

CONFIG = PreprocessConfig()
ACCEPTED = "image/jpeg, image/png, image/webp, image/gif, image/bmp"


def png(img: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG", **params)
    return buffer.getvalue()


def sixteen_bit(array: np.ndarray) -> Image.Image:
    img = Image.fromarray(array.astype(np.uint16))
    assert img.mode == "I;16"
    return img


def gradient(height: int, width: int, seed: int) -> np.ndarray:
    """A 16-bit picture with smooth structure and noise, using the whole range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = 32767.5 + 32767.5 * np.sin(x / 29.0) * np.cos(y / 41.0)
    return np.clip(smooth + rng.normal(0, 900, (height, width)), 0, 65535).round()


def eight_bit_reference(wide: np.ndarray) -> np.ndarray:
    return np.rint(wide * (255.0 / 65535.0)).astype(np.uint8)


@pytest.mark.parametrize(("height", "width"), [(300, 400), (257, 1900), (1100, 1000)])
def test_sixteen_bit_png_equals_its_eight_bit_reference(height: int, width: int) -> None:
    wide = gradient(height, width, seed=height)
    got = prepare_image(png(sixteen_bit(wide)), CONFIG).tensor
    expected = prepare_image(png(Image.fromarray(eight_bit_reference(wide), "L")), CONFIG).tensor
    assert np.array_equal(got, expected)


def test_sixteen_bit_transparency_key_becomes_alpha() -> None:
    wide = gradient(240, 320, seed=5)
    wide[:, :160] = 4242  # the keyed colour: transparent, so white on the final picture
    keyed = to_resizable_mode(Image.open(io.BytesIO(png(sixteen_bit(wide), transparency=4242))))
    assert keyed.mode == "LA"
    gray, alpha = (np.asarray(band) for band in keyed.split())
    assert np.array_equal(gray, eight_bit_reference(wide))
    assert np.array_equal(alpha, np.where(wide == 4242, 0, 255))


def test_a_large_sixteen_bit_image_needs_about_its_eight_bit_size_in_memory() -> None:
    """A few kilobytes of PNG declaring 12 megapixels of 16-bit samples: the conversion holds the
    8-bit result (1 byte per pixel) and a fixed tile workspace, never a full-size wide copy."""
    width, height = 4000, 3000
    data = png(Image.frombytes("I;16", (width, height), bytes(width * height * 2)))
    assert len(data) < 50_000
    tracemalloc.start()
    try:
        prepared = prepare_image(data, CONFIG)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tile_workspace = 4 * TILE_PIXELS * 8  # a float64 tile, its 16-bit source and the 8-bit copy, with room
    assert peak < width * height + tile_workspace, f"peak {peak / 2**20:.0f} MiB"
    assert (prepared.width, prepared.height) == (width, height)
    assert np.all(prepared.tensor == np.float32((0 - 127) / 128))


def ihdr_only_png(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG that declares a size and has no pixel data at all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(7000, 6000), (60_000, 60_000), (2**31 - 1, 1)])
def test_a_tiny_file_declaring_too_many_sixteen_bit_pixels_is_refused_from_its_header(width: int, height: int) -> None:
    with pytest.raises(ImageTooLarge, match="exceeds the limit of 40,000,000 pixels"):
        prepare_image(ihdr_only_png(width, height, bit_depth=16, colour_type=0), CONFIG)


def tiff(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "TIFF")
    return buffer.getvalue()


AVIF_HEADER = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64


@pytest.mark.parametrize(
    ("data", "name"),
    [
        pytest.param(tiff(Image.new("RGB", (64, 64), (1, 2, 3))), "TIFF", id="tiff-rgb"),
        pytest.param(tiff(Image.fromarray(np.zeros((64, 64), np.float32))), "TIFF", id="tiff-float"),
        pytest.param(AVIF_HEADER, "AVIF", id="avif-header"),
    ],
)
def test_tiff_and_avif_are_refused_naming_the_accepted_formats(data: bytes, name: str) -> None:
    for declared in (None, "application/octet-stream", "image/png"):
        with pytest.raises(UnsupportedImageType) as refused:
            check_declared_type(declared, data)
        assert f"{name} images are not supported" in str(refused.value)
        assert ACCEPTED in str(refused.value)
    with pytest.raises(UnsupportedImageType):
        prepare_image(data, CONFIG)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow build cannot encode AVIF")
def test_a_real_avif_file_is_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, "AVIF")
    with pytest.raises(UnsupportedImageType, match="AVIF"):
        prepare_image(buffer.getvalue(), CONFIG)


@pytest.mark.parametrize("declared", ["image/tiff", "image/tiff-fx", "image/avif", "image/heic"])
def test_their_media_types_are_refused_even_for_a_valid_png(declared: str) -> None:
    with pytest.raises(UnsupportedImageType, match=ACCEPTED):
        check_declared_type(declared, png(Image.new("RGB", (8, 8))))


def test_the_accepted_formats() -> None:
    assert ", ".join(accepted_media_types()) == ACCEPTED
    assert require_format(png(Image.new("L", (4, 4)))) == "png"
