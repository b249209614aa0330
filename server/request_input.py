"""What an HTTP request carries, read once for every route family: its body, its images, its deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar import Request
from litestar.datastructures import UploadFile
from litestar.exceptions import InternalServerException

from batchserve.server.client_numbers import finite_decimal, header_value
from batchserve.serving.classifier import ImageInput
from batchserve.serving.errors import InvalidParameter, InvalidRequest, UnsupportedMediaType

MULTIPART = "multipart/form-data"
CLIENT_LEFT = "the client disconnected before the request body was complete"
RAW_TYPES_WITHOUT_IMAGE_PREFIX = ("", "application/octet-stream")
TIMEOUT_HEADER = "x-request-timeout-ms"


async def read_body(request: Request) -> bytes:
    """The whole body, capped by the app's request_max_body_size (Litestar answers 413 past it)."""
    try:
        return await request.body()
    except InternalServerException as exc:  # raised by Litestar when the client hangs up mid-body
        raise InvalidRequest(CLIENT_LEFT) from exc


async def read_images(request: Request, max_files: int) -> tuple[list[ImageInput], bool]:
    """(images, is_multipart) from a raw image body or a multipart form with `image` files."""
    media_type = request.content_type[0].lower()
    if media_type == MULTIPART:
        try:
            form = await request.form()
        except InternalServerException as exc:  # as in read_body: the client hung up mid-form
            raise InvalidRequest(CLIENT_LEFT) from exc
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
    return await raw_image(media_type, lambda: read_body(request)), False


async def raw_image(media_type: str, read_body: Callable[[], Awaitable[bytes]]) -> list[ImageInput]:
    """The one image a request sends as its whole body (of type `media_type`, lower case, not
    multipart); a type that is no image is refused before the body is read."""
    if media_type.startswith("image/") or media_type in RAW_TYPES_WITHOUT_IMAGE_PREFIX:
        body = await read_body()
        if not body:
            raise InvalidRequest("the request body is empty: send the image bytes, or multipart 'image' files")
        return [ImageInput(body, None, media_type or None)]
    raise UnsupportedMediaType(
        f"Content-Type {media_type!r} is not accepted: send image/* bytes or multipart/form-data with 'image' files"
    )


def requested_timeout_ms(query: str | None, header: str | None) -> float | None:
    """The client's deadline: the `timeout_ms` query parameter, else the `X-Request-Timeout-Ms` header."""
    if query is not None:
        return timeout_ms_value(query, "timeout_ms")
    if header is not None:
        return timeout_ms_value(header_value(header), "X-Request-Timeout-Ms")
    return None


def timeout_ms_value(text: str, what: str) -> float:
    """A deadline in milliseconds as a client writes it: a positive, finite ASCII number."""
    value = finite_decimal(text)
    if value is None or value <= 0:
        raise InvalidParameter(f"{what} must be a positive, finite number of milliseconds, not {text[:40]!r}")
    return value
