"""Which image formats batchserve decodes, recognised from their magic bytes.

The bytes decide the format, not the file name or the declared Content-Type: clients label
uploads wrongly all the time (a PNG sent as `image/jpeg` is common), while a magic number is
what the decoder will actually see. The declared type only decides whether the request is
about an image at all (415 when it plainly is not).

Accepted: JPEG, PNG, WebP, GIF and BMP, what cameras, phones, browsers and screenshot tools
produce. Every other format is refused with 415 before any decoder runs, even where Pillow could
read it: TIFF is a container of dozens of compressions, sample formats and pages that nobody
uploads to a classifier, AVIF/HEIF decoding costs far more CPU per pixel than a JPEG of the same
picture, and each decoder enabled is attack surface. The same list restricts Pillow itself
(`Image.open(formats=...)`), so no other plugin sees the bytes. See docs/image-formats.md.
"""

from __future__ import annotations

from batchserve.model_repo.errors import ImageDecodeError, UnsupportedImageType

# format name -> (Pillow's format id, canonical media type)
_FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
    "bmp": ("BMP", "image/bmp"),
}

# Media types clients actually send for the formats above (non-standard aliases included).
_MEDIA_TYPES: dict[str, str] = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "image/x-png": "png",
    "image/apng": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/x-bmp": "bmp",
    "image/x-ms-bmp": "bmp",
}

# Declared types that mean "no opinion, look at the bytes".
_SNIFF_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


_SUPPORTED = frozenset(_FORMATS)


def supported_formats() -> frozenset[str]:
    """The formats this server decodes."""
    return _SUPPORTED


def accepted_media_types() -> tuple[str, ...]:
    """The canonical media type of every accepted format, in the order the documentation lists them."""
    return tuple(media_type for _, media_type in _FORMATS.values())


def pillow_format(fmt: str) -> str:
    """Pillow's id for one of our format names (what `Image.open(formats=...)` takes)."""
    return _FORMATS[fmt][0]


def _iso_bmff_brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF `ftyp` box (AVIF and HEIF files start with one)."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    box_size = int.from_bytes(data[0:4], "big")
    end = min(max(box_size, 16), len(data), 256)
    brands = {data[8:12]}
    brands.update(data[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def _sniff_any(data: bytes) -> str | None:
    """Every format we can name from its magic bytes, decodable or not."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM" and len(data) >= 26:  # 14-byte file header + the smallest info header
        return "bmp"
    if data[:4] in _TIFF_MAGIC:
        return "tiff"
    brands = _iso_bmff_brands(data)
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heic"
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "svg"
    return None


def describe_bytes(data: bytes) -> str:
    """A short hex dump of the first bytes, for error messages about unrecognised input."""
    if not data:
        return "the body is empty"
    return f"first bytes: {data[:8].hex(' ')}"


def require_format(data: bytes) -> str:
    """The decodable format of `data`, or the typed error that explains why there is none."""
    fmt = _sniff_any(data)
    if fmt in _SUPPORTED:
        return fmt
    if fmt is not None:
        raise UnsupportedImageType(
            f"{fmt.upper()} images are not supported; send one of: {_supported_list()}"
        )
    raise ImageDecodeError(f"not a recognised image format ({describe_bytes(data)})")


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _supported_list() -> str:
    return ", ".join(accepted_media_types())


def check_declared_type(content_type: str | None, data: bytes) -> str:
    """Accept or refuse an upload by its declared type, then return the format of its bytes.

    - absent, empty or `application/octet-stream`: the bytes decide;
    - a media type of a format we decode (aliases such as `image/jpg` included): the bytes
      decide, so a mislabelled but valid image is still accepted;
    - any other type, `image/svg+xml` or `image/heic` as much as `text/plain`: UnsupportedImageType.

    Raises ImageDecodeError when the type is acceptable but the bytes are not a known image.
    """
    media_type = _media_type(content_type or "")
    if media_type not in _SNIFF_TYPES and media_type not in _MEDIA_TYPES:
        raise UnsupportedImageType(
            f"content type {media_type or content_type!r} is not an image type this server decodes; "
            f"send one of: {_supported_list()}"
        )
    return require_format(data)
