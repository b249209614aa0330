"""The acceptance workload (`python loadtest/workload.py`) against real servers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.loadtest.server_process import ServerProcess, free_port
from batchserve.loadtest.workload import Expectation, WorkloadError, load_manifest

WORKLOAD = Path(__file__).resolve().parents[2] / "loadtest" / "workload.py"


def _workload(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(WORKLOAD), "--url", url, *args],
                          capture_output=True, text=True, timeout=180, check=False)


def _counts(stdout: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^(total requests|completed|failed|correct|wrong): (\d+)$", stdout, re.M)}


@pytest.mark.slow
def test_real_model_gets_every_image_right(real_server: ServerProcess) -> None:
    proc = _workload(real_server.url, "--model", "efficientnet_lite0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _counts(proc.stdout) == {"total requests": 50, "completed": 50, "failed": 0, "correct": 50, "wrong": 0}
    assert re.search(r"^duration: \d+\.\d\d s$", proc.stdout, re.M)


@pytest.mark.slow
def test_random_weights_are_caught(real_server: ServerProcess) -> None:
    proc = _workload(real_server.url, "--model", "tiny", "-n", "9")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    counts = _counts(proc.stdout)
    assert counts["completed"] == 9 and counts["failed"] == 0
    assert counts["wrong"] > 0 and counts["correct"] + counts["wrong"] == 9
    assert "wrong, predicted" in proc.stdout


@pytest.mark.slow
def test_unknown_model_counts_as_failed(real_server: ServerProcess) -> None:
    proc = _workload(real_server.url, "--model", "no_such_model", "-n", "3")
    assert proc.returncode == 1
    assert _counts(proc.stdout)["failed"] == 3
    assert "HTTP 404" in proc.stdout


def test_nothing_listening_counts_as_failed() -> None:
    proc = _workload(f"http://127.0.0.1:{free_port()}", "-n", "4", "--timeout", "10")
    assert proc.returncode == 1
    assert _counts(proc.stdout) == {"total requests": 4, "completed": 0, "failed": 4, "correct": 0, "wrong": 0}


def test_bad_url_is_rejected() -> None:
    proc = _workload("127.0.0.1:8000")
    assert proc.returncode == 2 and "--url must be an http(s) URL" in proc.stderr


def test_manifest_of_the_test_photos(images_dir: Path) -> None:
    images = {i.name: i for i in load_manifest(images_dir)}
    assert set(images) == {"chelsea.jpg", "coffee.jpg", "rocket.jpg"}
    assert images["rocket.jpg"].expected == Expectation(2, frozenset({657, 744}))
    assert images["chelsea.jpg"].content_type == "image/jpeg"


def test_expectations() -> None:
    top2 = Expectation(2, frozenset({657, 744}))
    assert top2.check([1, 744, 657])
    assert not top2.check([1, 2, 744])
    assert Expectation(1, frozenset({967})).check([967])


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ('"a.jpg" = { top1_any_of = [1] }\n', "lists 'a.jpg', which is not a file"),
        ('"x.jpg" = { top3_any_of = [1] }\n', "'x.jpg': needs exactly one of top1_any_of, top2_any_of, top5_any_of"),
        ('"x.jpg" = { top1_any_of = [1], top2_any_of = [2] }\n', "entry 'x.jpg': needs exactly one of"),
        ('"x.jpg" = { top1_any_of = [] }\n', "entry 'x.jpg': Expected `array` of length >= 1 - at `$.top1_any_of`"),
        ('"x.jpg" = { top2_any_of = [1, "cat"] }\n', "'x.jpg': Expected `int`, got `str` - at `$.top2_any_of[1]`"),
        ('"x.jpg" = 5\n', "entry 'x.jpg': Expected `object`, got `int`"),
        ("", "lists no images"),
    ],
)
def test_bad_manifests_are_explained(tmp_path: Path, manifest: str, message: str) -> None:
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "manifest.toml").write_text(manifest)
    with pytest.raises(WorkloadError, match=re.escape(message)) as caught:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.toml") in str(caught.value)


def test_notes_beside_an_expectation_are_allowed(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "manifest.toml").write_text('"x.jpg" = { top5_any_of = [7, 8], note = "a dog" }\n')
    (image,) = load_manifest(tmp_path)
    assert image.expected == Expectation(5, frozenset({7, 8}))
