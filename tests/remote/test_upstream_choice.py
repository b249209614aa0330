"""Which upstream takes a request, and when none can: the circuit breaker and the pool, on a fake clock."""

from __future__ import annotations

import pytest

from batchserve.server.config import BackendConfig
from batchserve.server.options import build_config
from batchserve.server.remote.breaker import CircuitBreaker
from batchserve.server.remote.listing import ListingError, ModelEntry, decode_models
from batchserve.server.remote.upstreams import Upstream, UpstreamPool
from batchserve.server.remote.wire import Answered, AnswerError, decode_answer, image_answers, multipart_body
from batchserve.serving.classifier import ImageInput
from batchserve.serving.errors import ErrorInfo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_a_run_of_failures_and_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, open_s=1.0, max_open_s=4.0, clock=clock)
    breaker.failed()
    breaker.succeeded()  # a success in between: the run starts over
    breaker.failed()
    breaker.failed()
    assert breaker.admits()
    breaker.failed()
    assert breaker.state == "open" and not breaker.admits()
    clock.now += 1.0
    assert breaker.state == "half_open" and breaker.admits()
    breaker.sending()  # the probe
    assert not breaker.admits()  # the others wait for its outcome
    breaker.failed()
    assert breaker.state == "open" and breaker.seconds_until_probe() == pytest.approx(2.0)  # twice as long
    clock.now += 2.0
    breaker.sending()
    breaker.undecided()  # the probe's deadline passed: the next request probes instead
    assert breaker.admits()
    breaker.sending()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.failures == 0


def _entry(name: str = "m", version: int = 1) -> ModelEntry:
    return decode_models(
        b'{"models": [{"name": "%s", "version": %d, "classes": 3, "batching": {"max_batch_size": 8, '
        b'"max_queue_delay_ms": 0, "preferred_batch_sizes": [], "max_queue_size": 64, "max_inflight_batches": 1, '
        b'"default_timeout_ms": 0, "max_timeout_ms": 1000}}]}' % (name.encode(), version)).models[0]


def _pool(count: int, clock: Clock) -> UpstreamPool:
    upstreams = [Upstream(f"http://u{i}", CircuitBreaker(threshold=1, clock=clock), in_rotation=True,
                          problem=None, models={("m", 1): _entry()}) for i in range(count)]
    return UpstreamPool(upstreams, clock=clock)


def test_the_least_loaded_upstream_takes_the_request_and_ties_take_turns() -> None:
    clock = Clock()
    pool = _pool(3, clock)
    a, b, c = pool.upstreams
    a.outstanding, b.outstanding, c.outstanding = 2, 0, 1
    assert pool.choose("m", 1, refused=set(), tried=set()) is b
    b.outstanding = 2
    assert pool.choose("m", 1, refused=set(), tried=set()) is c
    a.outstanding = b.outstanding = c.outstanding = 0
    picks = {pool.choose("m", 1, refused=set(), tried=set()).url for _ in range(3)}  # type: ignore[union-attr]
    assert picks == {"http://u0", "http://u1", "http://u2"}


def test_retries_avoid_refusers_prefer_fresh_upstreams_and_skip_paused_ones() -> None:
    clock = Clock()
    pool = _pool(3, clock)
    a, b, c = pool.upstreams
    assert pool.choose("m", 1, refused={a, b}, tried={a, b}) is c
    assert pool.choose("m", 1, refused={a, b, c}, tried=set()) is None
    a.outstanding = 5
    assert pool.choose("m", 1, refused=set(), tried={b, c}) is a  # untried first, however loaded
    b.paused_until = c.paused_until = clock.now + 1
    assert pool.choose("m", 1, refused=set(), tried=set()) is a  # Retry-After honoured while a choice is left
    a.paused_until = clock.now + 1
    assert pool.choose("m", 1, refused=set(), tried=set()) in (b, c)  # all paused: paused is no veto


def test_no_upstream_means_503_saying_why() -> None:
    clock = Clock()
    pool = _pool(3, clock)
    a, b, c = pool.upstreams
    a.in_rotation, a.problem = False, "/readyz answered 503 (loading)"
    b.breaker.failed()  # threshold 1: open
    c.models = {}
    assert pool.choose("m", 1, refused=set(), tried=set()) is None
    error = pool.unavailable("m", 1)
    assert (error.status, error.code) == (503, "upstream_unavailable") and int(error.headers["Retry-After"]) >= 1
    assert "http://u0: /readyz answered 503" in error.message and "http://u1: circuit open" in error.message
    assert "http://u2 does not serve m v1" in error.message
    assert pool.ready  # u2 is up: it only lacks the model


def test_answers_decode_per_image_and_odd_ones_are_refused() -> None:
    result = b'{"predictions": [{"class_id": 3, "label": "x", "score": 0.5}], "timing_ms": {"queue": 1, ' \
             b'"inference": 2, "total": 4}, "batch_size": 2, "model": "m", "model_version": 1}'
    (answer,) = image_answers(decode_answer(result), 200, {}, 1)
    assert isinstance(answer, Answered) and answer.predictions[0].class_id == 3 and answer.batch_size == 2
    multi = b'{"results": [{"filename": "0", "error": {"code": "invalid_image", "message": "bad"}}, ' \
            b'{"filename": "1", "error": {"code": "queue_full", "message": "full"}}]}'
    answers = image_answers(decode_answer(multi), 503, {"Retry-After": "1"}, 2)
    assert answers == [ErrorInfo(400, "invalid_image", "bad"), ErrorInfo(503, "queue_full", "full")]
    with pytest.raises(AnswerError):
        image_answers(decode_answer(multi), 200, {}, 3)
    with pytest.raises(AnswerError):
        decode_answer(b"<html>bad gateway</html>")
    with pytest.raises(ListingError):
        decode_models(b'{"models": [{"name": "m"}]}')


def test_a_multipart_body_carries_each_image_and_its_declared_type() -> None:
    body, content_type = multipart_body([ImageInput(b"\xff\xd8one", "a.jpg", "image/jpeg"),
                                         ImageInput(b"two", None, None)])
    boundary = content_type.split("boundary=")[1]
    parts = body.split(b"--" + boundary.encode())
    assert len(parts) == 4 and parts[-1] == b"--\r\n"
    assert b'filename="0"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8one\r\n' in parts[1]
    assert b'filename="1"\r\n\r\ntwo\r\n' in parts[2]


@pytest.mark.parametrize(("settings", "message"), [
    ({"backend": "remote"}, "--backend remote needs the servers to forward to"),
    ({"upstream": ("http://a:1",)}, "--upstream is for --backend remote"),
    ({"backend": "remote", "upstream": ("ftp://a",)}, "must be an http:// or https:// URL"),
    ({"backend": "remote", "upstream": ("http://a:1", "http://a:1/")}, "listed twice"),
    ({"backend": "remote", "upstream": ("http://a:1",), "simulate_model": "1+1"}, "--simulate-model serves"),
    ({"backend": "remote", "upstream": ("http://a:1",), "upstream_retries": 9}, "upstream_retries"),
])
def test_remote_settings_are_checked(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config(settings)


def test_upstream_urls_are_normalised() -> None:
    config = BackendConfig(backend="remote", upstream=("http://10.0.0.5:8000/", " https://b.example/api "))
    assert config.upstream == ("http://10.0.0.5:8000", "https://b.example/api")
