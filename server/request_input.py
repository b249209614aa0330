"""What an HTTP request carries, read once for every route family: its body, its images, its deadline."""

from __future__ import annotations

from collections.abc import Mapping

from litestar import Request
from litestar.datastructures import UploadFile
from litestar.exceptions import InternalServerException

from batchserve.serving.classifier import ImageInput
from batchserve.serving.errors import InvalidParameter, InvalidRequest, UnsupportedMediaType

MULTIPART = "multipart/form-data"
RAW_TYPES_WITHOUT_IMAGE_PREFIX = ("", "application/octet-stream")
TIMEOUT_HEADER = "x-request-timeout-ms"


async def read_body(request: Request) -> bytes:
    """The whole body, capped by the app's request_max_body_size (Litestar answers 413 past it)."""
    try:
        return await request.body()
    except InternalServerException as exc:  # raised by Litestar when the client hangs up mid-body
        raise InvalidRequest("the client disconnected before the request body was complete") from exc


async def read_images(request: Request, max_files: int) -> tuple[list[ImageInput], bool]:
    """(images, is_multipart) from a raw image body or a multipart form with `image` files."""
    media_type = request.content_type[0].lower()
    if media_type == MULTIPART:
        form = await request.form()
        parts = form.getall("image") if "image" in form else []
        if not parts:
            fields = ", ".join(sorted(form.keys())) or "none"
            raise InvalidRequest(f"multipart request has no 'image' file field (fields sent: {fields})")
        if len(parts) > max_files:
            raise InvalidRequest(f"too many files: {len(parts)} sent, at most {max_files} per request")
        images = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise InvalidRequest("the 'image' field must be a file upload, not a text value")
            images.append(ImageInput(await part.read(), part.filename or None, part.content_type or None))
        return images, True
    if media_type.startswith("image/") or media_type in RAW_TYPES_WITHOUT_IMAGE_PREFIX:
        body = await read_body(request)
        if not body:
            raise InvalidRequest("the request body is empty: send the image bytes, or multipart 'image' files")
        return [ImageInput(body, None, media_type or None)], False
    raise UnsupportedMediaType(
        f"Content-Type {media_type!r} is not accepted: send image/* bytes or multipart/form-data with 'image' files"
    )


def header_timeout_ms(headers: Mapping[str, str]) -> float | None:
    """The client's deadline from `X-Request-Timeout-Ms` (None when absent)."""
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidParameter(f"X-Request-Timeout-Ms must be a number of milliseconds, not {value!r}") from None
