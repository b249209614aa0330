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
from batchserve.loadtest.bench_models import METRICS, ModelsBenchSettings, parse_models, run_from_args
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
    assert report["settings"]["models"] == ["tiny", "tiny_copy"] and report["settings"]["repeats"] == 1
    for name in ("tiny", "tiny_copy"):
        entry = report["models"][name]
        assert entry["errors"] == 0 and "CPUExecutionProvider" in entry["providers"]
        for metric in METRICS:
            assert len(entry[metric]["samples"]) == 1 and entry[metric]["median"] > 0
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
