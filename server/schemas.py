"""Response shapes of the v1 API (msgspec Structs: fast to encode, and they document /schema)."""

from __future__ import annotations

from typing import Any

import msgspec


class PredictionOut(msgspec.Struct):
    class_id: int
    label: str
    score: float


class Timing(msgspec.Struct):
    queue: float
    inference: float
    total: float


class ClassifyResult(msgspec.Struct):
    request_id: str
    model: str
    model_version: int
    predictions: list[PredictionOut]
    timing_ms: Timing
    batch_size: int

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__}


class ErrorOut(msgspec.Struct):
    code: str
    message: str


class FileOutcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One uploaded file: a result object plus its filename, or its filename and an error.

    One struct with omitted empty fields (rather than a union of two) keeps the OpenAPI schema
    generable and the JSON exactly as documented."""

    filename: str | None
    request_id: str | None = None
    model: str | None = None
    model_version: int | None = None
    predictions: list[PredictionOut] | None = None
    timing_ms: Timing | None = None
    batch_size: int | None = None
    error: ErrorOut | None = None


class MultiClassifyResult(msgspec.Struct):
    request_id: str
    results: list[FileOutcome]
