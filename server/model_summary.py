"""What /v1/models and the pages say about one loaded model version."""

from __future__ import annotations

from typing import Any

from batchserve.server.remote.catalog import ForwardedModel
from batchserve.serving.registry import LoadedModel


def model_summary(model: LoadedModel) -> dict[str, Any]:
    """What /v1/models says about one loaded version. A version a remote web tier forwards shows its
    upstreams' stats (summed) and adds `upstreams`: the URLs that serve it."""
    stats = model.batcher.stats
    summary = {
        "name": model.name,
        "version": model.version,
        "description": model.description,
        "state": "ready",
        "execution_providers": model.providers,
        "input": {"name": model.input_name, "shape": [-1, *model.input_shape], "datatype": "FP32"},
        "output": {"name": model.output_name, "shape": [-1, model.classes], "datatype": "FP32"},
        "classes": model.classes,
        "batching": {
            "max_batch_size": model.batching.max_batch_size,
            "max_queue_delay_ms": model.batching.max_queue_delay_ms,
            "preferred_batch_sizes": list(model.batching.preferred_batch_sizes),
            "max_queue_size": model.batching.max_queue_size,
            "max_inflight_batches": model.batching.max_inflight_batches,
            "default_timeout_ms": model.limits.default_timeout_ms,
            "max_timeout_ms": model.limits.max_timeout_ms,
            "latency_slo_ms": model.batching.latency_slo_ms,
            # Learned from the batches run (None until their sizes varied); latency_slo_ms holds batches by them.
            "batch_cost_fixed_ms": stats.cost_fixed_ms,
            "batch_cost_per_image_ms": stats.cost_per_sample_ms,
        },
        "stats": {
            "queue_depth": stats.queue_depth,
            "inflight_batches": stats.inflight_batches,
            "requests_total": stats.requests_total,
            "batches_total": stats.batches_total,
            "mean_batch_size": stats.mean_batch_size,
            "rejected_total": stats.rejected_total,
            "expired_total": stats.expired_total,
            "batch_size_histogram": {str(k): v for k, v in sorted(stats.batch_size_histogram.items())},
        },
        "loaded_at": model.loaded_at,
    }
    if isinstance(model, ForwardedModel):
        summary.update(model.forwarded_summary())
    return summary
