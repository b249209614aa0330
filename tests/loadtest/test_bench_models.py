"""`batchserve bench --model a,b`: runs on tiny durations and prints a well-formed side-by-side table."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.loadtest.bench import add_arguments
from batchserve.loadtest.bench_models import (
    METRICS,
    NETWORK_BATCH,
    SERVER_CONCURRENCY,
    ModelsBenchSettings,
    parse_models,
    run_from_args,
)
from batchserve.loadtest.samples import SAMPLE_PHOTO
from batchserve.model_repo.build import build_model
from batchserve.model_repo.repository import DEFAULT_REPOSITORY


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny` and a second model built by the same builder: two cheap graphs to compare."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("tiny", "tiny_copy"):
        (repo / name).mkdir()
        config = (DEFAULT_REPOSITORY / "tiny" / "config.toml").read_text(encoding="utf-8")
        (repo / name / "config.toml").write_text(config.replace('name = "tiny"', f'name = "{name}"'))
        shutil.copy(DEFAULT_REPOSITORY / "tiny" / "labels.txt", repo / name / "labels.txt")
        build_model(name, repo, progress=lambda _: None)
    return repo


@pytest.mark.slow
def test_models_side_by_side(two_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "models.json"
    command = [
        sys.executable,
        "-m",
        "batchserve",
        "bench",
        "--model",
        "tiny,tiny_copy",
        "--model-repo",
        str(two_models),
        "--duration",
        "0.2",
        "--repeats",
        "1",
        "--json",
        str(out),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"date", "machine", "settings", "models"} and report["date"].startswith("20")
    assert set(report["machine"]) == {"cpus", "platform", "processor", "python", "onnxruntime", "numpy", "pillow"}
    assert report["settings"] == {
        "models": ["tiny", "tiny_copy"], "duration": 0.2, "repeats": 1, "model_repo": str(two_models),
        "image": str(SAMPLE_PHOTO), "image_bytes": SAMPLE_PHOTO.stat().st_size,
        "client": report["settings"]["client"], "network_batch": NETWORK_BATCH,
        "server_concurrency": SERVER_CONCURRENCY,
    }
    assert report["settings"]["client"] in ("wrk", "aiohttp")
    assert set(report["models"]) == {"tiny", "tiny_copy"}
    for name in ("tiny", "tiny_copy"):
        entry = report["models"][name]
        assert set(entry) == {"errors", "version", "providers", "in_process_providers", "max_batch_size", *METRICS}
        assert entry["errors"] == 0 and entry["version"] == 1 and "CPUExecutionProvider" in entry["providers"]
        assert entry["in_process_providers"] == ["CPUExecutionProvider"] and entry["max_batch_size"] >= 1
        for metric in METRICS:
            figure = entry[metric]
            assert set(figure) == {"median", "samples", "ratio_to_first", "ratio_samples"}
            assert len(figure["samples"]) == 1 and figure["median"] == figure["samples"][0] > 0
            first = report["models"]["tiny"][metric]["median"]
            assert figure["ratio_samples"] == [pytest.approx(figure["median"] / first)]
            assert figure["ratio_to_first"] == figure["ratio_samples"][0]
    assert all(report["models"]["tiny"][m]["ratio_to_first"] == 1.0 for m in METRICS)
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert "ORT b32 img/s" in lines[header] and "server c1 p50 ms" in lines[header]
    assert lines[header + 1].split()[0] == "tiny" and lines[header + 2].split()[0] == "tiny_copy"
    assert len(lines[header + 2].split()) == 1 + 2 * len(METRICS) + 1  # value and (ratio) per figure, errors
    assert "x)" in lines[header + 2] and "ratios are to tiny" in proc.stdout


@pytest.mark.parametrize("models", ["tiny,tiny", "tiny,"])
def test_model_list_must_name_two_models(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_from_args(parser.parse_args(["--model", models])) == 2
    assert "two or more different" in capsys.readouterr().err


def test_settings_and_parsing() -> None:
    assert parse_models(" a, b ,,c ") == ("a", "b", "c")
    with pytest.raises(ValueError, match="positive"):
        ModelsBenchSettings(models=("a", "b"), duration=0)
    with pytest.raises(ValueError, match="does not exist"):
        ModelsBenchSettings(models=("a", "b"), image=Path("/nonexistent.jpg"))
