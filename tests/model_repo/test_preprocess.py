from __future__ import annotations

import contextlib
import io
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from batchserve.model_repo.errors import (
    ImageDecodeError,
    ImageTooLarge,
    ModelLoadError,
    ModelRepoError,
    UnsupportedImageType,
)
from batchserve.model_repo.image_formats import check_declared_type, require_format
from batchserve.model_repo.pixel_modes import to_resizable_mode
from batchserve.model_repo.preprocess import PreparedImage, PreprocessConfig, crop_box, decode_image, prepare_image
from batchserve.model_repo.repository import parse_model_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = PreprocessConfig()
WHITE = (255 - 127) / 128


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus some texture: close to a photo's statistics, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 127 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def naive_reference(img: Image.Image, config: PreprocessConfig = CONFIG) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224) done the slow, obvious way."""
    w, h = img.size
    s = config.resize_short_side
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    resized = img.convert("RGB").resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = round((nh - config.crop) / 2), round((nw - config.crop) / 2)
    crop = resized.crop((left, top, left + config.crop, top + config.crop))
    return ((np.asarray(crop, dtype=np.float32) - config.mean) / config.std).transpose(2, 0, 1)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming width x height RGB whose only "pixel data" is a few
    bytes that are not even zlib: reading the header works, decoding any pixel cannot."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"not zlib")
            + png_chunk(b"IEND", b""))


def assert_valid(prepared: PreparedImage, config: PreprocessConfig = CONFIG) -> None:
    assert prepared.tensor.shape == (3, config.crop, config.crop)
    assert prepared.tensor.dtype == np.float32
    assert prepared.tensor.flags["C_CONTIGUOUS"]
    assert np.isfinite(prepared.tensor).all()


# --- geometry and numerics -------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 127, 200, 255])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_uniform_colour_normalises_exactly(mode: str, value: int) -> None:
    fill = value if mode == "L" else (value, value, value)
    prepared = prepare_image(encode(Image.new(mode, (300, 200), fill), "PNG"), CONFIG)
    assert_valid(prepared)
    assert np.all(prepared.tensor == np.float32((value - 127) / 128))


def test_mean_and_std_come_from_the_config() -> None:
    config = PreprocessConfig(mean=100.0, std=50.0)
    prepared = prepare_image(encode(Image.new("RGB", (300, 300), (0, 100, 200)), "PNG"), config)
    assert prepared.tensor[0].max() == pytest.approx(-2.0)
    assert prepared.tensor[1].max() == pytest.approx(0.0)
    assert prepared.tensor[2].max() == pytest.approx(2.0)


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (224, 224), (256, 256), (1000, 333), (100, 50), (31, 97)])
def test_matches_resize_then_centre_crop(size: tuple[int, int]) -> None:
    img = photo(*size)
    prepared = prepare_image(encode(img, "PNG"), CONFIG)
    assert_valid(prepared)
    assert (prepared.width, prepared.height) == size
    diff = np.abs(prepared.tensor - naive_reference(img)) * 128
    # Same filter and sample positions; only the uint8 rounding between the two separable passes
    # differs (Pillow may order them differently for the two calls), so values are off by at most 1.
    assert diff.max() <= 1.0 + 1e-4
    assert diff.mean() < 0.3


def test_crop_box_follows_torchvision_rounding() -> None:
    # 451 x 300 -> 384 x 256 (int truncation of 384.85), crop offsets round(80.0), round(16.0)
    x0, y0, x1, y1 = crop_box(451, 300, CONFIG)
    assert (x0, y0) == pytest.approx((80 * 451 / 384, 16 * 300 / 256))
    assert (x1, y1) == pytest.approx((304 * 451 / 384, 240 * 300 / 256))


def test_custom_geometry() -> None:
    config = PreprocessConfig(resize_short_side=64, crop=32)
    img = photo(90, 70)
    prepared = prepare_image(encode(img, "PNG"), config)
    assert_valid(prepared, config)
    assert np.abs(prepared.tensor - naive_reference(img, config)).max() * 128 <= 1.0 + 1e-4


@pytest.mark.parametrize("size", [(1, 1), (10000, 1), (1, 10000), (2, 3)])
def test_degenerate_sizes_work(size: tuple[int, int]) -> None:
    prepared = prepare_image(encode(Image.new("RGB", size, (10, 20, 30)), "PNG"), CONFIG)
    assert_valid(prepared)
    assert (prepared.width, prepared.height) == size
    assert np.allclose(prepared.tensor[:, 100, 100] * 128 + 127, (10, 20, 30), atol=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop": 300},
        {"crop": 0},
        {"resize_short_side": 0},
        {"std": 0.0},
        {"std": float("nan")},
        {"mean": float("inf")},
        {"max_pixels": 0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(**kwargs)


# --- layout, channel order, per-channel normalisation ---------------------------------------


def pixels_of(prepared: PreparedImage) -> np.ndarray:
    """The default config's tensor back on the 0-255 scale, HWC RGB (float64)."""
    return prepared.tensor.astype(np.float64).transpose(1, 2, 0) * 128 + 127


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize(
    ("mean", "std"), [(127.0, 128.0), ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)), (0.0, (1.0, 2.0, 4.0))]
)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_layout_order_and_normalisation(layout: str, order: str, mean, std, mode: str) -> None:
    img = photo(300, 260, seed=3).convert(mode)
    data = encode(img, "PNG")
    config = PreprocessConfig(layout=layout, channel_order=order, mean=mean, std=std)
    prepared = prepare_image(data, config)
    assert prepared.tensor.shape == config.sample_shape
    assert prepared.tensor.dtype == np.float32 and prepared.tensor.flags["C_CONTIGUOUS"]
    # The same crop as the default path, rearranged and normalised by the obvious formula.
    rgb = pixels_of(prepare_image(data, CONFIG))
    channels = rgb[..., ::-1] if order == "BGR" else rgb
    expected = (channels - np.broadcast_to(mean, 3)) / np.broadcast_to(std, 3)
    if layout == "NCHW":
        expected = expected.transpose(2, 0, 1)
    assert np.allclose(prepared.tensor, expected, atol=1e-4)


def test_bgr_puts_blue_first() -> None:
    data = encode(Image.new("RGB", (240, 240), (250, 120, 10)), "PNG")
    nchw = prepare_image(data, PreprocessConfig(channel_order="BGR", mean=0, std=1)).tensor
    nhwc = prepare_image(data, PreprocessConfig(channel_order="BGR", layout="NHWC", mean=0, std=1)).tensor
    assert nchw[:, 5, 5].tolist() == [10.0, 120.0, 250.0]
    assert nhwc[5, 5].tolist() == [10.0, 120.0, 250.0]


def test_the_default_path_is_unchanged() -> None:
    """The default tensor is one table gather of (v - 127) / 128, exactly."""
    img = photo(300, 260, seed=4)
    tensor = prepare_image(encode(img, "PNG"), CONFIG).tensor
    values = np.round(tensor.astype(np.float64) * 128 + 127)
    assert np.array_equal(tensor, ((values - 127.0) / 128.0).astype(np.float32))


@pytest.mark.parametrize(
    ("given", "kept"),
    [(100, 100.0), ([100], 100.0), ([5, 5, 5], 5.0), ((1, 2, 3), (1.0, 2.0, 3.0)), ([1.5, 2, 3], (1.5, 2.0, 3.0))],
)
def test_mean_and_std_are_one_value_or_three(given, kept) -> None:
    config = PreprocessConfig(mean=given, std=given)
    assert config.mean == kept and config.std == kept
    assert PreprocessConfig(mean=given) == PreprocessConfig(mean=kept)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": (1.0, 2.0)}, "mean must be one number or 3"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be non-zero and finite"),
        ({"mean": (1.0, float("nan"), 1.0)}, "mean must be finite"),
        ({"mean": True}, "mean must be a number"),
        ({"layout": "CHW"}, "layout must be 'NCHW' or 'NHWC'"),
        ({"channel_order": "GBR"}, "channel_order must be 'RGB' or 'BGR'"),
    ],
)
def test_bad_normalisation_and_layout(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PreprocessConfig(**kwargs)


def test_preprocessing_keys_in_config_toml(tmp_path: Path) -> None:
    config = tmp_path / "m" / "config.toml"
    config.parent.mkdir()
    config.write_text(
        "[input]\nshape = [160, 160, 3]\n"
        "[preprocessing]\nresize_short_side = 183\ncrop = 160\nmean = [123.675, 116.28, 103.53]\nstd = 58\n"
        "layout = 'NHWC'\nchannel_order = 'BGR'\n"
    )
    spec = parse_model_config(config)
    assert spec.preprocessing == PreprocessConfig(
        resize_short_side=183, crop=160, mean=(123.675, 116.28, 103.53), std=58.0, layout="NHWC", channel_order="BGR"
    )
    config.write_text("[preprocessing]\nlayout = 'NHWC'\n")  # [input] shape left at [3, 224, 224]
    with pytest.raises(ModelLoadError, match=re.escape("[input] shape [3, 224, 224] does not match [preprocessing], "
                                                       "which makes [224, 224, 3]")):
        parse_model_config(config)
    config.write_text("[preprocessing]\nmean = [1, 2]\n")
    with pytest.raises(ModelLoadError, match="mean must be one number or 3"):
        parse_model_config(config)


# --- EXIF orientation ------------------------------------------------------------------------


def with_orientation(img: Image.Image, orientation: int, fmt: str, **params) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif.tobytes(), **params)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_exif_transpose(orientation: int) -> None:
    stored = photo(400, 260, seed=orientation)
    data = with_orientation(stored, orientation, "PNG")
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    prepared = prepare_image(data, CONFIG)
    assert (prepared.width, prepared.height) == upright.size
    expected = prepare_image(encode(upright.convert("RGB"), "PNG"), CONFIG).tensor
    diff = np.abs(prepared.tensor - expected) * 128
    assert diff.max() <= 2.0 + 1e-4
    assert diff.mean() < 0.2


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    # Stored landscape: left half red, right half blue. Orientation 6 means "rotate 90 degrees
    # clockwise to display", so the stored left edge becomes the top.
    stored = Image.new("RGB", (400, 300), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 200, 300))
    prepared = prepare_image(with_orientation(stored, 6, "JPEG", quality=95), CONFIG)
    assert (prepared.width, prepared.height) == (300, 400)
    red, blue = prepared.tensor[0], prepared.tensor[2]
    assert red[:50].mean() > 0.9 and blue[:50].mean() < -0.9  # top: red
    assert red[-50:].mean() < -0.9 and blue[-50:].mean() > 0.9  # bottom: blue


def test_broken_exif_is_ignored() -> None:
    img = Image.new("RGB", (300, 300), (40, 50, 60))
    data = encode(img, "JPEG", exif=b"Exif\x00\x00" + b"\xff" * 40, quality=95)
    prepared = prepare_image(data, CONFIG)
    assert (prepared.width, prepared.height) == (300, 300)
    assert_valid(prepared)


# --- JPEG draft mode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "scale"),
    [((4000, 3000), 8), ((2100, 1100), 4), ((1000, 600), 2), ((600, 1000), 2), ((520, 300), 1), ((300, 200), 1)],
)
def test_draft_decodes_big_jpegs_reduced(size: tuple[int, int], scale: int) -> None:
    data = encode(Image.new("RGB", size, (90, 120, 150)), "JPEG", quality=90)
    decoded = decode_image(data, CONFIG)
    assert decoded.scale == scale
    assert decoded.pixels.size == (-(-size[0] // scale), -(-size[1] // scale))
    assert min(decoded.pixels.size) >= min(CONFIG.resize_short_side, *size)
    assert (decoded.width, decoded.height) == size


def test_draft_result_is_close_to_a_full_decode() -> None:
    data = encode(photo(2400, 1800), "JPEG", quality=92)
    drafted = prepare_image(data, CONFIG)
    full = prepare_image(data, PreprocessConfig(jpeg_draft=False))
    assert decode_image(data, PreprocessConfig(jpeg_draft=False)).pixels.size == (2400, 1800)
    assert (drafted.width, drafted.height) == (full.width, full.height) == (2400, 1800)
    assert np.abs(drafted.tensor - full.tensor).mean() * 128 < 3.0


def test_draft_with_rotation() -> None:
    stored = photo(2000, 1200)
    data = with_orientation(stored, 8, "JPEG", quality=92)
    decoded = decode_image(data, CONFIG)
    assert decoded.scale == 4 and decoded.orientation == 8
    prepared = prepare_image(data, CONFIG)
    assert (prepared.width, prepared.height) == (1200, 2000)
    upright = prepare_image(encode(stored.transpose(Image.Transpose.ROTATE_90), "PNG"), CONFIG)
    assert np.abs(prepared.tensor - upright.tensor).mean() * 128 < 3.0


# --- pixel modes -----------------------------------------------------------------------------


def centre(prepared: PreparedImage) -> np.ndarray:
    """Pixel values (0-255 scale) at the centre of the crop, per channel."""
    return prepared.tensor[:, 112, 112] * 128 + 127


def test_grayscale_fills_three_channels() -> None:
    prepared = prepare_image(encode(Image.new("L", (260, 260), 60), "PNG"), CONFIG)
    assert np.allclose(centre(prepared), 60)
    assert np.array_equal(prepared.tensor[0], prepared.tensor[2])


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("RGBA", (300, 300), (0, 0, 0, 0)), (255, 255, 255)),  # transparent black: white
        (Image.new("RGBA", (300, 300), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (300, 300), (0, 0)), (255, 255, 255)),
        (Image.new("LA", (300, 300), (50, 255)), (50, 50, 50)),
    ],
)
def test_alpha_is_flattened_onto_white(img: Image.Image, expected: tuple[int, int, int]) -> None:
    prepared = prepare_image(encode(img, "PNG"), CONFIG)
    assert np.allclose(centre(prepared), expected, atol=0.5)


def test_half_transparent_red_blends_with_white() -> None:
    prepared = prepare_image(encode(Image.new("RGBA", (300, 300), (255, 0, 0, 128)), "PNG"), CONFIG)
    assert np.allclose(centre(prepared), (255, 127, 127), atol=1.5)


def test_colour_keys_become_transparent() -> None:
    rgb = prepare_image(encode(Image.new("RGB", (300, 300), (10, 20, 30)), "PNG", transparency=(10, 20, 30)), CONFIG)
    gray = prepare_image(encode(Image.new("L", (300, 300), 7), "PNG", transparency=7), CONFIG)
    assert np.allclose(centre(rgb), 255) and np.allclose(centre(gray), 255)


def palette_image(colour_index: int) -> Image.Image:
    img = Image.new("P", (300, 300), colour_index)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * (254 * 3))
    return img


def test_palette_images() -> None:
    plain = prepare_image(encode(palette_image(1), "PNG"), CONFIG)
    assert np.allclose(centre(plain), (200, 100, 50))
    keyed_png = prepare_image(encode(palette_image(0), "PNG", transparency=0), CONFIG)
    keyed_gif = prepare_image(encode(palette_image(0), "GIF", transparency=0), CONFIG)
    assert np.allclose(centre(keyed_png), 255) and np.allclose(centre(keyed_gif), 255)


def test_one_bit_image() -> None:
    img = Image.new("1", (300, 300), 0)
    img.paste(1, (150, 0, 300, 300))
    prepared = prepare_image(encode(img, "PNG"), CONFIG)
    assert prepared.tensor[:, :, 0].max() == pytest.approx((0 - 127) / 128)
    assert prepared.tensor[:, :, -1].min() == pytest.approx(WHITE)


def test_cmyk_jpeg() -> None:
    prepared = prepare_image(encode(Image.new("CMYK", (300, 300), (0, 255, 255, 0)), "JPEG", quality=95), CONFIG)
    r, g, b = centre(prepared)
    assert r > 240 and g < 15 and b < 15


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    mid = Image.fromarray(np.full((200, 300), 0x8000, dtype=np.uint16))
    assert mid.mode == "I;16"
    prepared = prepare_image(encode(mid, "PNG"), CONFIG)
    assert np.allclose(centre(prepared), 128)  # clipping would give 255
    halves = np.zeros((300, 300), dtype=np.uint16)
    halves[:, 150:] = 65535
    prepared = prepare_image(encode(Image.fromarray(halves), "PNG"), CONFIG)
    assert prepared.tensor[0, 0, 0] == pytest.approx((0 - 127) / 128)
    assert prepared.tensor[0, 0, -1] == pytest.approx(WHITE)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((200, 300), 1000, dtype=np.int32), round(1000 * 255 / 65535)),  # 16-bit range
        (np.full((200, 300), 200, dtype=np.int32), 200),  # 8-bit data in a wide container
        (np.full((200, 300), 0.5, dtype=np.float32), 128),  # float 0..1
    ],
)
def test_wide_samples(array: np.ndarray, expected: int) -> None:
    narrow = to_resizable_mode(Image.fromarray(array))
    assert narrow.mode == "L" and np.all(np.asarray(narrow) == expected)


def test_out_of_range_float_samples_are_stretched() -> None:
    array = np.zeros((300, 300), dtype=np.float32)
    array[:, 150:] = 1000.0
    array[:, :150] = -5.0
    narrow = np.asarray(to_resizable_mode(Image.fromarray(array)))
    assert np.all(narrow[:, :150] == 0) and np.all(narrow[:, 150:] == 255)


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_uses_the_first_frame(fmt: str, params: dict) -> None:
    red, blue = Image.new("RGB", (300, 300), (255, 0, 0)), Image.new("RGB", (300, 300), (0, 0, 255))
    data = encode(red, fmt, save_all=True, append_images=[blue], duration=100, loop=0, **params)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert np.allclose(centre(prepare_image(data, CONFIG)), (255, 0, 0), atol=1)


@pytest.mark.parametrize(("fmt", "name"), [("BMP", "bmp"), ("WEBP", "webp"), ("GIF", "gif")])
def test_other_formats_decode(fmt: str, name: str) -> None:
    data = encode(Image.new("RGB", (320, 240), (30, 60, 90)), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert require_format(data) == name
    prepared = prepare_image(data, CONFIG)
    assert prepared.format == name
    assert (prepared.width, prepared.height) == (320, 240)
    assert_valid(prepared)


def test_prepare_is_thread_safe() -> None:
    inputs = [encode(photo(300 + 37 * i, 250 + 11 * i, seed=i), "JPEG" if i % 2 else "PNG") for i in range(8)]
    sequential = [prepare_image(d, CONFIG).tensor for d in inputs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = [p.tensor for p in pool.map(lambda d: prepare_image(d, CONFIG), inputs * 3)]
    for i, tensor in enumerate(concurrent):
        assert np.array_equal(tensor, sequential[i % len(inputs)])


# --- the pixel cap ---------------------------------------------------------------------------


def test_crafted_huge_header_is_refused_before_decoding() -> None:
    # No real pixel data follows the header: any attempt to decode would fail differently.
    with pytest.raises(ImageTooLarge) as info:
        prepare_image(png_header_only(100_000, 100_000), CONFIG)
    assert "100000 x 100000" in str(info.value)
    assert "40,000,000" in str(info.value)


def test_cap_below_pillows_own_limit() -> None:
    with pytest.raises(ImageTooLarge) as info:
        prepare_image(png_header_only(8000, 6000), CONFIG)  # 48 MP: over ours, under Pillow's
    assert (info.value.width, info.value.height) == (8000, 6000)


def test_cap_is_configurable() -> None:
    data = encode(Image.new("RGB", (1000, 1000)), "PNG")
    prepare_image(data, PreprocessConfig(max_pixels=1_000_000))
    with pytest.raises(ImageTooLarge, match="1000 x 1000"):
        prepare_image(data, PreprocessConfig(max_pixels=999_999))


def test_too_large_is_an_image_decode_error() -> None:
    assert issubclass(ImageTooLarge, ImageDecodeError)


# --- hostile input ---------------------------------------------------------------------------

VALID_JPEG = encode(photo(96, 64), "JPEG", quality=80)
VALID_PNG = encode(photo(96, 64), "PNG")


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("image.jpg", VALID_JPEG)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", ImageDecodeError, "empty"),
        (bytes(range(256)) * 4, ImageDecodeError, "first bytes: 00 01 02"),
        (VALID_JPEG[: len(VALID_JPEG) // 2], ImageDecodeError, "JPEG"),
        (VALID_PNG[: len(VALID_PNG) // 2], ImageDecodeError, "PNG"),
        (VALID_JPEG[:3], ImageDecodeError, "JPEG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 2000, ImageDecodeError, "JPEG"),
        (png_header_only(64, 64), ImageDecodeError, "PNG"),
        (png_header_only(0, 64), ImageDecodeError, "PNG"),
        (b"GIF89a" + b"\xff" * 10, ImageDecodeError, "GIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20, ImageDecodeError, "WEBP"),
        (b"II*\x00" + b"\x08\x00\x00\x00" + b"\xff" * 30, UnsupportedImageType, "TIFF"),
        (zip_bytes(), ImageDecodeError, "first bytes: 50 4b 03 04"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", ImageDecodeError, "not a recognised image format"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', UnsupportedImageType, "SVG"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', UnsupportedImageType, "SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32, UnsupportedImageType, "HEIC"),
    ],
    ids=[
        "empty", "random", "truncated-jpeg", "truncated-png", "jpeg-magic-only", "jpeg-garbage-body",
        "png-garbage-body", "png-zero-width", "gif-garbage", "webp-garbage", "tiff-garbage", "zip", "html",
        "svg", "svg-xml", "heic",
    ],
)
def test_hostile_input_gets_a_typed_error(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        prepare_image(data, CONFIG)
    assert message in str(info.value)
    assert not isinstance(info.value, ImageTooLarge)


def test_truncated_jpeg_says_truncated() -> None:
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        prepare_image(VALID_JPEG[:-200], CONFIG)


def check_never_escapes(data: bytes) -> None:
    try:
        prepared = prepare_image(data, CONFIG)
    except ModelRepoError:
        return
    assert_valid(prepared)


# Pillow warns (UserWarning) about much of what the fuzzer produces; only exceptions matter here.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_never_escapes(data)


def small_sample(fmt: str) -> bytes:
    img = photo(48, 32, seed=3)
    if fmt == "GIF":
        img = img.convert("P")
    return encode(img, fmt)


SAMPLES = {fmt: small_sample(fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP")}


@st.composite
def mutations(draw: st.DrawFn, fmt: str) -> bytes:
    data = bytearray(SAMPLES[fmt])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif len(data) > 8:
            del data[pos : pos + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_fuzz_mutated_valid_images(fmt: str) -> None:
    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutations(fmt))
    def run(data: bytes) -> None:
        check_never_escapes(data)

    run()


# --- declared types and sniffing ---------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "", "application/octet-stream", "image/png", "IMAGE/PNG; q=1"])
def test_declared_types_that_defer_to_the_bytes(content_type: str | None) -> None:
    assert check_declared_type(content_type, VALID_PNG) == "png"


def test_mislabelled_image_is_accepted_by_its_bytes() -> None:
    assert check_declared_type("image/jpeg", VALID_PNG) == "png"
    assert check_declared_type("image/jpg", VALID_JPEG) == "jpeg"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "image/svg+xml", "image/heic", "image/x-icon", "nonsense"]
)
def test_declared_types_we_refuse(content_type: str) -> None:
    with pytest.raises(UnsupportedImageType):
        check_declared_type(content_type, VALID_PNG)


def test_declared_image_with_unknown_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        check_declared_type("image/png", b"hello world")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=60)), st.sampled_from([b"", VALID_PNG, b"<svg/>", b"junk"]))
def test_fuzz_declared_types(content_type: str | None, data: bytes) -> None:
    with contextlib.suppress(ModelRepoError):
        assert check_declared_type(content_type, data) == "png"


def test_sniffing() -> None:
    assert require_format(VALID_JPEG) == "jpeg"
    assert require_format(VALID_PNG) == "png"
    with pytest.raises(ImageDecodeError, match="empty"):
        require_format(b"")
    with pytest.raises(UnsupportedImageType):
        require_format(b"<svg/>")  # recognised, but not decodable


# --- the decode benchmark ----------------------------------------------------------------------


def test_decode_benchmark_runs_and_prints_numbers() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench_decode.py"), "--rounds", "2", "--big", "800x600"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=True,
    )
    rows = [line.split() for line in result.stdout.splitlines() if line and not line.startswith("#")]
    assert rows[0][:2] == ["case", "bytes"]
    cases = {row[0]: row for row in rows[1:]}
    assert set(cases) == {"big_draft", "big_full", "small_draft", "small_full"}
    for row in cases.values():
        assert int(row[1]) > 0 and all(float(v) > 0 for v in row[2:])
