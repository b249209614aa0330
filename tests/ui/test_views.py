"""The values the pages show, computed without rendering any HTML."""

from __future__ import annotations

import hashlib

import pytest

from batchserve.server.app import build_state
from batchserve.server.options import build_config
from batchserve.server.ui.templating import STATIC_DIR, StaticAssetMissing, static_url
from batchserve.server.ui.views import format_ms, format_uptime, model_card, service_status


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (-5, "0 s"),          # a clock step backwards must not show a negative age
        (45.9, "45 s"),
        (60, "1 min"),
        (192, "3 min 12 s"),
        (3600, "1 h"),
        (5 * 3600 + 2 * 60 + 59, "5 h 2 min"),
        (3 * 86_400 + 4 * 3600 + 5, "3 d 4 h"),
        (86_400 + 30, "1 d"),
    ],
)
def test_format_uptime_shows_two_most_significant_units(seconds: float, text: str) -> None:
    assert format_uptime(seconds) == text


@pytest.mark.parametrize(("value", "text"), [(5.0, "5 ms"), (0.25, "0.25 ms"), (2.5, "2.5 ms"), (0.004, "0 ms")])
def test_format_ms_drops_trailing_zeros(value: float, text: str) -> None:
    assert format_ms(value) == text


def summary(**batching: object) -> dict:
    return {
        "name": "efficientnet_lite0",
        "version": 2,
        "description": "EfficientNet-Lite0",
        "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "classes": 1000,
        "batching": {
            "max_batch_size": 32, "max_queue_delay_ms": 2.0, "preferred_batch_sizes": [8, 16],
            "max_queue_size": 512, "max_inflight_batches": 2, **batching,
        },
        "stats": {"requests_total": 10, "batches_total": 4, "mean_batch_size": 2.5},
    }


def test_model_card_formats_batching_settings() -> None:
    card = model_card(summary(), default_name="efficientnet_lite0")
    assert card.providers == "CUDAExecutionProvider, CPUExecutionProvider"
    assert card.preferred_batch_sizes == "8, 16"
    assert card.max_queue_delay_ms == "2 ms"
    assert card.mean_batch_size == "2.50"
    assert card.is_default


def test_model_card_without_batches_or_preferences() -> None:
    data = summary(preferred_batch_sizes=[])
    data["stats"] = {"requests_total": 0, "batches_total": 0, "mean_batch_size": 0.0}
    card = model_card(data, default_name="other")
    assert card.preferred_batch_sizes == "any"
    assert card.mean_batch_size == "–"
    assert not card.is_default


def test_service_status_follows_the_lifecycle() -> None:
    state = build_state(build_config({"events": False}))
    try:
        started = state.lifecycle.started_at
        status = service_status(state, "9.9.9", now=started + 125)
        assert (status.ready, status.state, status.uptime, status.version) == (
            False,
            "loading models",
            "2 min 5 s",
            "9.9.9",
        )
        assert status.started_at_iso.endswith("Z")
        state.lifecycle.draining = True
        assert service_status(state, "9.9.9").state == "draining"
    finally:
        state.serving.classifier.decode_pool.shutdown(wait=False)


def test_static_url_carries_a_content_hash() -> None:
    css = STATIC_DIR / "css" / "site.css"
    expected = hashlib.sha256(css.read_bytes()).hexdigest()[:12]
    assert static_url("css/site.css") == f"/static/css/site.css?v={expected}"


@pytest.mark.parametrize("name", ["css/missing.css", "../pages.py", "/etc/passwd", "css"])
def test_static_url_refuses_files_outside_or_missing(name: str) -> None:
    with pytest.raises(StaticAssetMissing):
        static_url(name)
