"""Queue mode's settings: names derived from one name, bounds, flags and their environment twins."""

from __future__ import annotations

from typing import Any

import pytest

from batchserve.cli import build_parser
from batchserve.jobs.config import QueueConfig, ResourceNames, WorkerSettings
from batchserve.jobs.options import worker_settings


def test_every_resource_name_derives_from_the_deployment_name() -> None:
    names = QueueConfig(queue_name="shop").names
    assert names.buckets == ("shop-input", "shop-output")
    assert names.queues == ("shop-requests", "shop-requests-dlq", "shop-responses")
    assert names.reply_prefix == "shop-reply-"
    assert ResourceNames.of("shop", "my-in", "my-out").buckets == ("my-in", "my-out")


@pytest.mark.parametrize("changes", [
    {"queue_name": "Shop"}, {"queue_name": "a" * 39}, {"queue_name": "-x"}, {"input_bucket": "UPPER"},
    {"receive_max_messages": 11}, {"receive_max_messages": 0}, {"wait_time_s": 21}, {"pollers": 0},
    {"retention_s": 59}, {"visibility_timeout_s": 0},
])
def test_values_sqs_or_s3_would_refuse_are_refused_up_front(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        QueueConfig(**changes)


def test_a_missing_name_is_reported_with_the_flag_to_pass() -> None:
    with pytest.raises(ValueError, match="--queue-name"):
        QueueConfig().names  # noqa: B018 - the property raises


def test_the_endpoint_flag_beats_aws_endpoint_url_which_beats_aws_itself() -> None:
    assert QueueConfig(aws_endpoint_url="http://a:1").endpoint_url({"AWS_ENDPOINT_URL": "http://b:2"}) == "http://a:1"
    assert QueueConfig().endpoint_url({"AWS_ENDPOINT_URL": "http://b:2"}) == "http://b:2"
    assert QueueConfig().endpoint_url({}) is None
    assert QueueConfig().region({"AWS_DEFAULT_REGION": "eu-west-1"}) == "eu-west-1"
    assert QueueConfig(aws_region="ap-south-1").region({"AWS_REGION": "eu-west-1"}) == "ap-south-1"


def _worker_settings(argv: list[str], environ: dict[str, str]) -> WorkerSettings:
    return worker_settings(build_parser().parse_args(["worker", *argv]), environ)


def test_worker_flags_beat_environment_which_beats_defaults() -> None:
    settings = _worker_settings(
        ["--queue-name", "shop", "--pollers", "2", "--models", "tiny", "--max-batch-size", "8", "--no-events"],
        {"BATCHSERVE_QUEUE_NAME": "other", "BATCHSERVE_POLLERS": "6", "BATCHSERVE_VISIBILITY_TIMEOUT_S": "45",
         "BATCHSERVE_MAX_HELD": "12", "BATCHSERVE_EVENTS_PII": "off"})
    queue, worker, serving, events = settings.queue, settings.worker, settings.serving, settings.events
    assert (queue.queue_name, queue.pollers, queue.visibility_timeout_s) == ("shop", 2, 45)
    assert worker.max_held == 12
    assert serving.models == ("tiny",)
    assert serving.knobs.values == {"max_batch_size": 8}
    assert (events.enabled, events.pii) == (False, "off")


def test_a_bad_environment_value_names_its_variable() -> None:
    with pytest.raises(ValueError, match="BATCHSERVE_POLLERS"):
        _worker_settings(["--queue-name", "shop"], {"BATCHSERVE_POLLERS": "many"})
    with pytest.raises(ValueError, match="receive_max_messages"):
        _worker_settings(["--queue-name", "shop", "--receive-max-messages", "20"], {})


@pytest.mark.parametrize("size", [-1, 160 * 1024 + 1])
def test_an_inline_image_bound_sqs_could_not_carry_is_refused(size: int) -> None:
    from batchserve.server.config import BackendConfig

    with pytest.raises(ValueError, match="queue_inline_max_bytes"):
        BackendConfig(queue_inline_max_bytes=size)
    assert BackendConfig(queue_inline_max_bytes=0).queue_inline_max_bytes == 0
