"""Drift monitoring: per model, a rolling window of its last answers against a reference.

The recorder hands every request's outcome to `DriftMonitor.observe`, on the request's own path,
where each answer costs one small tuple appended to a bounded deque. At a scrape (`snapshots`)
the pending answers go into a fixed-size ring whose running counts (per class, confidence sum,
low-confidence count, brightness sum, image-size buckets) gain each answer while the one it
pushes out leaves them, O(1) each; PSI and the ratios come from those counts.

The reference is a saved file (events/drift_reference.py) or, without one, the model's first
`drift_reference_size` answers after start. Windows are per model name: a new version of a model
continues its window and keeps its reference.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from batchserve.events.drift_reference import SHORT_SIDE_BUCKETS, DriftReference, now_iso, short_side_bucket
from batchserve.serving.classifier import Classification, Classified
from batchserve.serving.drift_config import DriftConfig
from batchserve.serving.drift_psi import psi, top_bins, window_bins

__all__ = ["DriftMonitor", "DriftSnapshot", "ModelDrift"]

NO_SIZE = -1
_Answer = tuple[int, float, float | None, int]  # class id, top-1 score, brightness, short-side bucket


@dataclass(frozen=True)
class DriftSnapshot:
    """One model's drift figures at one moment (None: not known yet)."""

    model: str
    window_answers: int
    reference_answers: int
    reference_ready: bool
    psi: float | None
    """Class mix PSI; known once the reference is complete and the window full."""
    mean_confidence: float | None
    low_confidence_ratio: float | None
    reference_mean_confidence: float | None
    brightness_mean: float | None
    short_side_ratios: dict[str, float] = field(default_factory=dict)
    size_psi: float | None = None


class _Tally:
    """Running sums over a multiset of answers; adding and removing are O(1)."""

    __slots__ = ("answers", "brightness_n", "brightness_sum", "classes", "low", "score_sum", "sides", "threshold")

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.answers = 0
        self.classes: dict[int, int] = {}
        self.score_sum = 0.0
        self.low = 0
        self.brightness_sum = 0.0
        self.brightness_n = 0
        self.sides = [0] * len(SHORT_SIDE_BUCKETS)

    def add(self, answer: _Answer) -> None:
        class_id, score, brightness, side = answer
        self.answers += 1
        classes = self.classes
        classes[class_id] = classes.get(class_id, 0) + 1
        self.score_sum += score
        if score < self.threshold:
            self.low += 1
        if brightness is not None:
            self.brightness_sum += brightness
            self.brightness_n += 1
        if side != NO_SIZE:
            self.sides[side] += 1

    def remove(self, answer: _Answer) -> None:
        class_id, score, brightness, side = answer
        self.answers -= 1
        classes = self.classes
        left = classes[class_id] - 1
        if left:
            classes[class_id] = left
        else:
            del classes[class_id]  # the dict stays as small as the window's distinct classes
        self.score_sum -= score
        if score < self.threshold:
            self.low -= 1
        if brightness is not None:
            self.brightness_sum -= brightness
            self.brightness_n -= 1
        if side != NO_SIZE:
            self.sides[side] -= 1

    @property
    def mean_confidence(self) -> float | None:
        # Clamped: a sum kept by adding and subtracting floats may stray by rounding.
        return min(1.0, max(0.0, self.score_sum / self.answers)) if self.answers else None

    @property
    def low_confidence_ratio(self) -> float | None:
        return self.low / self.answers if self.answers else None

    @property
    def brightness_mean(self) -> float | None:
        return self.brightness_sum / self.brightness_n if self.brightness_n else None

    def short_sides(self) -> dict[str, int]:
        return {label: n for label, n in zip(SHORT_SIDE_BUCKETS, self.sides, strict=True) if n}

    def as_reference(self, model: str, source: str) -> DriftReference:
        return DriftReference(
            model=model, answers=self.answers, classes=dict(sorted(self.classes.items())),
            mean_confidence=self.mean_confidence or 0.0, confidence_threshold=self.threshold,
            low_confidence_ratio=self.low_confidence_ratio or 0.0, short_sides=self.short_sides(),
            brightness_mean=self.brightness_mean, source=source, created_at=now_iso(),
        )


class ModelDrift:
    """One model's window and reference.

    `add` runs on the request path and only appends to `_pending`, a deque as long as the window
    (appending is atomic, so it needs no lock): answers pushed out of it unseen would have left the
    window anyway. The answers are folded into the ring and its counts when a snapshot is taken
    (at a scrape, on whichever thread serves it). Only while the reference is still being counted
    from the first answers does `add` fold at once, since every one of those must count."""

    def __init__(self, model: str, config: DriftConfig, reference: DriftReference | None = None) -> None:
        self.model = model
        self._window_size = config.drift_window
        self._reference_size = config.drift_reference_size
        self._bin_count = config.drift_bins
        self._pending: deque[_Answer] = deque(maxlen=config.drift_window)
        self._ring: list[_Answer | None] = [None] * config.drift_window
        self._next = 0
        self._window = _Tally(config.drift_confidence_threshold)
        # Without a file, the first answers are counted here until there are enough of them.
        self._collecting: _Tally | None = _Tally(config.drift_confidence_threshold) if reference is None else None
        self._reference: DriftReference | None = None
        self._bins: tuple[int, ...] = ()
        self._reference_sides: dict[str, int] = {}
        self._lock = threading.Lock()
        if reference is not None:
            self._use(reference)

    @property
    def reference(self) -> DriftReference | None:
        return self._reference

    def _use(self, reference: DriftReference) -> None:
        self._bins = top_bins(reference.classes, self._bin_count)
        self._reference_sides = {label: reference.short_sides.get(label, 0) for label in SHORT_SIDE_BUCKETS}
        self._reference = reference

    def add(self, answers: Iterable[_Answer]) -> None:
        """Answers as (class id, top-1 score, brightness or None, short-side bucket or NO_SIZE)."""
        if self._collecting is None:
            self._pending.extend(answers)
            return
        with self._lock:
            self._fold()
            for answer in answers:
                self._apply(answer)

    def _fold(self) -> None:
        """Move the pending answers into the window (holding the lock)."""
        pending = self._pending
        while pending:
            self._apply(pending.popleft())

    def _apply(self, answer: _Answer) -> None:
        ring, position = self._ring, self._next
        leaving = ring[position]
        if leaving is not None:
            self._window.remove(leaving)
        ring[position] = answer
        self._next = position + 1 if position + 1 < self._window_size else 0
        self._window.add(answer)
        collecting = self._collecting
        if collecting is not None:
            collecting.add(answer)
            if collecting.answers >= self._reference_size:
                self._use(collecting.as_reference(self.model, f"first {collecting.answers} answers after start"))
                self._collecting = None

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            self._fold()
            window, reference = self._window, self._reference
            full = window.answers >= self._window_size
            sides = window.short_sides()
            sized = sum(sides.values())
            class_psi = size_psi = None
            if reference is not None and full:
                bins = window_bins(self._bins, window.classes, self._bin_count)
                class_psi = psi(reference.classes, window.classes, bins)
                if sized and any(self._reference_sides.values()):
                    size_psi = psi(self._reference_sides, sides, SHORT_SIDE_BUCKETS)
            collecting = self._collecting
            return DriftSnapshot(
                model=self.model,
                window_answers=window.answers,
                reference_answers=reference.answers if reference is not None else
                (collecting.answers if collecting is not None else 0),
                reference_ready=reference is not None,
                psi=class_psi,
                mean_confidence=window.mean_confidence,
                low_confidence_ratio=window.low_confidence_ratio,
                reference_mean_confidence=reference.mean_confidence if reference is not None else None,
                brightness_mean=window.brightness_mean,
                short_side_ratios={label: sides.get(label, 0) / sized for label in SHORT_SIDE_BUCKETS} if sized else {},
                size_psi=size_psi,
            )


class DriftMonitor:
    """Every model's drift, fed by the recorder with each request's outcome."""

    def __init__(self, config: DriftConfig, references: dict[str, DriftReference] | None = None) -> None:
        self.config = config
        self._references = config.references() if references is None else references
        # Models with a reference file show it on /metrics before their first answer.
        self._models: dict[str, ModelDrift] = {
            name: ModelDrift(name, config, reference) for name, reference in self._references.items()}
        self._adding = threading.Lock()

    def model(self, name: str) -> ModelDrift:
        """The model's window, made on its first answer (names come from the registry, not from
        clients, so their number is bounded)."""
        found = self._models.get(name)
        if found is not None:
            return found
        with self._adding:
            return self._models.setdefault(name, ModelDrift(name, self.config, self._references.get(name)))

    def observe(self, outcome: Classification) -> None:
        """Each answered sample of a request: its top-1 class and score, and what is known of its
        image, in the window of the model that really answered it (a fallback's own)."""
        answers: dict[str, list[_Answer]] = {}
        for result in outcome.results:
            if not isinstance(result, Classified) or not result.predictions:
                continue
            top = result.predictions[0]
            decoded = result.decoded
            if decoded is not None:
                size = short_side_bucket(decoded.prepared.width, decoded.prepared.height)
                answer: _Answer = (top.class_id, top.score, decoded.brightness, size)
            elif result.cached is not None:  # never decoded, but the cache knows the image's size
                scores = result.cached.scores
                answer = (top.class_id, top.score, None, short_side_bucket(scores.width, scores.height))
            else:  # sent as a tensor, or decoded by another tier
                answer = (top.class_id, top.score, None, NO_SIZE)
            name = outcome.answered_by(result).name
            found = answers.get(name)
            if found is None:
                answers[name] = [answer]
            else:
                found.append(answer)
        for name, some in answers.items():
            (self._models.get(name) or self.model(name)).add(some)

    def snapshots(self, models: Collection[str] | None = None) -> list[DriftSnapshot]:
        """Figures of every model seen (only those in `models` when given), by name."""
        return [drift.snapshot() for name, drift in sorted(self._models.items()) if models is None or name in models]
