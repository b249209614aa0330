"""Drift monitoring: PSI's arithmetic, the rolling window, references, and the gauges of a real app."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import io
import json
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from batchserve.cli import main
from batchserve.events.drift_reference import (
    SHORT_SIDE_BUCKETS,
    SHORT_SIDE_EDGES,
    DriftReference,
    ReferenceFileError,
    load_reference,
    save_reference,
    short_side_bucket,
)
from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image
from batchserve.server.app import create_app
from batchserve.server.options import build_config
from batchserve.serving.cache import CachedScores, CacheHit
from batchserve.serving.classifier import Classification, Classified, Failed, ImageInput, Prediction
from batchserve.serving.drift import NO_SIZE, DriftMonitor, ModelDrift
from batchserve.serving.drift_config import DriftConfig
from batchserve.serving.drift_inputs import mean_brightness
from batchserve.serving.drift_psi import psi, top_bins, window_bins
from batchserve.serving.errors import ErrorInfo
from batchserve.serving.fallback import StandIn

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def psi_alert_threshold() -> float:
    """The threshold of the class-mix alert as deploy/prometheus/alerts.yml sets it."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    (expr,) = [r["expr"] for g in groups for r in g["rules"] if r.get("alert") == "BatchserveClassMixDrift"]
    found = re.search(r"batchserve_drift_psi\)?\s*>\s*([0-9.]+)", expr)
    assert found, expr
    return float(found.group(1))


ALERT_THRESHOLD = psi_alert_threshold()


# --- PSI ------------------------------------------------------------------------------------------

def test_psi_matches_a_hand_computed_example() -> None:
    reference = {1: 50, 2: 30, 3: 20}
    window = {1: 20, 2: 30, 3: 50}
    # (0.2 - 0.5) ln(0.2 / 0.5) + 0 + (0.5 - 0.2) ln(0.5 / 0.2) = 0.6 ln 2.5
    assert psi(reference, window) == pytest.approx(0.6 * math.log(2.5)) == pytest.approx(0.549774, abs=1e-6)
    # Class 1 alone, 2 and 3 in the others' bin: shares (0.5, 0.5) against (0.2, 0.8).
    assert psi(reference, window, bins=(1,)) == pytest.approx(-0.3 * math.log(0.4) + 0.3 * math.log(1.6))
    assert psi(reference, reference) == 0.0
    assert psi(reference, {k: 3 * v for k, v in reference.items()}) == pytest.approx(0.0)


def test_an_empty_bin_gets_the_floor_share() -> None:
    # The others' bin is empty in the reference: its share is 1e-4, not zero.
    value = psi({1: 10}, {1: 5, 2: 5}, bins=(1,))
    assert value == pytest.approx((0.5 - 1.0) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4))
    with pytest.raises(ValueError, match="at least one count"):
        psi({1: 1}, {})


def test_top_bins_are_the_references_most_frequent_classes_ties_by_id() -> None:
    assert top_bins({5: 30, 2: 90, 7: 30, 1: 10, 9: 9}, 3) == (2, 5, 7)
    # Under MIN_BIN_ANSWERS a count is mostly chance: such classes stay in the others' bin.
    assert top_bins({5: 30, 2: 90, 7: 30, 1: 10, 9: 9}, 10) == (2, 5, 7, 1)


def zipf_mix(classes: int = 1000, exponent: float = 1.1) -> list[float]:
    weights = [1 / (rank ** exponent) for rank in range(1, classes + 1)]
    total = sum(weights)
    return [w / total for w in weights]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_without_drift_the_binned_psi_stays_far_under_the_alert_threshold(seed: int) -> None:
    """A thousand answers from the same 1000-class mix on both sides: with one bin per class PSI
    is mostly sampling noise (over the threshold); with the reference's top 20 plus the rest it
    stays near its expected ~0.04."""
    rng = random.Random(seed)
    mix = zipf_mix()
    reference = Counter(rng.choices(range(1000), mix, k=1000))
    window = Counter(rng.choices(range(1000), mix, k=1000))
    bins = window_bins(top_bins(reference, 20), window, 20)
    assert psi(reference, window, bins) < 0.1
    assert psi(reference, window) > ALERT_THRESHOLD  # why the classes are binned


def test_a_skewed_class_mix_passes_the_alert_threshold() -> None:
    rng = random.Random(7)
    mix = zipf_mix()
    reference = Counter(rng.choices(range(1000), mix, k=1000))
    # A fifth of the traffic becomes one class the reference saw rarely (say a new product photo).
    rare = max(range(1000), key=lambda c: (reference[c] == 1, c))
    skewed = Counter(rng.choices(range(1000), mix, k=800)) + Counter({rare: 200})
    # In the others' bin it would barely show; it earns a bin of its own in this window.
    assert psi(reference, skewed, top_bins(reference, 20)) < ALERT_THRESHOLD
    bins = window_bins(top_bins(reference, 20), skewed, 20)
    assert bins[-1] == rare
    assert psi(reference, skewed, bins) > ALERT_THRESHOLD


def test_window_bins_add_only_classes_as_large_as_a_typical_bin() -> None:
    window = {1: 60, 2: 49, 3: 891}
    assert window_bins((3,), window, 20) == (3, 1)  # 1/20 of 1000 answers is 50
    assert window_bins((), {1: 9, 2: 1}, 20) == ()  # under SURGE_MIN answers: chance, not a surge


# --- the rolling window ---------------------------------------------------------------------------

def drift(window: int = 4, reference_size: int = 4, **config: Any) -> ModelDrift:
    return ModelDrift("m", DriftConfig(drift_window=window, drift_reference_size=reference_size, **config))


def test_the_window_rolls_over_its_last_answers() -> None:
    model = drift(window=4, reference_size=100, drift_confidence_threshold=0.5)
    for class_id, score in ((1, 0.9), (1, 0.4), (1, 0.9), (1, 0.9)):
        model.add([(class_id, score, 100.0, 0)])
    first = model.snapshot()
    assert (first.window_answers, first.low_confidence_ratio) == (4, 0.25)
    assert first.mean_confidence == pytest.approx(0.775)
    for _ in range(2):
        model.add([(2, 0.2, None, NO_SIZE)])
    rolled = model.snapshot()
    # The two oldest answers (0.9 and 0.4) left; two low ones without pixels or size came in.
    assert rolled.window_answers == 4
    assert rolled.mean_confidence == pytest.approx((0.9 + 0.9 + 0.2 + 0.2) / 4)
    assert rolled.low_confidence_ratio == 0.5
    assert rolled.brightness_mean == 100.0  # only the answers that had pixels count
    assert rolled.short_side_ratios["<224"] == 1.0
    for _ in range(4):
        model.add([(3, 0.6, 50.0, 1)])
    last = model.snapshot()
    assert (last.low_confidence_ratio, last.brightness_mean, last.short_side_ratios["224-511"]) == (0.0, 50.0, 1.0)
    assert last.mean_confidence == pytest.approx(0.6)


def test_the_reference_is_the_first_n_answers_and_psi_waits_for_a_full_window() -> None:
    model = drift(window=30, reference_size=20)
    for class_id in (1, 2) * 10:
        model.add([(class_id, 0.9, None, NO_SIZE)])
    ready = model.snapshot()
    assert ready.reference_ready and ready.reference_answers == 20
    assert ready.psi is None  # 20 of 30 answers in the window: not comparable yet
    assert model.reference is not None and model.reference.classes == {1: 10, 2: 10}
    for class_id in (1, 2) * 5:
        model.add([(class_id, 0.9, None, NO_SIZE)])
    assert model.snapshot().psi == pytest.approx(0.0)
    for _ in range(15):
        model.add([(1, 0.9, None, NO_SIZE)])
    # The window: the last 15 of the 30 alternating answers (7 of class 1, 8 of class 2) and 15 of class 1.
    assert model.snapshot().psi == pytest.approx(psi({1: 10, 2: 10}, {1: 22, 2: 8}))
    for _ in range(30):
        model.add([(3, 0.9, None, NO_SIZE)])
    later = model.snapshot()
    assert model.reference.classes == {1: 10, 2: 10}  # later answers never change the reference
    assert later.psi is not None and later.psi > ALERT_THRESHOLD


def test_answers_between_two_scrapes_beyond_the_window_leave_it_unseen() -> None:
    model = ModelDrift("m", DriftConfig(drift_window=4), a_reference())
    model.add([(3, 0.9, None, NO_SIZE)] * 4)
    model.add([(8, 0.1, None, NO_SIZE)] * 3)  # ten answers since the last look: the last four count
    model.add([(8, 0.1, None, NO_SIZE)] * 2 + [(3, 0.9, None, NO_SIZE)])
    snap = model.snapshot()
    assert snap.window_answers == 4
    assert snap.mean_confidence == pytest.approx((3 * 0.1 + 0.9) / 4)
    assert snap.psi == pytest.approx(psi({3: 60, 8: 40}, {8: 3, 3: 1}, bins=(3, 8)))


def test_every_one_of_the_first_answers_counts_into_the_reference_however_large_the_window() -> None:
    model = drift(window=2, reference_size=25)
    model.add([(c, 0.9, None, NO_SIZE) for c in range(25)])
    assert model.reference is not None and model.reference.classes == {c: 1 for c in range(25)}
    assert model.snapshot().window_answers == 2


def test_a_reference_still_being_collected_reports_its_progress() -> None:
    model = drift(window=2, reference_size=5)
    for _ in range(3):
        model.add([(1, 0.9, None, NO_SIZE)])
    snap = model.snapshot()
    assert (snap.reference_ready, snap.reference_answers, snap.psi, snap.reference_mean_confidence) == (
        False, 3, None, None)


# --- reference files ------------------------------------------------------------------------------

def a_reference(model: str = "m", **changes: Any) -> DriftReference:
    fields: dict[str, Any] = {"model": model, "answers": 100, "classes": {3: 60, 8: 40}, "mean_confidence": 0.8,
                              "confidence_threshold": 0.5, "low_confidence_ratio": 0.1,
                              "short_sides": {"<224": 20, "224-511": 80}}
    fields.update(changes)
    return DriftReference(**fields)


def test_a_saved_reference_loads_and_becomes_the_models_reference(tmp_path: Path) -> None:
    path = tmp_path / "ref.json"
    save_reference(a_reference(), path)
    assert json.loads(path.read_text())["format"] == "batchserve-drift-reference"
    assert load_reference(path) == a_reference()
    config = DriftConfig(drift_window=2, drift_reference=(path,))
    monitor = DriftMonitor(config)
    model = monitor.model("m")
    assert model.reference == a_reference()
    assert monitor.model("other").reference is None  # models without a file count their first answers
    model.add([(3, 0.9, None, 1)])
    model.add([(8, 0.9, None, 1)])
    snap = model.snapshot()
    assert snap.psi == pytest.approx(psi({3: 60, 8: 40}, {3: 1, 8: 1}, bins=(3, 8))) == pytest.approx(
        (0.5 - 0.6) * math.log(0.5 / 0.6) + (0.5 - 0.4) * math.log(0.5 / 0.4))
    assert snap.reference_answers == 100 and snap.reference_mean_confidence == 0.8
    assert snap.size_psi == pytest.approx(psi({"<224": 20, "224-511": 80}, {"224-511": 2}))


@pytest.mark.parametrize(("content", "reason"), [
    (b"{not json", "not a usable drift reference"),
    (b'{"format": "something-else", "model": "m", "answers": 1, "classes": {"1": 1}, "mean_confidence": 1, '
     b'"confidence_threshold": 0.5, "low_confidence_ratio": 0}', "not a drift reference"),
    (b'{"model": "m", "answers": 5, "classes": {"1": 1}, "mean_confidence": 1, '
     b'"confidence_threshold": 0.5, "low_confidence_ratio": 0}', "must add up to its answers"),
    (b'{"model": "m"}', "missing required field"),
])
def test_an_unusable_reference_file_is_refused_with_its_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "ref.json"
    path.write_bytes(content)
    with pytest.raises(ReferenceFileError, match=reason) as caught:
        DriftConfig(drift_reference=(path,))
    assert str(path) in str(caught.value)


def test_reference_files_must_exist_and_name_each_model_once(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFileError, match="cannot read drift reference"):
        DriftConfig(drift_reference=(tmp_path / "missing.json",))
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    save_reference(a_reference(), one)
    save_reference(a_reference(), two)
    with pytest.raises(ValueError, match="both describe model 'm'"):
        DriftConfig(drift_reference=(one, two))


def test_serve_refuses_an_unusable_reference_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--simulate-model", "1+0", "--drift-reference", str(tmp_path / "missing.json")]) == 2
    assert "cannot read drift reference" in capsys.readouterr().err


# --- input statistics -----------------------------------------------------------------------------

def test_short_side_buckets_follow_their_edges() -> None:
    for width, height in [(1, 1), (223, 4000), (224, 224), (5000, 511), (512, 512), (1023, 9000), (1024, 1024),
                          (2047, 2048), (2048, 3000), (10000, 10000)]:
        expected = bisect.bisect_right(SHORT_SIDE_EDGES, min(width, height))
        assert short_side_bucket(width, height) == short_side_bucket(height, width) == expected
    assert SHORT_SIDE_BUCKETS[short_side_bucket(300, 200)] == "<224"
    assert SHORT_SIDE_BUCKETS[short_side_bucket(640, 480)] == "224-511"


@functools.cache
def encoded(color: tuple[int, int, int], size: tuple[int, int] = (40, 40), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("preprocess", [PreprocessConfig(), PreprocessConfig(mean=0.0, std=255.0)])
def test_brightness_undoes_the_normalisation(preprocess: PreprocessConfig) -> None:
    prepared = prepare_image(encoded((30, 90, 180)), preprocess)
    assert mean_brightness(prepared.tensor, preprocess) == pytest.approx(100.0, abs=0.01)
    assert mean_brightness(np.zeros((2, 224, 224), dtype=np.float32), preprocess) is None  # unknown layout


# --- a real app ---------------------------------------------------------------------------------

COLORS = [(25 * i, 100, 200 - 20 * i) for i in range(10)]


@asynccontextmanager
async def simulated_app(tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    config: dict[str, Any] = {"simulate_model": "1+0", "models": (), "events": False,
                              "events_path": tmp_path / "events.sqlite3", "journal_dir": tmp_path / "journal"}
    config.update(settings)
    app = create_app(build_config(config))
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            client.app_state = app.state["app_state"]  # type: ignore[attr-defined]
            yield client


async def classify(client: httpx.AsyncClient, colors: list[tuple[int, int, int]]) -> list[int]:
    """One multipart request of solid-colour images; the simulated model's class depends on the colour."""
    files = [("image", (f"{i}.png", encoded(color), "image/png")) for i, color in enumerate(colors)]
    response = await client.post("/v1/classify?model=simulated", files=files)
    assert response.status_code == 200, response.text
    return [result["predictions"][0]["class_id"] for result in response.json()["results"]]


async def gauges(client: httpx.AsyncClient) -> dict[str, float]:
    """The simulated model's drift gauges by name (the short-side ratios by bucket)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            ours = "drift" in family.name or "confidence" in family.name
            if not ours or sample.labels.get("model") != "simulated":
                continue
            key = sample.name + (f"[{sample.labels['short_side']}]" if "short_side" in sample.labels else "")
            found[key] = sample.value
    return found


async def test_feeding_a_skewed_class_mix_moves_the_psi_gauge_past_the_alert_threshold(tmp_path: Path) -> None:
    async with simulated_app(tmp_path, drift_window=100, drift_reference_size=100) as client:
        classes = [c for _ in range(10) for c in await classify(client, COLORS)]
        assert len(set(classes)) == 10  # ten colours, ten classes: a balanced mix
        balanced = await gauges(client)
        assert balanced["batchserve_drift_reference_answers"] == balanced["batchserve_drift_window_answers"] == 100
        assert balanced["batchserve_drift_psi"] == pytest.approx(0.0)
        assert balanced["batchserve_mean_confidence"] == pytest.approx(math.e ** 10 / (math.e ** 10 + 999))
        assert balanced["batchserve_low_confidence_ratio"] == 0.0
        assert balanced["batchserve_drift_input_brightness"] == pytest.approx(107.5, abs=0.05)
        assert balanced["batchserve_drift_input_short_side_ratio[<224]"] == 1.0

        # A third of the next 100 answers are one class.
        for _ in range(3):
            await classify(client, [COLORS[0]] * 10)
        for _ in range(7):
            await classify(client, COLORS)
        skewed = await gauges(client)
        assert skewed["batchserve_drift_psi"] > ALERT_THRESHOLD
        assert skewed["batchserve_drift_reference_answers"] == 100  # the reference stays what it was

        # Back to the balanced mix: the window rolls and PSI returns to zero.
        for _ in range(10):
            await classify(client, COLORS)
        assert (await gauges(client))["batchserve_drift_psi"] == pytest.approx(0.0)


async def test_cache_hits_and_fallback_answers_count_for_the_model_that_answered(tmp_path: Path) -> None:
    async with simulated_app(tmp_path) as client:
        simulated = client.app_state.serving.registry.find("simulated")  # type: ignore[attr-defined]
    alpha = dataclasses.replace(simulated, name="alpha")  # the model the request asked for
    cached = CacheHit("0" * 64, CachedScores.of(np.zeros(3, dtype=np.float32), 640, 480, "jpeg"))
    hit = Classified(0, None, [Prediction(7, "seven", 0.9)], np.zeros(3), 0.0, 0.0, 0,
                     sent=ImageInput(b"jpeg"), cached=cached)
    answered_by_fallback = Classified(1, None, [Prediction(8, "eight", 0.3)], np.zeros(3), 1.0, 2.0, 1,
                                      sent=ImageInput(b"jpeg"), stand_in=StandIn.of(simulated, "alpha", "queue_full"))
    failed = Failed(2, ImageInput(b"bad"), ErrorInfo(400, "invalid_image", "not an image"), "decode")
    monitor = DriftMonitor(DriftConfig(drift_window=5, drift_reference_size=5))
    monitor.observe(Classification(alpha, [hit, answered_by_fallback, failed]))
    snapshots = {snap.model: snap for snap in monitor.snapshots()}
    assert snapshots["alpha"].window_answers == 1  # the hit: never decoded, but the cache knows its size
    assert snapshots["alpha"].short_side_ratios["224-511"] == 1.0 and snapshots["alpha"].brightness_mean is None
    assert snapshots["simulated"].window_answers == 1  # the fallback's answer is the fallback's
    assert snapshots["simulated"].low_confidence_ratio == 1.0 and snapshots["simulated"].short_side_ratios == {}


async def test_no_drift_gauges_with_drift_off(tmp_path: Path) -> None:
    async with simulated_app(tmp_path, drift=False) as client:
        await classify(client, COLORS[:2])
        assert "batchserve_drift_psi" not in (await client.get("/metrics")).text


async def test_a_reference_saved_from_the_event_store_gives_psi_zero_for_the_same_mix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    events = tmp_path / "events.sqlite3"
    start = datetime.now(UTC) - timedelta(minutes=1)
    async with simulated_app(tmp_path, events=True, events_path=events, events_flush_interval_ms=20) as client:
        for _ in range(10):
            await classify(client, COLORS)
    # Leaving the app flushed its events; the command reads them back from the store.
    end = datetime.now(UTC) + timedelta(minutes=1)
    out = tmp_path / "reference.json"
    args = ["drift", "save-reference", "--from", start.isoformat(), "--to", end.isoformat(), "--model", "simulated",
            "--events-path", str(events), "--out", str(out)]
    # The command runs its own event loop, as from a shell.
    assert await asyncio.to_thread(main, [*args, "--min-answers", "101"]) == 1
    assert "100 answer(s) of model 'simulated'" in capsys.readouterr().err
    assert await asyncio.to_thread(main, args) == 0  # 100 answers: just enough by default
    assert "100 answers of simulated" in capsys.readouterr().out
    reference = load_reference(out)
    assert reference.answers == 100 and sorted(reference.classes.values()) == [10] * 10
    assert reference.short_sides == {"<224": 100}

    async with simulated_app(tmp_path / "second", drift_reference=(out,), drift_window=100) as client:
        first = await gauges(client)
        assert first["batchserve_drift_reference_answers"] == 100  # known before any answer
        for _ in range(10):
            await classify(client, COLORS[::-1])
        same = await gauges(client)
        assert same["batchserve_drift_psi"] == pytest.approx(0.0, abs=1e-9)
        assert same["batchserve_drift_input_size_psi"] == pytest.approx(0.0, abs=1e-9)
        assert same["batchserve_drift_reference_mean_confidence"] == pytest.approx(same["batchserve_mean_confidence"])
        for _ in range(3):
            await classify(client, [COLORS[3]] * 10)
        assert (await gauges(client))["batchserve_drift_psi"] > ALERT_THRESHOLD
