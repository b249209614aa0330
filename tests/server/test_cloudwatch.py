"""CloudWatch embedded metric lines: the exact EMF document shape the scaling policy relies on."""

from __future__ import annotations

import json

from batchserve.server.cloudwatch import QueueDepthReporter, emf_documents


def check_emf(document: dict) -> None:
    """What CloudWatch requires of an EMF document (see the EMF specification)."""
    meta = document["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_600_000_000_000
    for directive in meta["CloudWatchMetrics"]:
        assert directive["Namespace"] == "Batchserve"
        for dimension_set in directive["Dimensions"]:
            assert all(isinstance(document[key], str) and document[key] for key in dimension_set)
        for metric in directive["Metrics"]:
            assert isinstance(document[metric["Name"]], int | float)


def test_one_instance_total_for_scaling_then_one_document_per_model() -> None:
    documents = emf_documents([("b", 3), ("a", 4), ("b", 2)], "prod-asg", 1_700_000_000_000)
    for document in documents:
        check_emf(document)
    total, first, second = documents
    assert total["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["AutoScalingGroupName"]]
    assert total["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "QueueDepth", "Unit": "Count"}]
    assert total["AutoScalingGroupName"] == "prod-asg" and total["QueueDepth"] == 9 and "Model" not in total
    assert [(d["Model"], d["QueueDepth"]) for d in (first, second)] == [("a", 4), ("b", 5)]  # versions summed
    assert first["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["AutoScalingGroupName", "Model"]]


def test_idle_server_still_reports_zero() -> None:
    (total,) = emf_documents([], "g", 1_700_000_000_000)
    assert total["QueueDepth"] == 0


async def test_reporter_writes_single_line_json_for_the_loaded_models(make_client) -> None:
    lines: list[str] = []
    async with make_client(cloudwatch_emf=True, asg_name="batchserve-asg") as client:
        QueueDepthReporter(client.app_state, emit=lines.append).report_once()
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    total, tiny = (json.loads(line) for line in lines)
    check_emf(total)
    check_emf(tiny)
    assert (tiny["Model"], tiny["QueueDepth"], tiny["AutoScalingGroupName"]) == ("tiny", 0, "batchserve-asg")
