"""The bulk client's parts that need no server: inputs, arguments, output files, retries, progress, job paging."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from batchserve.cli import main
from batchserve.client.bulk_jobs import (
    IMAGES,
    PREFIX,
    UPLOAD,
    Submission,
    iter_results,
    plan_submissions,
    result_of_item,
    sent_names,
)
from batchserve.client.inputs import BadInput, S3Object, S3Prefix, collect_inputs, content_type_of
from batchserve.client.output import BadOutput, Result, open_output
from batchserve.client.progress import Progress, format_duration
from batchserve.client.retry import RetryPolicy, parse_retry_after

# ---- inputs ---------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("a.jpg", "b.PNG", "notes.txt", "sub/c.webp", "sub/deeper/d.jpeg", "sub/e.gif", "sub/f.bmp",
                 "sub/readme"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folders_are_walked_and_files_kept_by_extension_once_each(tree: Path) -> None:
    inputs = collect_inputs([".", "a.jpg", "./sub/../a.jpg", "notes.txt"], allow_s3=False)
    assert inputs.files == ["a.jpg", "b.PNG", "sub/c.webp", "sub/e.gif", "sub/f.bmp", "sub/deeper/d.jpeg"]
    assert inputs.skipped == ["notes.txt", "sub/readme"]


def test_globs_are_expanded_here_recursively(tree: Path) -> None:
    (tree / "shot[1].jpg").write_bytes(b"x")
    (tree / "shot1.jpg").write_bytes(b"x")
    inputs = collect_inputs(["**/*.jp*g", "nothing*.png"], allow_s3=False)
    assert inputs.files == ["a.jpg", "shot1.jpg", "shot[1].jpg", "sub/deeper/d.jpeg"]
    assert inputs.empty_globs == ["nothing*.png"]
    # A name that exists is that file, even when it reads as a pattern.
    assert collect_inputs(["shot[1].jpg"], allow_s3=False).files == ["shot[1].jpg"]


def test_missing_paths_and_s3_without_jobs_are_refused(tree: Path) -> None:
    with pytest.raises(BadInput, match="missing.jpg: no such file"):
        collect_inputs(["missing.jpg"], allow_s3=False)
    with pytest.raises(BadInput, match="add --jobs"):
        collect_inputs(["s3://bucket/a.jpg"], allow_s3=False)
    with pytest.raises(BadInput, match="names a bucket"):
        collect_inputs(["s3:///key"], allow_s3=True)


def test_s3_keys_and_prefixes_with_jobs() -> None:
    inputs = collect_inputs(["s3://b/k/x.jpg", "s3://b/k/", "s3://whole"], allow_s3=True)
    assert inputs.s3_objects == [S3Object("s3://b/k/x.jpg")]
    assert inputs.s3_prefixes == [S3Prefix("s3://b/k/"), S3Prefix("s3://whole/")]
    assert inputs.count == 1 and not inputs.empty


def test_content_type_comes_from_the_extension() -> None:
    assert content_type_of("x/y.JPG") == "image/jpeg" and content_type_of("y.webp") == "image/webp"


# ---- arguments: exit 2 before any request ------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["only-text"], "nothing to classify (1 file skipped: not an image by its extension)"),
    (["missing.jpg"], "missing.jpg: no such file or folder"),
    (["a.jpg", "--out", "results.txt"], "unknown extension '.txt'; use .jsonl or .csv"),
    (["a.jpg", "--resume"], "--resume reads the results of an earlier run from --out"),
    (["s3://bucket/prefix/"], "s3://bucket/prefix/: s3:// inputs are classified by the server's workers; add --jobs"),
    (["a.jpg", "--url", "127.0.0.1:8000"], "expected http://HOST[:PORT]"),
    (["a.jpg", "--url", "ftp://host"], "expected http://HOST[:PORT]"),
    (["a.jpg", "--url", "http://host:99999"], "the port is not a number"),
])
def test_bad_arguments_are_exit_2_with_a_message(args: list[str], message: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "notes.txt").write_text("x")
    url = [] if "--url" in args else ["--url", "http://127.0.0.1:9"]
    assert main(["classify", *args, *url]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and "Traceback" not in err


@pytest.mark.parametrize("flag", [["--concurrency", "0"], ["--top-k", "0"], ["--max-retries", "-1"],
                                  ["--timeout", "x"]])
def test_out_of_range_numbers_are_exit_2(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "a.jpg", "--url", "http://127.0.0.1:9", *flag])
    assert exit_info.value.code == 2 and flag[0] in capsys.readouterr().err


# ---- output files ------------------------------------------------------------------------------------


OK = Result("a.jpg", ok=True, request_id="r1", model="m", model_version=2,
            predictions=[{"class_id": 3, "label": "cat, tabby", "score": 0.75}, {"class_id": 4, "label": "dog",
                                                                                 "score": 0.25}],
            timing_ms={"total": 4.0}, extra={"attempts": 1})
FAILED = Result("b.jpg", ok=False, request_id="r2", error_code="invalid_image", error_message='bad "header"')


def test_jsonl_records_read_back_and_resume_skips_only_successes(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    writer, done = open_output(str(out), resume=True)  # nothing yet: a fresh file
    writer.write(OK)
    writer.write(FAILED)
    writer.close()
    ok, failed = (json.loads(line) for line in out.read_text().splitlines())
    assert ok == {"path": "a.jpg", "status": "ok", "request_id": "r1", "model": "m", "model_version": 2,
                  "predictions": OK.predictions, "timing_ms": {"total": 4.0}, "attempts": 1}
    assert failed["error"] == {"code": "invalid_image", "message": 'bad "header"'} and "predictions" not in failed
    assert done == set()

    with out.open("a") as file:  # a run killed in the middle of a record
        file.write('{"path": "c.jpg", "status": "o')
    writer, done = open_output(str(out), resume=True)
    writer.write(Result("c.jpg", ok=True, predictions=[]))
    writer.close()
    assert done == {"a.jpg"}
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == ["a.jpg", "b.jpg", "c.jpg"]


def test_csv_rows_per_prediction_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    writer, _ = open_output(str(out), resume=False)
    writer.write(OK)
    writer.write(FAILED)
    writer.close()
    rows = list(csv.reader(out.open(newline="")))
    assert rows == [["path", "status", "label", "score", "class_id", "error_code", "error_message"],
                    ["a.jpg", "ok", "cat, tabby", "0.75", "3", "", ""],
                    ["a.jpg", "ok", "dog", "0.25", "4", "", ""],
                    ["b.jpg", "failed", "", "", "", "invalid_image", 'bad "header"']]
    writer, done = open_output(str(out), resume=True)
    writer.close()
    assert done == {"a.jpg"} and out.read_text().count("path,status") == 1

    writer, done = open_output(str(out), resume=False)  # without --resume the file starts over
    writer.close()
    assert out.read_text() == "path,status,label,score,class_id,error_code,error_message\n"


@pytest.mark.parametrize(("name", "text"), [("r.jsonl", "hello\n"), ("r.jsonl", '{"x": 1}\n'),
                                            ("r.csv", "a,b\n1,2\n")])
def test_resume_refuses_a_file_that_holds_no_results(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(BadOutput, match="--resume"):
        open_output(str(tmp_path / name), resume=True)
    assert (tmp_path / name).read_text() == text


# ---- retries -----------------------------------------------------------------------------------------


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_backoff_honours_retry_after_and_otherwise_grows_with_jitter() -> None:
    policy = RetryPolicy(max_retries=3, base_s=0.5, cap_s=4.0, max_retry_after_s=60, rng=random.Random(7))
    assert all(2.0 <= policy.delay(1, 2.0) <= 2.2 for _ in range(100))
    assert all(60 <= policy.delay(1, 3600.0) <= 66 for _ in range(100))
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        waits = [policy.delay(attempt, None) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits) and max(waits) > ceiling * 0.8 and min(waits) < ceiling * 0.2
    assert [policy.should_retry(a) for a in (1, 3, 4)] == [True, True, False]


# ---- progress ----------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_are_periodic_with_rate_and_eta() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, 100, tty=False, interval_s=5, clock=clock)
    clock.now += 1
    for _ in range(9):
        progress.add(True)
    assert stream.getvalue() == ""  # a short run prints its summary alone
    clock.now += 9
    progress.add(False)
    assert stream.getvalue() == "10/100  1.0 img/s  ETA 1:30  1 failed\n"
    clock.now += 1
    progress.add(True)
    assert stream.getvalue().count("\n") == 1  # not again within the interval
    assert progress.finish(2, ", 3 retries") == "10 ok, 1 failed, 2 skipped in 11.0 s (1.0 img/s), 3 retries"


def test_a_terminal_gets_a_bar_redrawn_in_place_and_quiet_gets_the_summary_only() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, 4, tty=True, clock=clock)
    clock.now += 2
    progress.add(True)
    assert stream.getvalue() == "\r\x1b[2K[######..................] 1/4  0.5 img/s  ETA 0:06  0 failed"
    progress.finish(0)
    assert stream.getvalue().endswith("\r\x1b[2K1 ok, 0 failed, 0 skipped in 2.0 s (0.5 img/s)\n")

    quiet = io.StringIO()
    progress = Progress(quiet, 4, tty=True, quiet=True, clock=clock)
    clock.now += 10
    progress.add(False)
    progress.finish(1)
    assert quiet.getvalue() == "0 ok, 1 failed, 1 skipped in 10.0 s (0.1 img/s)\n"
    assert format_duration(3725) == "1:02:05"


# ---- jobs: what is submitted, how results are paged and read -------------------------------------------


def test_uploads_are_chunked_by_count_and_size_then_s3_objects_then_each_prefix() -> None:
    sizes = {"a": 10, "b": 10, "c": 10, "d": 50, "e": 1, "f": 1}
    plan = plan_submissions(list(sizes), [S3Object("s3://b/x.jpg"), S3Object("s3://b/y.jpg")],
                            [S3Prefix("s3://b/p/"), S3Prefix("s3://c/")], size_of=sizes.__getitem__,
                            max_files=2, max_bytes=40)
    assert plan == [Submission(UPLOAD, ("a", "b")), Submission(UPLOAD, ("c",)), Submission(UPLOAD, ("d",)),
                    Submission(UPLOAD, ("e", "f")), Submission(IMAGES, ("s3://b/x.jpg", "s3://b/y.jpg")),
                    Submission(PREFIX, ("s3://b/p/",)), Submission(PREFIX, ("s3://c/",))]
    assert plan_submissions([], [], []) == []


class Pages:
    """A job's results as the server pages them; `ignore_limit` plays a server that returns them all."""

    def __init__(self, results: list[int], ignore_limit: bool = False) -> None:
        self.results, self.ignore_limit = results, ignore_limit
        self.asked: list[tuple[int, int]] = []

    async def __call__(self, offset: int, limit: int) -> list[Any]:
        self.asked.append((offset, limit))
        return self.results[offset:] if self.ignore_limit else self.results[offset:offset + limit]


async def collect(pages: Pages, total: int, limit: int) -> list[Any]:
    return [item async for item in iter_results(pages, total, limit)]


@pytest.mark.parametrize(("count", "total", "asked"), [
    (7, 7, [(0, 3), (3, 3), (6, 3)]),
    (6, 6, [(0, 3), (3, 3)]),  # a full last page: the total says it was the last
    (4, 9, [(0, 3), (3, 3)]),  # fewer results than images: a short page ends it
    (0, 5, [(0, 3)]),
    (5, 0, []),
])
def test_results_are_read_page_by_page(count: int, total: int, asked: list[tuple[int, int]]) -> None:
    pages = Pages(list(range(count)))
    assert asyncio.run(collect(pages, total, 3)) == list(range(min(count, total)))
    assert pages.asked == asked


def test_a_server_ignoring_the_limit_cannot_loop_forever() -> None:
    pages = Pages(list(range(6)), ignore_limit=True)
    assert asyncio.run(collect(pages, 6, 3)) == list(range(6)) and pages.asked == [(0, 3)]


def test_job_results_become_rows_named_by_file_or_s3_key() -> None:
    uploaded = result_of_item({"image_id": "i1", "request_id": "r", "image_file_name": "photos/a.jpg",
                               "prediction_value": "cat", "predictions": [{"class_id": 1, "label": "cat",
                                                                           "score": 0.9}],
                               "model": "m", "model_version": 1, "job_id": "j", "timing_ms": {"total": 5}},
                              UPLOAD, "j")
    assert uploaded.ok and uploaded.path == "photos/a.jpg" and uploaded.model_version == 1
    assert uploaded.record()["job_id"] == "j" and uploaded.record()["image_id"] == "i1"
    from_s3 = result_of_item({"image_id": "i2", "image_file_name": "a.jpg", "image_bucket": "b",
                              "image_key": "p/a.jpg", "error": {"code": "dead_lettered", "message": "gave up"}},
                             PREFIX, "j")
    assert not from_s3.ok and from_s3.path == "s3://b/p/a.jpg" and from_s3.error_code == "dead_lettered"
    odd = result_of_item({"image_id": "i3"}, IMAGES, "j")
    assert not odd.ok and odd.path == "i3" and odd.error_code == "invalid_answer"
    assert result_of_item("nonsense", UPLOAD, "j").error_code == "invalid_answer"


def test_upload_names_map_back_to_the_paths_sent() -> None:
    names = sent_names(("photos/a.jpg", "photos/b.jpg", "more/b.jpg"))
    assert result_of_item({"image_file_name": "a.jpg", "predictions": []}, UPLOAD, "j", names).path == "photos/a.jpg"
    assert result_of_item({"image_file_name": "more/b.jpg", "predictions": []}, UPLOAD, "j", names).path == "more/b.jpg"
    # Two paths end in b.jpg: a bare b.jpg stays as the server named it.
    assert result_of_item({"image_file_name": "b.jpg", "predictions": []}, UPLOAD, "j", names).path == "b.jpg"
