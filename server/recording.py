"""The one recording seam of the HTTP routes that classify.

A route runs inside `recording(...)`: it names the model it uses and hands over its
`Classification` with `finish`; when something stops it first (a bad parameter, an unknown model,
an unreadable body) the error is recorded instead. Either way the serving core's recorder is
called exactly once per request, here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from litestar.types import Scope

from batchserve.server.errors import describe
from batchserve.server.request_context import caller_of
from batchserve.serving.classifier import Classification
from batchserve.serving.recording import Caller, Recorder
from batchserve.serving.registry import LoadedModel


class RequestRecording:
    def __init__(self, caller: Caller, model: str | None, version: int | None) -> None:
        self.started = time.monotonic()
        self.caller = caller
        self.model = model  # as requested, until `uses` names the version that answers
        self.version = version
        self.outcome: Classification | None = None
        self.latency_ms = 0.0

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0

    def uses(self, model: LoadedModel) -> LoadedModel:
        self.model, self.version = model.name, model.version
        return model

    def finish(self, outcome: Classification) -> float:
        """The request's outcome; returns its latency in milliseconds (the answer reports the same)."""
        self.outcome = outcome
        self.latency_ms = self.elapsed_ms()
        return self.latency_ms


@contextmanager
def recording(
    recorder: Recorder, scope: Scope, route: str, model: str | None = None, version: int | None = None,
) -> Iterator[RequestRecording]:
    record = RequestRecording(caller_of(scope), model, version)
    caller = record.caller
    try:
        yield record
    except Exception as exc:
        if record.outcome is None:
            recorder.record_refused(caller, route, describe(exc), record.elapsed_ms(), record.model, record.version)
        raise
    finally:
        if record.outcome is not None:
            recorder.record(caller, route, record.outcome, record.latency_ms)
