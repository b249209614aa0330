"""deploy/prometheus/alerts.yml: promtool accepts it, and every expression queries metrics a
running server really exports (a renamed metric would otherwise silence its alert for good)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from batchserve.server.app import create_app
from batchserve.server.options import build_config

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
SUFFIXES = ("_bucket", "_sum", "_count", "_total")
# PromQL words that look like identifiers but name no metric.
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                      "group_right", "inf", "nan", "atan2"})


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Identifiers used as metric names: not functions (followed by '('), keywords, label names
    (inside {...} or a by/without/on/ignoring list) or parts of numbers and durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", "{}", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_are_told_from_functions_labels_and_numbers() -> None:
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{route=~"/v1/x|y z"}[5m]))) > 1e-9 '
            'and on(model) b_ratio offset 5m unless c{le="1"} - ignoring (x) d')
    assert metric_names(expr) == {"a_seconds_bucket", "b_ratio", "c", "d"}


def test_the_rule_file_holds_the_alerts_operators_rely_on() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) >= {"BatchserveClassMixDrift", "BatchserveHighErrorRate", "BatchserveP99LatencyHigh",
                            "BatchserveQueueFull", "BatchserveEventsSpilling", "BatchserveEventsLost"}
    drift = by_name["BatchserveClassMixDrift"]
    assert re.search(r"batchserve_drift_psi\)?\s*>\s*0\.2\b", drift["expr"])
    for rule in by_name.values():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_promtool_checks_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is missing (Debian's prometheus package; scripts/ensure-system-packages.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


async def scrape_of_a_busy_server(tmp_path: Path) -> str:
    """/metrics of a real app (simulated model, SQLite events) after enough answers that every
    drift gauge has a value."""
    config = build_config({"simulate_model": "1+0", "models": (), "events_path": tmp_path / "events.sqlite3",
                           "journal_dir": tmp_path / "journal", "drift_window": 10, "drift_reference_size": 10})
    app = create_app(config)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            files = [("image", (f"{i}.png", png((20 * i, 90, 200)), "image/png")) for i in range(10)]
            assert (await client.post("/v1/classify?model=simulated", files=files)).status_code == 200
            return (await client.get("/metrics")).text


async def test_every_expression_names_a_metric_the_server_exports(tmp_path: Path) -> None:
    scrape = await scrape_of_a_busy_server(tmp_path)
    types: dict[str, str] = {}
    samples: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        types[family.name] = family.type
        samples.update(sample.name for sample in family.samples)
    assert "batchserve_drift_psi" in samples  # the drift gauges have values, not just a TYPE line

    def exported(name: str) -> bool:
        return name in samples or name in types or any(
            name.endswith(suffix) and types.get(name.removesuffix(suffix)) in ("counter", "histogram")
            for suffix in SUFFIXES)

    missing = {rule["alert"]: sorted(n for n in metric_names(rule["expr"]) if not exported(n)) for rule in rules()}
    assert not {alert: names for alert, names in missing.items() if names}
    for rule in rules():
        assert metric_names(rule["expr"]), f"{rule['alert']} queries no metric: {rule['expr']}"
