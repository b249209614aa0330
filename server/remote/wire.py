"""What goes to an upstream's POST /v1/classify and what its answer means, per image.

One image goes as the raw body (the cheapest request there is: no framing, no base64, measured
against V2's binary tensors in docs/remote-backend.md); several go as one multipart request, so
they ride the upstream's batches together and each keeps its own answer or error. File names stay
here (the upstream sees "0", "1", ...): the answer names each file from the client's request.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import msgspec

from batchserve.serving.classifier import ImageInput, Prediction
from batchserve.serving.errors import ErrorInfo, status_of


@dataclass(frozen=True)
class Outbound:
    """One request to an upstream, without the headers that change per try (deadline)."""

    path_and_query: str
    body: bytes
    content_type: str | None  # None: no Content-Type header, the upstream sniffs the bytes
    images: int


def header_safe(value: str | None) -> str | None:
    """A client's declared type, passed on only when it is plain printable ASCII."""
    if value and value.isascii() and value.isprintable():  # no control characters: no CR/LF
        return value
    return None


def classify_request(model: str, version: int, k: int, images: Sequence[ImageInput]) -> Outbound:
    query = f"/v1/classify?model={quote(model, safe='')}&version={version}&top_k={k}"
    if len(images) == 1:
        (image,) = images
        return Outbound(query, image.data, header_safe(image.content_type), 1)
    body, content_type = multipart_body(images)
    return Outbound(query, body, content_type, len(images))


def multipart_body(images: Sequence[ImageInput]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in image.data for image in images):  # astronomically rare; cheap to rule out
        boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for index, image in enumerate(images):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{index}"\r\n'
        declared = header_safe(image.content_type)
        if declared is not None:
            head += f"Content-Type: {declared}\r\n"
        parts += [head.encode() + b"\r\n", image.data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ---- answers ---------------------------------------------------------------------------------
class PredictionWire(msgspec.Struct):
    class_id: int
    label: str
    score: float


class TimingWire(msgspec.Struct):
    queue: float = 0.0
    inference: float = 0.0


class ErrorWire(msgspec.Struct):
    code: str
    message: str


class EntryWire(msgspec.Struct):
    """A result object, or one multipart entry (a result or an error). `model` and `model_version`
    matter only with `fallback` (else they are the model asked for); `cache` is "hit" or absent."""

    predictions: list[PredictionWire] | None = None
    timing_ms: TimingWire | None = None
    batch_size: int = 0
    error: ErrorWire | None = None
    model: str | None = None
    model_version: int | None = None
    cache: str | None = None
    fallback: bool = False


class AnswerWire(EntryWire):
    """Any /v1/classify answer: a result, `{"error"}`, or multipart's `{"results"}`."""

    results: list[EntryWire] | None = None


_DECODER = msgspec.json.Decoder(AnswerWire)


@dataclass(frozen=True)
class Answered:
    predictions: list[Prediction]
    queue_ms: float
    inference_ms: float
    batch_size: int
    cache_hit: bool = False  # the upstream answered from its result cache
    fallback: tuple[str, int] | None = None  # the model and version that answered in the asked one's place


ImageAnswer = Answered | ErrorInfo


class AnswerError(ValueError):
    """Not an answer batchserve gives (a proxy's page, a truncated body, a wrong count of entries)."""


def decode_answer(body: bytes) -> AnswerWire:
    try:
        return _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise AnswerError(f"{exc} (body starts {body[:80]!r})") from None


def whole_error(answer: AnswerWire, status: int, headers: dict[str, str]) -> ErrorInfo | None:
    """The error that answers the whole request: `{"error"}`, or the first entry's error when every
    file failed (as the upstream's own status says)."""
    if answer.error is not None:
        return ErrorInfo(status, answer.error.code, answer.error.message, headers)
    if answer.results and all(entry.error is not None for entry in answer.results):
        first = answer.results[0].error
        assert first is not None
        return ErrorInfo(status, first.code, first.message, headers)
    return None


def image_answers(answer: AnswerWire, status: int, headers: dict[str, str], count: int) -> list[ImageAnswer]:
    """Each forwarded image's answer, in order. Raises AnswerError when the answer does not fit."""
    if answer.results is not None:
        if len(answer.results) != count:
            raise AnswerError(f"{len(answer.results)} results for {count} images")
        return [_entry(entry) for entry in answer.results]
    if answer.error is not None:
        return [ErrorInfo(status, answer.error.code, answer.error.message, headers)] * count
    if count != 1 or answer.predictions is None:
        raise AnswerError("neither predictions, results nor an error")
    return [_entry(answer)]


def _entry(entry: EntryWire) -> ImageAnswer:
    if entry.error is not None:
        return ErrorInfo(status_of(entry.error.code), entry.error.code, entry.error.message)
    if entry.predictions is None:
        raise AnswerError("an entry with neither predictions nor an error")
    timing = entry.timing_ms or TimingWire()
    fallback = None
    if entry.fallback:
        if entry.model is None or entry.model_version is None:
            raise AnswerError("a fallback answer that does not name the model that answered")
        fallback = (entry.model, entry.model_version)
    return Answered([Prediction(p.class_id, p.label, p.score) for p in entry.predictions], timing.queue,
                    timing.inference, entry.batch_size, entry.cache == "hit", fallback)
