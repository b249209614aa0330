"""An upstream's GET /v1/models answer, decoded and checked: the models it serves, as the web tier's
catalog needs them. Fields the web tier does not use are ignored, so newer upstreams still parse."""

from __future__ import annotations

from typing import Any

import msgspec


class TensorEntry(msgspec.Struct):
    name: str
    shape: list[int]


class BatchingEntry(msgspec.Struct):
    max_batch_size: int
    max_queue_delay_ms: float
    preferred_batch_sizes: list[int]
    max_queue_size: int
    max_inflight_batches: int
    default_timeout_ms: float
    max_timeout_ms: float


class ModelEntry(msgspec.Struct):
    """One version as an upstream's /v1/models lists it (server/model_summary.py writes it): what
    the web tier uses, typed, and in `raw` the whole entry as sent, which /v1/models shows."""

    name: str
    version: int
    classes: int
    batching: BatchingEntry
    description: str = ""
    execution_providers: list[str] = msgspec.field(default_factory=list)
    input: TensorEntry | None = None
    output: TensorEntry | None = None
    stats: dict[str, Any] = msgspec.field(default_factory=dict)
    loaded_at: float = 0.0
    raw: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)


class ModelsAnswer(msgspec.Struct):
    models: list[ModelEntry]
    default_model: str | None = None


class _RawAnswer(msgspec.Struct):
    models: list[dict[str, Any]]
    default_model: str | None = None


_DECODER = msgspec.json.Decoder(_RawAnswer)


class ListingError(ValueError):
    """The answer is not a batchserve /v1/models answer."""


def decode_models(body: bytes) -> ModelsAnswer:
    try:
        raw = _DECODER.decode(body)
        entries = [msgspec.structs.replace(msgspec.convert(item, ModelEntry), raw=item) for item in raw.models]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ListingError(f"its /v1/models answer is not batchserve's: {exc}") from None
    for entry in entries:
        if entry.version < 1 or entry.classes < 1:
            raise ListingError(f"its /v1/models lists {entry.name!r} version {entry.version} with "
                               f"{entry.classes} classes")
    return ModelsAnswer(entries, raw.default_model)
