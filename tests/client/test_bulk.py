"""`batchserve classify` against a real server (the simulated model: decoding is real, inference sleeps)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchserve.cli import main
from batchserve.client.http import request_json
from batchserve.loadtest.server_process import ServerProcess, free_port

pytestmark = pytest.mark.slow

SUMMARY = re.compile(r"^(\d+) ok, (\d+) failed, (\d+) skipped in [\d.]+ s \([\d.]+ img/s\)", re.M)
SAMPLES = ("chelsea.jpg", "coffee.jpg", "rocket.jpg")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess("--simulate-model", "5+0.5", "--no-events", cwd=tmp_path_factory.mktemp("bulk-server")) as s:
        yield s


@pytest.fixture
def photos(tmp_path: Path, images_dir: Path) -> Path:
    """Three sample photos, one in a subfolder, beside a text file and a .jpg that is not one."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for name in SAMPLES[:2]:
        shutil.copy(images_dir / name, folder / name)
    shutil.copy(images_dir / SAMPLES[2], folder / "more" / SAMPLES[2])
    (folder / "notes.txt").write_text("not an image")
    (folder / "more" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is no JPEG")
    return folder


def classify_posts(server: ServerProcess) -> int:
    """POSTs to /v1/classify the server answered, by its own count."""
    text = request_json_text(server.url + "/metrics")
    return int(sum(float(value) for value in re.findall(
        r'^batchserve_http_requests_total\{method="POST",[^}]*route="/v1/classify"[^}]*\} (\S+)$', text, re.M)))


def request_json_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def summary(stderr: str) -> tuple[int, int, int]:
    match = SUMMARY.search(stderr)
    assert match, stderr
    return int(match[1]), int(match[2]), int(match[3])


def jsonl(text: str) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    by_path = {record["path"]: record for record in records}
    assert len(by_path) == len(records), "a path was written twice"
    return by_path


def test_a_folder_is_walked_and_each_image_answered(server: ServerProcess, photos: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(photos.parent)
    status = main(["classify", "photos", "--url", server.url, "--top-k", "3"])
    out, err = capsys.readouterr()
    assert status == 1  # the broken .jpg
    records = jsonl(out)
    assert set(records) == {"photos/chelsea.jpg", "photos/coffee.jpg", "photos/more/rocket.jpg",
                            "photos/more/broken.jpg"}
    for path in ("photos/chelsea.jpg", "photos/coffee.jpg", "photos/more/rocket.jpg"):
        record = records[path]
        assert record["status"] == "ok" and record["model"] == "simulated" and record["model_version"] == 1
        assert len(record["predictions"]) == 3 and record["request_id"]
        assert {"class_id", "label", "score"} <= set(record["predictions"][0])
        assert record["timing_ms"]["total"] > 0 and record["attempts"] == 1
    broken = records["photos/more/broken.jpg"]
    assert broken["status"] == "failed" and broken["error"]["code"] == "invalid_image"
    assert broken["http_status"] == 400 and broken["error"]["message"]
    assert summary(err) == (3, 1, 1)


def test_csv_out_then_resume_sends_only_what_failed(server: ServerProcess, photos: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.csv"
    before = classify_posts(server)
    assert main(["classify", str(photos), "--url", server.url, "--out", str(out), "--top-k", "2",
                 "--concurrency", "2", "--quiet"]) == 1
    assert classify_posts(server) - before == 4
    rows = list(csv.DictReader(out.open(newline="")))
    assert list(rows[0]) == ["path", "status", "label", "score", "class_id", "error_code", "error_message"]
    ok_rows = [row for row in rows if row["status"] == "ok"]
    assert len(ok_rows) == 6  # two predictions for each of three photos
    assert all(0 <= float(row["score"]) <= 1 and row["label"] and int(row["class_id"]) >= 0 for row in ok_rows)
    (failed,) = [row for row in rows if row["status"] == "failed"]
    assert failed["path"].endswith("broken.jpg") and failed["error_code"] == "invalid_image"
    assert "skipped" not in capsys.readouterr().out  # quiet: the summary goes to stderr only

    # The broken file is the only one sent again; the new row is appended under the one header.
    (photos / "more" / "broken.jpg").unlink()
    shutil.copy(photos / "chelsea.jpg", photos / "more" / "broken.jpg")  # now it decodes
    before = classify_posts(server)
    assert main(["classify", str(photos), "--url", server.url, "--out", str(out), "--resume", "--top-k", "2"]) == 0
    assert classify_posts(server) - before == 1
    _, err = capsys.readouterr()
    assert summary(err) == (1, 0, 1) and "3 already done" in err
    lines = out.read_text().splitlines()
    assert lines.count(lines[0]) == 1
    rows = list(csv.DictReader(out.open(newline="")))
    assert {row["path"] for row in rows if row["status"] == "ok"} == {str(p) for p in photos.rglob("*.jpg")}

    # Everything done: nothing is sent at all.
    before = classify_posts(server)
    assert main(["classify", str(photos), "--url", server.url, "--out", str(out), "--resume"]) == 0
    assert classify_posts(server) == before


def test_quoted_glob_to_stdout_through_the_console_script(server: ServerProcess, photos: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "batchserve", "classify", str(photos / "**" / "[cr]o*.jpg"), "--url", server.url,
         "--top-k", "1"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    records = jsonl(proc.stdout)
    assert set(records) == {str(photos / "coffee.jpg"), str(photos / "more" / "rocket.jpg")}
    assert all(len(r["predictions"]) == 1 for r in records.values())
    assert summary(proc.stderr) == (2, 0, 0)


def test_an_unknown_model_stops_before_any_image(server: ServerProcess, photos: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = classify_posts(server)
    assert main(["classify", str(photos), "--url", server.url, "--model", "no_such_model"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no model 'no_such_model'" in err
    assert classify_posts(server) == before


def test_an_unreachable_server_is_exit_1_with_a_clear_message(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["classify", str(photos), "--url", url]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: no answer from {url} after 1 try: cannot connect" in err


@pytest.fixture
def crowded_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """Admits one classification at a time: the rest are refused with 503 overloaded + Retry-After."""
    with ServerProcess("--simulate-model", "300+0", "--no-events", "--max-concurrent-requests", "1",
                       cwd=tmp_path) as s:
        yield s


def test_refusals_of_a_crowded_server_are_retried_until_all_succeed(
        crowded_server: ServerProcess, images_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(images_dir / name) for name in SAMPLES]
    assert main(["classify", *files, "--url", crowded_server.url, "--concurrency", "3"]) == 0
    out, err = capsys.readouterr()
    records = jsonl(out)
    assert set(records) == set(files) and all(r["status"] == "ok" for r in records.values())
    assert max(r["attempts"] for r in records.values()) > 1
    metrics = request_json_text(crowded_server.url + "/metrics")
    refused = re.search(r'^batchserve_http_requests_total\{method="POST",[^}]*status="503"\} (\S+)$', metrics, re.M)
    assert refused and float(refused[1]) >= 1
    assert re.search(r", \d+ retries$", err, re.M), err
    assert request_json(crowded_server.url + "/healthz")["status"] == "ok"
