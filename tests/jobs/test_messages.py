"""Request and response messages: strict parsing, safe keys, deterministic ids."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from batchserve.jobs.errors import MalformedMessage
from batchserve.jobs.messages import (
    ErrorBody,
    Prediction,
    Result,
    Timing,
    decode_result,
    encode,
    event_id,
    parse_request,
    result_key,
)

VALID = {"image_id": "img1", "request_id": "req-1", "image_bucket": "in-bucket", "image_key": "a/b.jpg"}


def body(**changes: object) -> str:
    fields = {**VALID, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...})


def test_a_minimal_request_gets_the_documented_defaults() -> None:
    request = parse_request(body())
    assert (request.model, request.version, request.top_k, request.job_id, request.reply_to) == (None, None, 5, None,
                                                                                                 None)
    assert request.user == "anonymous" and request.result_key == "sync/img1.json"


def test_a_full_request_keeps_every_field_and_reads_its_time_as_utc() -> None:
    request = parse_request(body(model="tiny", version=2, top_k=3, job_id="job-7", reply_to="x-reply-1",
                                 received_at="2026-05-01T12:00:00", user="k1", client_ip="203.0.113.9",
                                 user_agent="curl/8", image_file_name="b.jpg", future_field=[1, 2]))
    assert request.received_at == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert request.result_key == "job-7/img1.json"
    assert (request.model, request.version, request.top_k, request.user) == ("tiny", 2, 3, "k1")


@pytest.mark.parametrize(("raw", "problem"), [
    ("not json", "not a JSON object"),
    ("[1, 2]", "Expected `object`"),
    (body(image_key=...), "image_key"),
    (body(request_id=...), "request_id"),
    (body(top_k="5"), "top_k"),  # no coercion from strings
    (body(top_k=0), "top_k"),
    (body(version=0), "version"),
    (body(image_id="../other-job/x"), "image_id"),
    (body(image_id="a/b"), "image_id"),
    (body(image_id="job"), "manifest"),
    (body(job_id="sync"), "synchronous"),
    (body(received_at="yesterday"), "received_at"),
])
def test_a_malformed_request_is_a_typed_error_naming_the_problem(raw: str, problem: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_request(raw)
    assert problem in caught.value.message
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")


def test_a_malformed_request_keeps_the_fields_that_can_still_direct_its_answer() -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_request(body(image_key=..., reply_to="x-reply-1", job_id="j1", model="tiny"))
    assert caught.value.salvage == {"image_id": "img1", "request_id": "req-1", "reply_to": "x-reply-1",
                                    "job_id": "j1", "model": "tiny"}


def test_unsafe_ids_are_not_salvaged_into_a_result_key() -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_request(body(image_id="../../x", job_id="sync", top_k="many"))
    assert "image_id" not in caught.value.salvage and "job_id" not in caught.value.salvage


def test_keys_and_event_ids_derive_from_the_request_alone() -> None:
    assert result_key(None, "abc") == "sync/abc.json" and result_key("j", "abc") == "j/abc.json"
    assert event_id("abc") == event_id("abc") != event_id("abd")
    assert uuid.UUID(event_id("abc")).version == 5


def test_a_result_holds_predictions_or_an_error_never_both_keys() -> None:
    ok = Result(image_id="i", request_id="r", image_file_name="f.jpg", prediction_value="tabby",
                predictions=[Prediction(281, "tabby", 0.9)], model="m", model_version=1, job_id=None,
                timing_ms=Timing(1.0, 2.0, 3.0), batch_size=4)
    failed = Result(image_id="i", request_id="r", image_file_name=None, prediction_value=None,
                    error=ErrorBody("invalid_image", "not an image"), model=None, model_version=None, job_id="j",
                    timing_ms=Timing(0.0, 0.0, 1.0))
    ok_json, failed_json = json.loads(encode(ok)), json.loads(encode(failed))
    assert "error" not in ok_json and ok_json["predictions"][0] == {"class_id": 281, "label": "tabby", "score": 0.9}
    assert "predictions" not in failed_json and failed_json["error"]["code"] == "invalid_image"
    for shape in (ok_json, failed_json):
        assert {"image_id", "request_id", "image_file_name", "prediction_value", "model", "model_version", "job_id",
                "timing_ms"} <= set(shape)
    assert decode_result(encode(failed)).failed and not decode_result(encode(ok)).failed
    with pytest.raises(msgspec.ValidationError):
        decode_result(b'{"image_id": 5}')
