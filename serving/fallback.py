"""A model that answers when another cannot: the per-model `fallback` knob.

A model (the primary) whose `fallback` names another model hands that model the images it cannot
answer itself: all of a request's images when the primary is not loaded (not ready yet, or
unloaded), the ones its batcher refused (queue full) or whose batch failed. The fallback answers
with its own latest version, and the answer and its event name the model that really answered
and the primary it stood in for. Exactly one hop: a fallback's own fallback is never asked, and
when the fallback cannot answer either the request gets the primary's error, unchanged.

A fallback's answers are never cached: the cache holds only what a model said for itself.
Deadline failures never fall back (the time is gone whoever answers), nor does an image that could
not be decoded (it would fail the same way), nor a model the server has never known (a misspelt
name stays a 404).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from batchserve.model_repo.errors import ModelLoadError, ModelNotFound
from batchserve.serving.errors import ErrorInfo
from batchserve.serving.knobs import ModelSettings
from batchserve.serving.registry import LoadedModel, ModelRegistry

log = logging.getLogger("batchserve.fallback")

FallbackReason = Literal["unavailable", "queue_full", "batch_failed"]
REASONS: tuple[FallbackReason, ...] = ("unavailable", "queue_full", "batch_failed")


@dataclass(eq=False)
class StandIn(LoadedModel):
    """A loaded model answering for another: the same batcher, labels and leases as the model it
    is, and a note of the primary it stands in for and why."""

    primary: str = ""
    reason: FallbackReason = "unavailable"

    @classmethod
    def of(cls, model: LoadedModel, primary: str, reason: FallbackReason) -> StandIn:
        same = {f.name: getattr(model, f.name) for f in dataclasses.fields(LoadedModel) if f.init}
        return cls(**same, primary=primary, reason=reason)


def fallback_reason(error: ErrorInfo) -> FallbackReason | None:
    """Whether a failed batch is one a fallback may answer instead, and why."""
    if error.code == "queue_full":
        return "queue_full"
    if error.status >= 500 and error.code != "deadline_exceeded":
        return "batch_failed"
    return None


def same_input(a: LoadedModel, b: LoadedModel) -> bool:
    """Whether an image prepared for `a` is already what `b` takes (no second decode needed)."""
    return a.preprocess == b.preprocess and a.input_shape == b.input_shape


@dataclass
class FallbackStats:
    # Images a fallback answered, by (primary, fallback, reason).
    answered: Counter[tuple[str, str, FallbackReason]] = field(default_factory=Counter)
    # Images (or refused requests) whose fallback could not answer either, by (primary, reason).
    unanswered: Counter[tuple[str, FallbackReason]] = field(default_factory=Counter)


class Fallbacks:
    """Finds each model's fallback in the registry and counts what fallbacks did. `registry_of`
    gives the registry to look in: the serving core's, whichever that is at the time (a front end
    may install its own, as the remote backend's catalog)."""

    def __init__(self, registry_of: Callable[[], ModelRegistry]) -> None:
        self._registry_of = registry_of
        self.stats = FallbackStats()
        # primary -> (the spec its knobs were read from, its fallback): merging a model's knobs
        # reads a dozen environment variables and validates them all (~0.2 ms), and admission asks
        # on every refusal of a full queue. A reloaded model has a new spec, so it is read again.
        self._targets: dict[str, tuple[object, str | None]] = {}
        self._targets_of: ModelRegistry | None = None  # the registry those answers came from

    @property
    def registry(self) -> ModelRegistry:
        return self._registry_of()

    def target(self, primary: str) -> str | None:
        """The fallback the primary's knobs name (config.toml < env < flags), if any but itself."""
        registry = self.registry
        spec = registry.spec(primary)
        cached = self._targets.get(primary)
        if cached is not None and cached[0] is spec and registry is self._targets_of:
            return cached[1]
        knobs = registry.config.knobs.for_model(primary, spec.batching if spec is not None else {})
        try:
            name = ModelSettings.from_knobs(knobs).routing.fallback
        except ModelLoadError:  # the primary's knobs are wrong: it could not load either, and says why
            name = None
        target = name if name and name != primary else None
        if registry is not self._targets_of:
            self._targets, self._targets_of = {}, registry
        self._targets[primary] = (spec, target)
        return target

    def lease(self, name: str | None, version: int | None = None, k: int | None = None) -> LoadedModel:
        """The loaded version a request asks for (`ModelRegistry.lease`) or, when its model is known
        but not loaded, a stand-in able to give `k` predictions. Raises the primary's ModelNotFound
        when neither can answer."""
        registry = self.registry
        try:
            return registry.lease(name, version)
        except ModelNotFound:
            # A version the model does not have is the client's mistake, not an outage.
            if name is None or name in registry.names() or not self._known(name):
                raise
            stand_in = self.stand_in(name, "unavailable", k)
            if stand_in is None:
                if self.target(name) is not None:
                    self.stats.unanswered[(name, "unavailable")] += 1
                raise
            return stand_in

    def stand_in(self, primary: str, reason: FallbackReason, k: int | None = None) -> StandIn | None:
        """The primary's fallback, leased for the current request, if it is loaded and has at least
        `k` classes; None otherwise."""
        target = self.target(primary)
        if target is None:
            return None
        try:
            model = self.registry.lease(target)
        except ModelNotFound:
            return None
        if k is not None and k > model.classes:
            return None
        return StandIn.of(model, primary, reason)

    def covers(self, model: LoadedModel, samples: int = 1) -> bool:
        """Whether the model's fallback is loaded with room in its queue for `samples` more: an
        admission check that would refuse a request because `model`'s queue is full lets it in."""
        target = self.target(model.name)
        if target is None:
            return False
        try:
            fallback = self.registry.find(target)
        except ModelNotFound:
            return False
        return fallback.batcher.refusal(samples) is None

    def count(self, stand_in: StandIn, answered: int, unanswered: int) -> None:
        if answered:
            self.stats.answered[(stand_in.primary, stand_in.name, stand_in.reason)] += answered
        if unanswered:
            self.stats.unanswered[(stand_in.primary, stand_in.reason)] += unanswered

    def _known(self, name: str) -> bool:
        """A model the server loaded once or is loading: not ready yet, or unloaded."""
        return self.registry.spec(name) is not None or name in self.registry.expected
